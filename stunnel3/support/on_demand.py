"""Modules loaded on first use: what a session never touches is never imported.

`defer(name)` puts a stand-in for module `name` into sys.modules, unless that
module is loaded already. `import name` and `from package import name` then
bind the stand-in and cost nothing; the first attribute read from it imports
the real module and copies its contents into the stand-in, so that whoever
holds the stand-in holds the module from then on.

Why: pyOpenSSL imports cryptography.x509 at its top (`python3 -X importtime`,
pyOpenSSL 26 and cryptography 50 from pip: ~40 ms of CPU on a small machine,
a quarter of what the direct path imports on every connection), yet only a
session that looks into a certificate uses it (see stunnel.defer_unused).

pyOpenSSL 24 and later on Python before 3.13 import typing_extensions for one
decorator, `deprecated`, on their deprecated API (which we never call); with the
inspect, ast and dis it pulls in, that is 37 million instructions of every
connection's start (callgrind). `provide` gives that one name at no cost: the
stand-in holds it, and any other name imports the real module.

The jail holds no Python: a stand-in first used inside it fails there. So a
module is deferred only when the options can never reach it; daemon mode loads
everything before it forks. The warm helper defers what the README's chain never
uses, and a worker whose options will use it loads it before its jail (`load`).
"""

import sys
from types import ModuleType

# What only a session that looks into a certificate uses: pyOpenSSL imports the
# first at its top, tls.py the second (-v 3 compares certificates).
CERTIFICATE_MODULES = ("cryptography.x509", "cryptography.hazmat.primitives.serialization")


class _StandIn(ModuleType):
    """Module `__name__` until its first use (see the top of this file)."""

    def __getattr__(self, attribute: str):
        if attribute == "__path__" and vars(self).get("_plain_module"):
            raise AttributeError(attribute)  # `from name import x` asks: no package (provide)
        import importlib

        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)  # and sets the package's attribute to it
        vars(self).update(vars(real))
        return getattr(real, attribute)


def defer(name: str) -> None:
    """Import `name` only when first used (a module loaded already stays as it is). Its
    package is imported now: it is what `from package import name` reads it from."""
    if name in sys.modules:
        return
    import importlib

    package, _, child = name.rpartition(".")
    stand_in = sys.modules[name] = _StandIn(name)
    if package:
        setattr(importlib.import_module(package), child, stand_in)


def provide(name: str, **attributes) -> None:
    """defer(name), with `attributes` ready on the stand-in: reading one of them, or
    `from name import` one, costs nothing; any other attribute imports the real module
    (whose own then replace them). For a module, not a package: `from` asks the stand-in
    for a package's __path__, and it answers that it has none."""
    if name in sys.modules:
        return
    defer(name)
    vars(sys.modules[name]).update(attributes, _plain_module=True)


def deferred(name: str) -> bool:
    """Whether `name` is a stand-in not yet used."""
    return isinstance(sys.modules.get(name), _StandIn)


def load(name: str) -> None:
    """Import a deferred `name` now (before a jail: the warm helper's stand-ins, for a
    session whose options will use them)."""
    module = sys.modules.get(name)
    if isinstance(module, _StandIn):
        getattr(module, "__file__", None)  # any attribute of its own imports the module


def uses_certificates(options) -> bool:
    """Whether a session of these options may look into a certificate: -v (verification),
    -l (peer names to pass on), -c (the server's certificate arrives, unasked, in every
    handshake), -d (the daemon warms up inside its jail)."""
    return bool(options.verify_level or options.client or options.local_program or (
        options.daemon))  # fmt: skip

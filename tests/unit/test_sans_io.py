"""The protocol layers are sans-I/O (STYLE item 1): they import no I/O at all.

The sans-I/O modules are stunnel3/smtp.py and every module of stunnel3/layers/ (a new
one is held to it as soon as it is there); of ours they import only each other and
support/record.py, which is held to the same rule. Two checks: what each one's
source imports, and what importing all of them loads into a fresh interpreter (`-I
-S`: no site, no user path).
"""

import ast
import subprocess
import sys
from pathlib import Path

import stunnel3

PACKAGE = Path(stunnel3.__file__).parent
LAYERS = "stunnel3.layers"
# What the layers may use besides each other: records, made without dataclasses.
SHARED = {"stunnel3.support.record"}
IO = {"socket", "ssl", "OpenSSL", "os", "select", "subprocess"}


def sans_io_modules() -> dict[str, Path]:
    """Module name -> file, for every module held to the rule."""
    found = {"stunnel3.smtp": PACKAGE / "smtp.py"}
    found |= {f"{LAYERS}.{path.stem}": path for path in (PACKAGE / "layers").glob("*.py")}
    found[LAYERS] = found.pop(f"{LAYERS}.__init__")
    for name in SHARED:
        found[name] = PACKAGE.joinpath(*name.split(".")[1:]).with_suffix(".py")
    return found


def is_ours(name: str) -> bool:
    """Whether name is a module or package of ours (a file or directory of stunnel3/)."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(name: str, source: str) -> set[str]:
    """What module `name`, of source `source`, imports: others' modules by their top-level
    name, ours in full (`from stunnel3.layers import lines` is stunnel3.layers.lines;
    a relative import is read from name's package)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            package = name.split(".")[: -node.level] if node.level else []
            module = ".".join(package + ([node.module] if node.module else []))
            if module.split(".")[0] != "stunnel3":
                found.add(module)
                continue
            for alias in node.names:
                inner = f"{module}.{alias.name}"
                found.add(inner if is_ours(inner) else module)
    return {module if module.startswith("stunnel3") else module.split(".")[0] for module in found}


def breaches(name: str, source: str) -> set[str]:
    """What module `name` (of source `source`) imports that a sans-I/O module may not."""
    imported = imports_of(name, source)
    ours = {module for module in imported if module.split(".")[0] == "stunnel3"}
    allowed = set(sans_io_modules()) if name not in SHARED else set()
    return (imported & IO) | (ours - allowed)


def test_every_layer_is_held_to_the_rule():
    names = set(sans_io_modules())
    assert {"stunnel3.smtp", "stunnel3.layers.line_proxy", "stunnel3.layers.imap"} <= names
    assert {"stunnel3.layers.pop3", "stunnel3.layers.protocol", "stunnel3.support.record"} <= names
    assert all(path.exists() for path in sans_io_modules().values())


def test_the_check_finds_io_and_modules_beyond_the_layers():
    layer = "stunnel3.layers.imap"
    assert breaches(layer, "import socket\nfrom os import path\n") == {"socket", "os"}
    assert breaches(layer, "def f():\n    import select\n") == {"select"}  # lazily too
    assert breaches(layer, "from OpenSSL import SSL\nimport ssl, subprocess\n") == {
        "OpenSSL",
        "ssl",
        "subprocess",
    }
    assert breaches(layer, "from stunnel3 import relay\n") == {"stunnel3.relay"}
    assert breaches(layer, "from stunnel3.engine import bounds\n") == {"stunnel3.engine.bounds"}
    assert breaches(layer, "from stunnel3.tls import TlsSession\n") == {"stunnel3.tls"}
    assert breaches(layer, "from .. import relay\n") == {"stunnel3.relay"}
    assert breaches(layer, "from . import lines\n") == set()
    ok = "import enum\nfrom stunnel3.layers import lines\nfrom stunnel3.support import record\n"
    assert breaches(layer, ok) == set()
    assert breaches("stunnel3.support.record", "from stunnel3.layers import lines\n") == {
        "stunnel3.layers.lines"
    }


def test_the_layers_import_no_io_and_only_sans_io_modules_of_ours():
    for name, path in sorted(sans_io_modules().items()):
        assert breaches(name, path.read_text()) == set(), name


def test_importing_the_layers_loads_no_io():
    modules = ", ".join(sorted(sans_io_modules()))
    probe = (
        f"import sys; sys.path.insert(0, {str(PACKAGE.parent)!r}); import {modules}; "
        f"print(' '.join(sorted(set(sys.modules) & set({sorted(IO - {'os'})!r}))))"
    )
    # os itself comes with contextlib, which typing and re import: the source check
    # above is what holds the layers to it.
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""

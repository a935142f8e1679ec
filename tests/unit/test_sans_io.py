"""The protocol layers are sans-I/O (STYLE item 1): they import no I/O at all.

Two checks: what each layer module's source imports, and what importing all of
them loads into a fresh interpreter (`-I -S`: no site, no user path).
"""

import ast
import subprocess
import sys
from pathlib import Path

import stunnel3

PACKAGE = Path(stunnel3.__file__).parent
# The layers and every module of ours they use; a new one must be sans-I/O too.
SANS_IO = {
    "protocol",
    "layer",
    "lines",
    "runs",
    "smtp",
    "smtp_command",
    "smtp_data",
    "smtp_reply",
    "smtp_text",
    "imap",
    "pop3",
    "client_negotiation",
    "policy",
    "record",
}
IO = {"socket", "ssl", "OpenSSL", "os", "select", "subprocess"}


def imports_of(name: str) -> set[str]:
    """The top-level names of what module stunnel3.<name> imports, ours as stunnel3.x."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "stunnel3":
                found |= {f"stunnel3.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
    return {name if name.startswith("stunnel3.") else name.split(".")[0] for name in found}


def test_the_layers_import_no_io_and_only_sans_io_modules_of_ours():
    for name in sorted(SANS_IO):
        imported = imports_of(name)
        assert imported & IO == set(), (name, imported & IO)
        ours = {module.removeprefix("stunnel3.") for module in imported if "stunnel3" in module}
        assert ours <= SANS_IO, (name, ours - SANS_IO)


def test_importing_the_layers_loads_no_io():
    modules = ", ".join(f"stunnel3.{name}" for name in sorted(SANS_IO))
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

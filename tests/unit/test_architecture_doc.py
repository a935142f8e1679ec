"""docs/architecture.md stays true to stunnel3/: every module is on its map, in one
group, and every module or test file it names exists.

Modules are named by their path inside stunnel3/ (`engine/service.py`); a sub-package's
__init__.py is a module of the map only when it holds more than its docstring (warm/'s:
the program stunnel3-warm)."""

import ast
import re
from pathlib import Path

import stunnel3

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(stunnel3.__file__).parent
TEXT = (ROOT / "docs" / "architecture.md").read_text()
MAP = TEXT.partition("## The module map")[2].partition("\n## ")[0]


def only_a_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return len(body) <= 1 and all(isinstance(node, ast.Expr) for node in body)


def modules() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py" and path.parent != PACKAGE and only_a_docstring(path):
            continue
        found.add(name)
    return found


def named_on_the_page() -> set[str]:
    """The modules the page names in backquotes, by their path inside stunnel3/."""
    named = set(re.findall(r"`((?:\w+/)*\w+\.py)`", TEXT))
    return {name.removeprefix("stunnel3/") for name in named if not name.startswith("tests/")}


def test_the_page_is_read_as_the_package_is_laid_out():
    assert {"smtp.py", "engine/service.py", "layers/imap.py", "warm/__init__.py"} <= modules()
    assert "engine/__init__.py" not in modules()  # its docstring only
    assert {"layers/line_proxy.py", "warm/helper.py", "setup/pem.py"} <= named_on_the_page()


def test_every_module_is_in_one_group_of_the_map():
    rows = re.findall(r"^\| `([\w./]+\.py)` \|", MAP, re.MULTILINE)
    groups = re.split(r"^### ", MAP, flags=re.MULTILINE)[1:]
    assert sorted(rows) == sorted(set(rows)), "a module has two rows"
    assert set(rows) == modules()
    for module in rows:
        named_in = [g.split("\n")[0] for g in groups if f"| `{module}` |" in g]
        assert len(named_in) == 1, (module, named_in)
        # a sub-package's modules are in its own group
        if "/" in module:
            assert named_in[0].startswith(module.split("/")[0] + "/"), (module, named_in)


def test_every_module_the_page_names_exists():
    assert {name for name in named_on_the_page() if not (PACKAGE / name).is_file()} == set()


def test_every_test_file_and_directory_the_page_names_exists():
    paths = set(re.findall(r"\b((?:tests|bench|docs|compat|bin)/[\w./-]*)", TEXT))
    assert paths, "the page names its tests"
    missing = {path for path in paths if not (ROOT / path.rstrip(".")).exists()}
    assert missing == set()

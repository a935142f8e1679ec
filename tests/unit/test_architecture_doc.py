"""docs/architecture.md stays true to stunnel3/: every module is on its map, in one
group, and every module or test file it names exists."""

import re
from pathlib import Path

import stunnel3

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(stunnel3.__file__).parent
MODULES = {path.name for path in PACKAGE.glob("*.py")}
TEXT = (ROOT / "docs" / "architecture.md").read_text()
MAP = TEXT.partition("## The module map")[2].partition("\n## ")[0]


def test_every_module_is_in_one_group_of_the_map():
    rows = re.findall(r"^\| `([\w.]+\.py)` \|", MAP, re.MULTILINE)
    groups = re.split(r"^### ", MAP, flags=re.MULTILINE)[1:]
    assert set(rows) == MODULES
    for module in MODULES:
        named_in = [g.split("\n")[0] for g in groups if f"| `{module}` |" in g]
        # a program's module may open its group too: the warm helper's, administration's
        twice = {"warm.py", "setup_service.py"}
        assert len(named_in) == (2 if module in twice else 1), (module, named_in)


def test_every_module_the_page_names_exists():
    named = set(re.findall(r"`(\w+\.py)`", TEXT))
    assert named - MODULES == set()


def test_every_test_file_and_directory_the_page_names_exists():
    paths = set(re.findall(r"\b((?:tests|bench|docs|compat|bin)/[\w./-]*)", TEXT))
    assert paths, "the page names its tests"
    missing = {path for path in paths if not (ROOT / path.rstrip(".")).exists()}
    assert missing == set()

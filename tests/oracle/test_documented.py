"""Every difference from 3.22 that the comparisons allow is documented: a row of
docs/migration.md's table and an entry of stunnel(8)'s DIFFERENCES FROM 3.22."""

import os
import re
import subprocess
from pathlib import Path

from oracle.compare import DIFFERENCES, OPTIONAL

ROOT = Path(__file__).resolve().parents[2]


def migration_rows(heading: str) -> list[str]:
    """The first column of the tables under `heading` (to the next ## heading)."""
    text = (ROOT / "docs" / "migration.md").read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
    return [row for row in rows if row != "what"]  # the header rows aside


DELIBERATE = "## What is deliberately different, and why"
FROM_322 = "### Where we part from the original 3.22, and why"


def man_section() -> str:
    env = dict(os.environ, MANWIDTH="200", LANG="C.UTF-8")
    page = subprocess.run(
        ["man", "-l", str(ROOT / "man" / "stunnel.8")],
        capture_output=True, text=True, env=env, timeout=60,
    ).stdout  # fmt: skip
    section = page.split("\nDIFFERENCES FROM 3.22\n", 1)[1].split("\nSEE ALSO\n", 1)[0]
    return re.sub(r"\s+", " ", section)


def test_each_allowed_difference_is_a_row_of_the_migration_table():
    rows = migration_rows(DELIBERATE)
    assert [d.row for d in DIFFERENCES.values() if d.row not in rows] == []
    assert set(OPTIONAL) <= set(DIFFERENCES)


def test_each_row_of_the_table_is_flagged_in_stunnel_8():
    section = man_section()
    rows = migration_rows(FROM_322)
    assert len(rows) >= 15
    assert [row for row in rows if row not in section] == []

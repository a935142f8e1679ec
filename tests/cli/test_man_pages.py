"""The man pages render with `man -l` without a groff warning, and say what the code does.

`--warnings=w` turns on every groff warning (a misspelt macro, an unclosed
font, a line that cannot be broken); `MANWIDTH=80` is a terminal's width.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

from stunnel3.options import OPTSTRING

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["stunnel.8", "makesock.1", "fixcrio.1", "stunnel3-setup.8", "stunnel3-warm.8",
         "stunnel3-python.1"]  # fmt: skip


def render(page: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="", LANG="C.UTF-8")
    env.pop("MANPAGER", None)
    return subprocess.run(
        ["man", "--warnings=w", "-l", str(ROOT / "man" / page)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("page", PAGES)
def test_renders_without_warnings(page):
    done = render(page)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # groff says `troff: <standard input>:N: warning: ...`
    name = page.split(".")[0]
    assert re.match(rf"{name.upper()}\({page[-1]}\)", done.stdout)
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "SEE ALSO"):
        assert f"\n{section}\n" in done.stdout, section
    too_wide = [line for line in done.stdout.splitlines() if len(line) > 80]
    assert too_wide == []


def test_stunnel_page_documents_every_option():
    text = render("stunnel.8").stdout
    options = text.split("\nOPTIONS\n", 1)[1].split("\nPROTOCOLS\n", 1)[0]
    letters = [c for c in OPTSTRING if c != ":"]
    missing = [
        c for c in letters if not re.search(rf"^       -{re.escape(c)}(?=\s)", options, re.M)
    ]
    assert missing == []


def accepted_options(page: str) -> set[str]:
    """Every option the page's program accepts, as its own usage text lists them."""
    from stunnel3 import makesock
    from stunnel3.setup import service as setup_service
    from stunnel3.warm import helper as warm

    usage = {"makesock.1": makesock.HELP, "stunnel3-setup.8": setup_service.__doc__ or ""}
    usage["stunnel3-warm.8"] = warm.HELP
    try:
        from docopt import parse_options
    except ImportError:  # Debian's docopt 0.6: an indented block under `options:`
        from docopt import parse_defaults

        block = re.search(r"^ +-.*(?:\n[ \t]+\S.*)*", usage[page], re.M)
        assert block is not None
        found = parse_defaults("options:\n" + block.group(0))
        return {name for option in found for name in (option.short, option.long) if name}
    found = parse_options(usage[page])
    return {name for option in found for name in (option.short, option.longer) if name}


def tagged_options(page: str) -> set[str]:
    """The options the page's OPTIONS section gives a paragraph of its own (.TP tags)."""
    text = render(page).stdout.split("\nOPTIONS\n", 1)[1]
    text = re.split(r"\n[A-Z][A-Z ]+\n", text, maxsplit=1)[0]
    tags = re.findall(r"^ {7}(-\S.*)$", text, re.M)
    return {name for tag in tags for name in re.findall(r"(?<![\w-])(--?[\w/][\w-]*)", tag)}


@pytest.mark.parametrize("page", ["makesock.1", "stunnel3-setup.8", "stunnel3-warm.8"])
def test_each_page_documents_every_option_of_its_program(page):
    accepted = accepted_options(page)
    assert "-h" in accepted and len(accepted) >= 3
    assert sorted(accepted - tagged_options(page)) == []


def test_fixcrio_takes_no_option_and_its_page_lists_none():
    assert "\nOPTIONS\n" not in render("fixcrio.1").stdout


def test_stunnel_pages_synopsis_has_every_option():
    """Each letter of the option string is in SYNOPSIS, as in -h's (issue #16: -W was not)."""
    text = render("stunnel.8").stdout
    synopsis = text.split("\nSYNOPSIS\n", 1)[1].split("\nDESCRIPTION\n", 1)[0]
    letters = [c for c in OPTSTRING if c != ":"]
    missing = [
        c for c in letters if not re.search(rf"[\[{{|] ?-{re.escape(c)}(?![A-Za-z])", synopsis)
    ]
    assert missing == []


def test_stunnel_page_documents_every_environment_variable():
    """Each STUNNEL3_ name the programs read (code and sh fronts) is in ENVIRONMENT."""
    sources = list((ROOT / "stunnel3").rglob("*.py")) + [ROOT / "bin" / "stunnel"]
    names = set()
    for source in sources:
        if source != ROOT / "stunnel3" / "setup" / "service.py":
            names |= set(re.findall(r"STUNNEL3_[A-Z_]+", source.read_text()))
    assert "STUNNEL3_MEMORY_FLOOR" in names
    environment = render("stunnel.8").stdout.split("\nENVIRONMENT\n", 1)[1]
    environment = environment.split("\nLOGGING\n", 1)[0]
    assert sorted(n for n in names if n not in environment) == []


def test_stunnel_page_lists_every_protocol():
    from stunnel3.options import PROTOCOLS

    text = render("stunnel.8").stdout.split("\nPROTOCOLS\n", 1)[1].split("\nTIMEOUTS\n", 1)[0]
    tags = re.findall(r"^       ([a-z0-9-]+(?:, [a-z0-9-]+)*)(?:$| {2,})", text, re.M)
    listed = {name for tag in tags for name in tag.split(", ")}
    assert set(PROTOCOLS) <= listed

"""--help of the two administrator's programs: stunnel3-setup and stunnel3-warm, as installed.

Both print their options on standard output and exit 0 with -h or --help; any
other unknown option is a one-line usage error, exit 100 (djb's status).
"""

import re
import subprocess

import pytest
from conftest import installed

from stunnel3.setup import service as setup_service
from stunnel3.warm import helper as warm


def run(program: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [installed(program), *args], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_warm_help_is_its_usage_and_options(flag):
    done = run("stunnel3-warm", flag)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == warm.HELP
    assert f"usage: {warm.USAGE}\n" in done.stdout
    for option in ("-d directory", "-c limit", "-h, --help"):
        assert f"\n  {option}  " in done.stdout
    assert all(len(line) <= 80 for line in done.stdout.splitlines())


@pytest.mark.parametrize("args", [["-x"], ["--dir"], ["-c", "0"], ["-d"], ["-s", "x.sock"]])
def test_warm_usage_errors_are_one_line_and_100(args):
    done = run("stunnel3-warm", *args)
    assert (done.returncode, done.stdout) == (100, "")
    assert done.stderr == f"stunnel3-warm: usage: {warm.USAGE}\n"


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_setup_help_lists_every_option(flag):
    done = run("stunnel3-setup", flag)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("Usage:\n  stunnel3-setup [options] SERVICE_DIR\n")
    options = (setup_service.__doc__ or "").split("\nOptions:\n", 1)[1]
    assert options.strip() in done.stdout
    assert all(len(line) <= 80 for line in done.stdout.splitlines())
    # each option's paragraph says what happens without it
    paragraphs = re.split(r"\n(?=  -)", options.strip())
    assert len(paragraphs) == 14
    assert [p.split()[0] for p in paragraphs if "(default: " not in p] == ["-h,"]


def test_setup_usage_error_is_one_line_and_100():
    done = run("stunnel3-setup", "--bogus", "/nonexistent")
    assert (done.returncode, done.stdout) == (100, "")
    assert done.stderr == setup_service.USAGE + "\n"

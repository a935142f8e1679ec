"""`pip install .` puts the man pages where man-db looks for the programs it installs.

man-db adds `<dir>/../share/man` to its path for every `<dir>` on PATH that its
configuration does not map (a virtual environment's bin, /opt/…/bin): so with
the install's bin first on PATH, `man stunnel` is ours, not stunnel4's, and
`man fixcrio` ours, not ucspi-tcp's. The install here is a real one, of a copy
of the source into a fresh prefix, by the suite's own pip, with no network.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "stunnel3", "bin", "man")
PAGES = {
    "stunnel": "man8/stunnel.8",
    "makesock": "man1/makesock.1",
    "fixcrio": "man1/fixcrio.1",
    "stunnel3-setup": "man8/stunnel3-setup.8",
    "stunnel3-warm": "man8/stunnel3-warm.8",
}


@pytest.fixture(scope="module")
def prefix(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("pip-install")
    source = base / "source"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    # --ignore-installed: without it pip would first uninstall the suite's own stunnel3
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    command += ["--no-build-isolation", "--ignore-installed"]
    command += ["--prefix", str(base / "prefix"), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return base / "prefix"


def man(prefix: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MANPATH", "MANPAGER", "PAGER")}
    env.update(PATH=f"{prefix}/bin:/usr/bin:/bin", MANWIDTH="80", LANG="C.UTF-8")
    return subprocess.run(["man", *args], capture_output=True, text=True, env=env, timeout=60)


def test_the_suites_own_install_is_left_alone(prefix):
    done = subprocess.run([sys.executable, "-m", "pip", "show", "stunnel3"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and f"Location: {prefix}" not in done.stdout
    assert (Path(sys.executable).parent / "stunnel").is_file()


def test_every_program_and_page_is_installed(prefix):
    for program, page in PAGES.items():
        assert (prefix / "bin" / program).is_file()
        installed = prefix / "share" / "man" / page
        assert installed.read_bytes() == (ROOT / "man" / Path(page).name).read_bytes()


@pytest.mark.parametrize("program", sorted(PAGES))
def test_man_finds_ours_first_with_the_install_first_on_path(prefix, program):
    done = man(prefix, "-w", program)
    assert (done.returncode, done.stdout) == (0, f"{prefix}/share/man/{PAGES[program]}\n")


def test_man_shows_our_stunnel_page_not_stunnel4s(prefix):
    done = man(prefix, "stunnel")
    assert done.returncode == 0, done.stderr
    assert "a drop-in for stunnel 3.22 with the sg2 patch" in " ".join(done.stdout.split())

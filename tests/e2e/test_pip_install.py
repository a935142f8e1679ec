"""`pip install .` puts the man pages where man-db looks for the programs it installs, and a
wheel runs on the Python it is installed into, whichever Python built it.

man-db adds `<dir>/../share/man` to its path for every `<dir>` on PATH that its
configuration does not map (a virtual environment's bin, /opt/…/bin): so with
the install's bin first on PATH, `man stunnel` is ours, not stunnel4's, and
`man fixcrio` ours, not ucspi-tcp's. The install here is a real one, of a copy
of the source into a fresh prefix, by the suite's own pip, with no network.
"""

import os
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import stunnel3

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "stunnel3", "bin", "man")
PAGES = {
    "stunnel": "man8/stunnel.8",
    "makesock": "man1/makesock.1",
    "fixcrio": "man1/fixcrio.1",
    "stunnel3-setup": "man8/stunnel3-setup.8",
    "stunnel3-warm": "man8/stunnel3-warm.8",
    "stunnel3-python": "man1/stunnel3-python.1",
}


def copy_of_the_source(base: Path) -> Path:
    source = base / "source"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    return source


@pytest.fixture(scope="module")
def prefix(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("pip-install")
    source = copy_of_the_source(base)
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


def run(*argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)


def test_a_wheel_runs_on_the_python_it_is_installed_into(tmp_path):
    """Built by the suite's venv, installed into another (Debian's python3 with its own
    python3-openssl): the programs run the other one. Nothing of the builder is in it."""
    source = copy_of_the_source(tmp_path)
    built = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source))  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("stunnel3-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        scripts = {
            Path(name).name: archive.read(name)
            for name in archive.namelist()
            if "/scripts/" in name
        }
    assert scripts["stunnel3-python"].startswith(b"#!python\n")  # for the installer to fill
    assert not [name for name, text in scripts.items() if sys.prefix.encode() in text]
    other = tmp_path / "other"
    made = run("/usr/bin/python3", "-m", "venv", "--system-site-packages", "--without-pip", other)
    assert made.returncode == 0, made.stderr
    python = other / "bin" / "python3"
    done = run(sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
               "--no-deps", "--no-index", str(wheel))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (other / "bin" / "stunnel3-python").read_text().startswith(f"#!{python}\n")
    said = run(str(other / "bin" / "stunnel3-python"))
    site = run(str(python), "-c", "import OpenSSL, site; print(site.getsitepackages()[0]);"
               " print(OpenSSL.__version__)").stdout.split()  # fmt: skip
    assert (
        said.stdout == f"{python}: Python {platform.python_version()}, stunnel3"
        f" {stunnel3.__version__} in {site[0]}/stunnel3\n"
    )
    import OpenSSL  # the builder's

    assert site[1] != OpenSSL.__version__, "the two would look alike: nothing told apart"
    version = run(str(other / "bin" / "stunnel"), "-V")
    assert version.returncode == 0, version.stderr
    assert f", pyOpenSSL {site[1]}, " in version.stderr.lstrip("\n").splitlines()[0]

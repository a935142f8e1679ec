"""The Debian package: built from this tree, installed with apt-get, run, purged.

`dpkg-buildpackage -us -uc -b` on a copy of the source; `apt-get install
./stunnel3_*.deb`; then what an administrator does: `stunnel3-setup` (from
/usr/sbin) makes a service directory, its run file (the README's run script)
starts the whole chain from /usr/lib/stunnel3/bin on Debian's own python3,
python3-openssl and python3-cryptography, so on the system's libssl, and swaks
delivers a message over STARTTLS, once served directly and once by the
package's warm helper; `apt-get purge` then leaves nothing. The package must not
be installed before: the module installs and purges its own.
"""

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import free_port
from helpers import accounts_lock  # noqa: F401, F811  (a fixture)

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "stunnel3"
PROGRAMS = Path("/usr/lib/stunnel3/bin")
SETUP = "/usr/sbin/stunnel3-setup"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # no pyenv, no venv: Debian's python3 builds
TIMEOUT = 60
NOT_COPIED = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", "build", ".pybuild", ".*_cache", ".hypothesis"
)
BACKEND = """#!/bin/sh
ulimit -S -v "$(ulimit -H -v)"; ulimit -S -d "$(ulimit -H -d)"
exec recordio /usr/sbin/exim4 -bs -N
"""
SYSTEM_LIBSSL = "(the system's, /usr/lib/x86_64-linux-gnu/libssl.so.3)"
LOG_IDS = re.compile(r" LOG\d\[(\d+):(\d+)\]: ")

pytestmark = pytest.mark.usefixtures("accounts_lock")


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", TIMEOUT)
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)


def installed_version(package: str) -> str | None:
    done = run("dpkg-query", "-W", "-f=${Status} ${Version}", package)
    if done.returncode != 0 or not done.stdout.startswith("install ok installed "):
        return None
    return done.stdout.rsplit(" ", 1)[1]


def system_env() -> dict[str, str]:
    keep = ("HOME", "LANG", "TERM", "TMPDIR")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "PATH": SYSTEM_PATH}


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    """The package, built by dpkg-buildpackage from a copy of this tree."""
    assert installed_version(PACKAGE) is None, (
        f"{PACKAGE} is installed on this machine: this test installs and purges its own"
        f" (apt-get purge {PACKAGE})"
    )
    base = tmp_path_factory.mktemp("deb")
    source = base / PACKAGE
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    done = run("dpkg-buildpackage", "-us", "-uc", "-b", cwd=source, env=system_env(), timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (found,) = base.glob(f"{PACKAGE}_*_all.deb")
    return found


@pytest.fixture(scope="module")
def package(deb):
    """Installed with `apt-get install ./...deb`; purged at the end if a test did not."""
    env = {**system_env(), "DEBIAN_FRONTEND": "noninteractive"}
    done = run("apt-get", "install", "-y", f"./{deb.name}", cwd=deb.parent, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    yield deb
    if installed_version(PACKAGE) is not None:
        run("apt-get", "purge", "-y", PACKAGE, env=env, timeout=600)


@pytest.fixture(scope="module", autouse=True)
def remove_made_accounts(accounts_lock):  # noqa: F811  (the imported fixture)
    """stunnel3-setup makes `stunnel` and `qmaild`: remove the ones this module made."""
    users, groups = {u.pw_name for u in pwd.getpwall()}, {g.gr_name for g in grp.getgrall()}
    yield
    for name in sorted({u.pw_name for u in pwd.getpwall()} - users):
        run("userdel", name)
    for name in sorted({g.gr_name for g in grp.getgrall()} - groups):
        run("groupdel", name)


def test_it_depends_on_debians_own_packages(deb):
    depends = run("dpkg-deb", "-f", str(deb), "Depends").stdout
    for needed in ("python3-openssl (>= 23.0)", "python3-cryptography (>= 38)", "python3-docopt",
                   "daemontools", "ucspi-tcp | ucspi-tcp-ipv6"):  # fmt: skip
        assert needed in depends
    assert "pip" not in depends and "docopt-ng" not in depends


def test_lintian_finds_no_error_and_no_warning(deb):
    done = run("lintian", "--fail-on", "error,warning", str(deb), env=system_env(), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_programs_are_in_the_private_directory(package):
    files = set(run("dpkg-query", "-L", PACKAGE).stdout.split())
    for program in ("stunnel", "makesock", "fixcrio", "stunnel3-warm", "stunnel3-python"):
        assert str(PROGRAMS / program) in files
    assert SETUP in files
    # the fronts' Python, as the package's build installed it: Debian's python3
    first = (PROGRAMS / "stunnel3-python").read_text().split("\n", 1)[0]
    assert first == "#!/usr/bin/python3"
    said = run(str(PROGRAMS / "stunnel3-python"), env=system_env()).stdout
    assert said.startswith("/usr/bin/python3: Python 3.")
    assert said.endswith(" in /usr/lib/python3/dist-packages/stunnel3\n")
    assert not [path for path in files if path.startswith("/usr/bin/")]
    # what other packages own stays theirs
    assert run("dpkg-query", "-S", "/usr/bin/stunnel").stdout.startswith("stunnel4: ")
    assert run("dpkg-query", "-S", "/usr/bin/fixcrio").stdout.startswith("ucspi-tcp")


def test_the_man_pages_clash_with_nothing(package):
    def where(*args: str, path: str = SYSTEM_PATH) -> str:
        env = {"PATH": path, "LANG": "C.UTF-8"}
        done = run("man", "-w", *args, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert where("stunnel3-setup") == "/usr/share/man/man8/stunnel3-setup.8.gz"
    assert where("stunnel3-warm") == "/usr/share/man/man8/stunnel3-warm.8.gz"
    assert where("stunnel3-python") == "/usr/share/man/man1/stunnel3-python.1.gz"
    assert where("8stunnel3", "stunnel") == "/usr/share/man/man8/stunnel.8stunnel3.gz"
    assert where("-e", "stunnel3", "fixcrio") == "/usr/share/man/man1/fixcrio.1stunnel3.gz"
    assert where("makesock") == "/usr/share/man/man1/makesock.1stunnel3.gz"
    assert "stunnel4" in where("stunnel")  # stunnel4's own page is untouched
    # with the private directory first on PATH (as in the run file), man shows ours:
    # man-db looks in /usr/lib/stunnel3/share/man, whose links it names by their targets
    ours = f"{PROGRAMS}:{SYSTEM_PATH}"
    assert where("stunnel", path=ours) == "/usr/share/man/man8/stunnel.8stunnel3.gz"
    assert where("fixcrio", path=ours) == "/usr/share/man/man1/fixcrio.1stunnel3.gz"
    assert os.readlink("/usr/lib/stunnel3/share/man/man8/stunnel.8.gz").endswith(
        "/share/man/man8/stunnel.8stunnel3.gz"
    )
    text = run("man", "8stunnel3", "stunnel", env={"PATH": SYSTEM_PATH, "MANWIDTH": "80"})
    assert "drop-in for stunnel 3.22" in " ".join(text.stdout.split())


def test_version_names_debians_libraries_and_the_systems_libssl(package):
    done = run(str(PROGRAMS / "stunnel"), "-V", env=system_env())
    first = done.stderr.lstrip("\n").split("\n", 1)[0]  # 3.22's -V starts with an empty line
    openssl = installed_version("python3-openssl").split("-")[0]
    crypto = installed_version("python3-cryptography").split("-")[0].split("+")[0]
    library = run("openssl", "version").stdout.split("(Library: ", 1)[1].rstrip(")\n")
    assert done.returncode == 0
    assert first.endswith(
        f", pyOpenSSL {openssl}, cryptography {crypto}, {library} {SYSTEM_LIBSSL}"
    ), first
    assert "Python 3." in first and "/usr/lib/python3/dist-packages" not in done.stderr


def message(token: str) -> str:
    return f"Subject: stunnel3 deb {token}\n\nDelivered through the Debian package.\n"


def swaks(port: int, pem: Path, token: str) -> subprocess.CompletedProcess:
    command = ["swaks", "--server", "127.0.0.1", "--port", str(port), "--tls", "--tls-verify"]
    command += ["--tls-ca-path", str(pem), "--from", "deb@example.org"]
    command += ["--to", "postmaster@localhost", "--data", "-"]
    return run(*command, input=message(token))


def session_lines(log: Path, start: int) -> str:
    """The log of the connection that began after `start`, once tcpserver says it ended."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        part = log.read_bytes().decode(errors="replace")[start:]
        if part.count("tcpserver: end ") >= part.count("tcpserver: ok ") > 0:
            return part
        time.sleep(0.05)
    raise AssertionError(f"the connection did not end:\n{log.read_text()[start:]}")


def wait_for(path: Path, text: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + TIMEOUT
    while text not in path.read_text(errors="replace"):
        assert process.poll() is None, path.read_text()
        assert time.monotonic() < deadline, f"{text!r} never came:\n{path.read_text()}"
        time.sleep(0.05)


def start(argv: list[str], cwd: Path, log: Path, env: dict) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )  # fmt: skip


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # each leads its own group
        try:
            process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=TIMEOUT)


def test_setup_and_the_run_script_deliver_over_starttls_direct_and_warm(package):
    base = Path(tempfile.mkdtemp(prefix="stunnel3-deb."))
    processes: list[subprocess.Popen] = []
    try:
        base.chmod(0o755)  # qmaild runs the backend from here
        backend = base / "backend"
        backend.write_text(BACKEND)
        backend.chmod(0o755)
        service, port = base / "smtp-tls", free_port()
        args = ["--ip", "127.0.0.1", "--port", str(port), "--smtpd", str(backend)]
        args += ["--rules", str(base / "none.cdb"), "--hostname", "localhost"]
        args.append(str(service))
        done = run(SETUP, *args, env=system_env())
        assert done.returncode == 0, done.stdout + done.stderr
        warm_service = service / "warm"  # the helper's service, and the fronts' rendezvous
        path = f"PATH={PROGRAMS}:/usr/local/bin:/var/qmail/bin:/usr/bin:/bin\n"
        assert path in (service / "run").read_text()
        assert path in (warm_service / "run").read_text()

        log = base / "smtp.log"
        processes.append(start(["./run"], service, log, system_env()))
        wait_for(log, "tcpserver: status: 0/", processes[0])
        pem = service / "ssl" / "stunnel.pem"

        for warm in (False, True):
            if warm:  # the package's helper, started by the run file stunnel3-setup wrote
                helper_log = base / "warm.log"
                processes.append(start(["./run"], warm_service, helper_log, system_env()))
                wait_for(helper_log, f"info: serving {warm_service} (pid ", processes[-1])
                assert "warm-up failed" not in helper_log.read_text()
            token = uuid.uuid4().hex
            start_at = len(log.read_bytes().decode(errors="replace"))
            client = swaks(port, pem, token)
            lines = session_lines(log, start_at)
            assert client.returncode == 0, client.stdout + client.stderr + lines
            assert re.search(r"^ ~> \.\n<~ +250 ", client.stdout, re.M), client.stdout  # in TLS
            assert f"Subject: stunnel3 deb {token}" in lines  # what the backend got (recordio)
            assert "Negotiated ciphers: " in lines and "Traceback" not in lines
            assert not re.findall(r" LOG[0-4]\[.*", lines)  # no warning per connection (the seed)
            assert SYSTEM_LIBSSL in lines  # STUNNEL_INFO: the system's OpenSSL served it
            ids = {(int(pid), int(tid)) for pid, tid in LOG_IDS.findall(lines)}
            assert ids and all((pid != tid) == warm for pid, tid in ids), (warm, ids)
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(base, ignore_errors=True)


def test_purge_leaves_nothing(package):
    env = {**system_env(), "DEBIAN_FRONTEND": "noninteractive"}
    done = run("apt-get", "purge", "-y", PACKAGE, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert installed_version(PACKAGE) is None
    left = [
        path
        for path in ("/usr/lib/stunnel3", SETUP, "/usr/lib/python3/dist-packages/stunnel3",
                     "/usr/share/doc/stunnel3", "/usr/share/man/man8/stunnel.8stunnel3.gz")
        if os.path.lexists(path)
    ]  # fmt: skip
    assert left == []
    assert run("dpkg-query", "-S", "/usr/bin/stunnel").stdout.startswith("stunnel4: ")

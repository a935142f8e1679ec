"""A whole session inside an empty jail, as an account made for the test (SPEC §2, issue #5).

The real chain: tcpserver (root) -> our makesock -> our stunnel -/ JAIL -s -g -i
-R seed -p stunnel.pem -f -F 3, with `cat` as the plaintext backend. While the
TLS session is open, /proc/<pid> of stunnel shows where it is and who it is.
The jail holds only stunnel.pem and seed, owned root:<group>, u=rwX,g=rX,o=
(README step 6e). Every failure case must end in one clear line, exit 1, and
no byte served.
"""

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from conftest import free_port
from helpers import children

TIMEOUT = 10


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, timeout=TIMEOUT, capture_output=True)


def ids_of(user: str) -> list[int]:
    result = subprocess.run(["pgrep", "-u", user], capture_output=True, timeout=TIMEOUT, text=True)
    return [int(pid) for pid in result.stdout.split()]


def free_id() -> int:
    for number in range(45123, 46000):
        with contextlib.suppress(KeyError):
            pwd.getpwuid(number)
            continue
        with contextlib.suppress(KeyError):
            grp.getgrgid(number)
            continue
        return number
    raise AssertionError("no free id")


@pytest.fixture
def account():
    """A fresh group and account (no home, no shell); removed after, even on failure."""
    name = f"st3j{secrets.token_hex(4)}"
    run("groupadd", name)
    try:
        run(
            "useradd", "-M", "-N", "-g", name, "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
            name,
        )  # fmt: skip
    except BaseException:
        run("groupdel", name)
        raise
    entry = pwd.getpwnam(name)
    try:
        yield name, entry.pw_uid, grp.getgrnam(name).gr_gid
    finally:
        leftover = wait_gone(name)
        for pid in leftover:  # only our sessions can run as this brand-new account
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["userdel", name], timeout=TIMEOUT, capture_output=True)
        subprocess.run(["groupdel", name], timeout=TIMEOUT, capture_output=True)
        assert leftover == [], f"processes left running as {name}: {leftover}"


def wait_gone(user: str, seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (pids := ids_of(user)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def make_jail(base: Path, pki, gid: int) -> Path:
    """README 6: ssl/ with the pem and a seed; 6e: chgrp -R group, chmod -R u=rwX,g=rX,o=."""
    jail = base / "ssl"
    jail.mkdir()
    shutil.copyfile(pki["server"], jail / "stunnel.pem")
    (jail / "seed").write_bytes(os.urandom(256))
    for path in (jail, jail / "stunnel.pem", jail / "seed"):
        os.chown(path, 0, gid)
        path.chmod(0o750 if path.is_dir() else 0o640)
    return jail


@contextlib.contextmanager
def chain(workdir: Path, stunnel_bin, makesock_bin, stunnel_args, backend=("cat",)):
    """tcpserver on a loopback port: makesock stunnel ... -makesock_connect_to BACKEND."""
    port = free_port()
    errors = workdir / "stderr"
    argv = [
        "tcpserver", "-v", "-R", "-H", "-l", "localhost", "-c", "4", "127.0.0.1", str(port),
        makesock_bin, stunnel_bin, *stunnel_args, "-makesock_connect_to", *backend,
    ]  # fmt: skip
    with open(errors, "wb") as stderr:
        server = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(errors, "tcpserver: status: 0/")  # -v says so once it listens
        yield port, server.pid, errors
    finally:
        server.terminate()
        server.wait(timeout=TIMEOUT)


def wait_for(path: Path, text: str) -> str:
    deadline = time.monotonic() + TIMEOUT
    while text not in (said := path.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"no {text!r} in: {said}"
        time.sleep(0.05)
    return said


def client_context(pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    return context


def stunnel_process(tcpserver_pid: int, jail: Path) -> int:
    """The session's stunnel: below tcpserver, with our jail on its command line."""
    pending, seen = [tcpserver_pid], []
    while pending:
        pid = pending.pop()
        for child in children(pid):
            seen.append(child)
            pending.append(child)
    for pid in seen:
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"-/" in argv and str(jail).encode() in argv:
                return pid
    raise AssertionError(f"no stunnel below tcpserver {tcpserver_pid}: {seen}")


def status_fields(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.split() for key, value in (line.split(":", 1) for line in lines)}


def session_through_jail(port, server_pid, jail, pki, serving=None):
    """One TLS session with a byte echo; returns what /proc said while it was open
    about the process serving it: serving() if given (test_warm: the helper's
    worker), else the session's stunnel below tcpserver."""
    with socket.create_connection(("127.0.0.1", port), TIMEOUT) as raw:
        with client_context(pki).wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"through the jail\n")
            echoed = b""
            while not echoed.endswith(b"\n"):
                chunk = tls.recv(100)
                assert chunk, "the session ended before the echo"
                echoed += chunk
            pid = stunnel_process(server_pid, jail) if serving is None else serving()
            seen = os.readlink(f"/proc/{pid}/root"), status_fields(pid)
    return echoed, seen


def args_for(jail: Path, user: str, group: str, *more: str) -> list[str]:
    return [
        "-/", str(jail), "-s", user, "-g", group, "-i", "-R", "seed", "-p", "stunnel.pem",
        "-f", "-F", "3", *more,
    ]  # fmt: skip


def test_a_session_runs_jailed_as_the_account(tmp_path, account, pki, stunnel_bin, makesock_bin):
    user, uid, gid = account
    jail = make_jail(tmp_path, pki, gid)
    seed_before = (jail / "seed").read_bytes()
    args = args_for(jail, user, user)
    with chain(tmp_path, stunnel_bin, makesock_bin, args) as (port, server, errors):
        echoed, (root, status) = session_through_jail(port, server, jail, pki)
        assert wait_gone(user) == []
    assert echoed == b"through the jail\n"
    assert root == str(jail)
    assert status["Uid"] == [str(uid)] * 4
    assert status["Gid"] == [str(gid)] * 4
    assert status["Groups"] == [str(gid)]
    assert sorted(os.listdir(jail)) == ["seed", "stunnel.pem"]
    # README 6e leaves the seed read-only to the group: a warning, and the session went on
    log = errors.read_text()
    assert (
        "Failed to write strong random data to seed - may be a permissions or seeding problem"
        in log
    )
    assert (jail / "seed").read_bytes() == seed_before


def test_numeric_ids_without_an_account(tmp_path, pki, stunnel_bin, makesock_bin):
    number = free_id()
    jail = make_jail(tmp_path, pki, number)
    (jail / "seed").chmod(0o660)  # group-writable: refreshed after reading
    seed_before = (jail / "seed").read_bytes()
    args = args_for(jail, str(number), str(number), "-D", "7")
    with chain(tmp_path, stunnel_bin, makesock_bin, args) as (port, server, errors):
        echoed, (root, status) = session_through_jail(port, server, jail, pki)
        assert wait_gone(str(number)) == []
    assert echoed == b"through the jail\n"
    assert root == str(jail)
    assert status["Uid"] == [str(number)] * 4
    assert status["Gid"] == [str(number)] * 4
    assert status["Groups"] == [str(number)]
    log = errors.read_text()
    assert "Snagged 64 random bytes from seed" in log
    assert "Wrote 1024 new random bytes to seed" in log  # RAND_write_file's size
    assert (jail / "seed").read_bytes() != seed_before


def refused(tmp_path, pki, stunnel_bin, makesock_bin, args) -> str:
    """Run the chain with args; the client must get no TLS at all. Returns the stderr."""
    with chain(tmp_path, stunnel_bin, makesock_bin, args) as (port, _server, errors):
        with socket.create_connection(("127.0.0.1", port), TIMEOUT) as raw:
            with pytest.raises((ssl.SSLError, OSError)):
                with client_context(pki).wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.recv(1)
        wait_for(errors, " status ")  # tcpserver -v: `end <pid> status <wait status>`
    log = errors.read_text()
    assert "status 256" in log  # tcpserver -v: the wait status of exit 1
    assert "connected from" not in log
    return log


def test_unknown_names_are_refused(tmp_path, pki, stunnel_bin, makesock_bin):
    jail = make_jail(tmp_path, pki, 0)
    log = refused(tmp_path, pki, stunnel_bin, makesock_bin, args_for(jail, "no-such-user-x7", "0"))
    assert "Failed to get UID for user no-such-user-x7" in log
    log = refused(tmp_path, pki, stunnel_bin, makesock_bin, args_for(jail, "0", "no-such-grp-x7"))
    assert "Failed to get GID for group no-such-grp-x7" in log


def test_a_pem_outside_the_jail_cannot_be_named(tmp_path, account, pki, stunnel_bin, makesock_bin):
    user, _uid, gid = account
    jail = make_jail(tmp_path, pki, gid)
    outside = tmp_path / "x.pem"
    shutil.copyfile(pki["server"], outside)
    outside.chmod(0o644)  # readable by anyone: only the chroot keeps it out of reach
    args = args_for(jail, user, user)
    args[args.index("stunnel.pem")] = "../x.pem"
    log = refused(tmp_path, pki, stunnel_bin, makesock_bin, args)
    assert "../x.pem: No such file or directory (2)" in log
    assert wait_gone(user) == []


def test_an_unreadable_pem_is_one_clear_error(tmp_path, account, pki, stunnel_bin, makesock_bin):
    user, _uid, gid = account
    jail = make_jail(tmp_path, pki, gid)
    os.chown(jail / "stunnel.pem", 0, 0)
    (jail / "stunnel.pem").chmod(0o000)
    log = refused(tmp_path, pki, stunnel_bin, makesock_bin, args_for(jail, user, user))
    assert "stunnel.pem: Permission denied (13)" in log
    assert "Traceback" not in log
    assert wait_gone(user) == []


def test_smtp_starttls_inside_the_jail(tmp_path, account, pki, stunnel_bin, makesock_bin):
    """-n smtp- in the jail, with Debian's exim4 (-bs: SMTP on stdin) as the real backend."""
    user, uid, gid = account
    jail = make_jail(tmp_path, pki, gid)
    args = args_for(jail, user, user, "-n", "smtp-")
    with chain(tmp_path, stunnel_bin, makesock_bin, args, ("exim4", "-bs")) as (port, server, _):
        with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as smtp:
            smtp.ehlo("client.example")
            assert smtp.has_extn("starttls")
            smtp.starttls(context=client_context(pki))
            assert smtp.ehlo("client.example")[0] == 250
            assert not smtp.has_extn("starttls")
            pid = stunnel_process(server, jail)
            root, status = os.readlink(f"/proc/{pid}/root"), status_fields(pid)
            assert smtp.noop()[0] == 250
        assert wait_gone(user) == []
    assert root == str(jail)
    assert (status["Uid"], status["Gid"], status["Groups"]) == (
        [str(uid)] * 4,
        [str(gid)] * 4,
        [str(gid)],
    )

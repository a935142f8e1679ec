"""makesock leaves fixcrio out of PROG2 and our stunnel adds its CRs (makesock.without_fixcrio).

What must hold, through tcpserver + makesock + stunnel -F 3 + a real backend:
- both sides get exactly the bytes they get with fixcrio really running
  (STUNNEL3_MAKESOCK_EXEC=1 runs the chain as written), bare LFs and a CR at
  the end of one TLS record before the LF of the next included;
- no fixcrio process runs; the backend gets neither STUNNEL3_FIXCRIO_FD nor
  anything else of ours in its environment;
- after `setuidgid ACCOUNT`, the backend runs as the account;
- anything other than our own fixcrio front (Debian's, a wrapper) runs as written.
"""

import os
import pwd
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest
from helpers import (  # noqa: F401  (no_leftovers is a fixture)
    TIMEOUT,
    children,
    environment,
    half_close,
    no_leftovers,
    read_to_eof,
    tcpserver,
    tls_client,
)

pytestmark = pytest.mark.usefixtures("no_leftovers")

SEP = "-makesock_connect_to"
# The backend: says three lines (one bare LF, one CRLF, one bare LF), then its
# environment variable and uid, then records everything it reads. (Not `exec cat`:
# that would close its stdout, and fixcrio ends the connection when it sees that.)
BACKEND = """#!/bin/sh
printf 'a\\nb\\r\\nc\\n'
echo "fd=${STUNNEL3_FIXCRIO_FD-unset} uid=$(id -u)"
cat > "$1"
"""
# Sent in three TLS records: the first ends in a CR whose LF starts the second.
RECORDS = [b"one\ntwo\r", b"\nthree\r\r\n", b"\n\n.\n"]
TO_BACKEND = b"one\r\ntwo\r\nthree\r\r\n\r\n\r\n.\r\n"


@pytest.fixture
def shared_dir():
    """A directory every account may use (the backend may run as nobody)."""
    path = Path(tempfile.mkdtemp(prefix="stunnel3-elision-", dir="/tmp"))
    path.chmod(0o1777)
    backend = path / "backend"
    backend.write_text(BACKEND)
    backend.chmod(0o755)
    yield path
    shutil.rmtree(path)


def run_chain(bins, pem, prog2, record, tmp_path, **env):
    makesock_bin, stunnel_bin = bins
    argv = [makesock_bin, stunnel_bin, "-p", pem, "-f", "-F", "3", SEP, *prog2, str(record)]
    with tcpserver(tmp_path, argv, environment(**env)) as server:
        time_limit = time.monotonic() + TIMEOUT
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw:
            with tls_client().wrap_socket(raw) as conn:
                greeting = b""
                while greeting.count(b"\n") < 4:
                    assert (data := conn.recv(4096)), greeting  # EOF: no greeting, no loop
                    greeting += data
                ours = serving(server.process.pid, conn.getsockname()[1])
                processes = tree(ours)
                while "cat" not in processes:  # the backend's cat starts after its greeting
                    assert time.monotonic() < time_limit, processes
                    time.sleep(0.02)
                    processes = tree(ours)
                for record_bytes in RECORDS:
                    conn.sendall(record_bytes)
                    time.sleep(0.05)  # each its own read on the other side
                half_close(conn)
                rest = read_to_eof(conn)
        deadline = time.monotonic() + TIMEOUT
        while b"Connection closed" not in Path(server.log_path).read_bytes():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.02)
    return greeting + rest, record.read_bytes(), processes


def serving(tcpserver_pid: int, client_port: int) -> int:
    """The child of tcpserver (makesock, then stunnel) holding our connection on its fd 0:
    tcpserver's own start-up probe may still be served by another one."""
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if int(fields[2].split(":")[1], 16) == client_port:
                inodes.add(f"socket:[{fields[9]}]")
    for child in children(tcpserver_pid):
        try:
            if os.readlink(f"/proc/{child}/fd/0") in inodes:
                return child
        except OSError:  # the probe's: its session over, it waits for its keeper (makesock)
            continue
    raise AssertionError(f"no child of tcpserver serves port {client_port}")


def tree(pid: int) -> list[str]:
    """The command names of pid and every process below it."""
    names = [Path(f"/proc/{pid}/comm").read_text().strip()]
    for child in children(pid):
        names += tree(child)
    return names


def test_both_sides_get_what_fixcrio_would_give(makesock_bin, stunnel_bin, fixcrio_bin, pki,
                                                 shared_dir, tmp_path):  # fmt: skip
    bins = (makesock_bin, stunnel_bin)
    prog2 = [fixcrio_bin, str(shared_dir / "backend")]
    pem = str(pki["server"])
    left_out = run_chain(bins, pem, prog2, shared_dir / "in-1", tmp_path)
    as_written = run_chain(bins, pem, prog2, shared_dir / "in-2", tmp_path,
                           STUNNEL3_MAKESOCK_EXEC="1")  # fmt: skip
    expected_out = b"a\r\nb\r\nc\r\nfd=unset uid=0\r\n"
    assert left_out[:2] == as_written[:2] == (expected_out, TO_BACKEND)
    # makesock+stunnel, its keeper of PROG2 (a fork of makesock: issue #18), the backend
    # (sh) and its cat; exec'd as written: no keeper, and fixcrio's pump.
    assert left_out[2][0] == as_written[2][0] == "stunnel"  # makesock became stunnel
    assert sorted(left_out[2][1:]) == ["backend", "cat", "makesock"], left_out[2]
    assert sorted(as_written[2][1:]) == ["backend", "cat", "fixcrio"], as_written[2]


def test_after_setuidgid_the_backend_runs_as_the_account(makesock_bin, stunnel_bin,
                                                         fixcrio_bin, pki, shared_dir,
                                                         tmp_path):  # fmt: skip
    from stunnel3 import makesock

    prog2 = ["setuidgid", "nobody", fixcrio_bin, str(shared_dir / "backend")]
    python = makesock._front_python(os.fsencode(fixcrio_bin), b"fixcrio")
    assert python is not None
    if not makesock._others_may_start(os.fsencode(fixcrio_bin), python):
        # A dev install under /root (or a venv whose python links to one there): nobody
        # could not run our fixcrio, so makesock keeps it (and the chain fails as it always
        # would). CI installs under /opt: the rest runs.
        invocation = makesock.Invocation([stunnel_bin, "-F", "3"], prog2, 3, socket.SOCK_STREAM)
        assert makesock.without_fixcrio(invocation) is None
        return
    got, recorded, processes = run_chain((makesock_bin, stunnel_bin), str(pki["server"]),
                                         prog2, shared_dir / "in", tmp_path)  # fmt: skip
    assert got == b"a\r\nb\r\nc\r\nfd=unset uid=%d\r\n" % pwd.getpwnam("nobody").pw_uid
    assert recorded == TO_BACKEND
    # no fixcrio: makesock+stunnel, its keeper (makesock), the backend and its cat
    assert processes[0] == "stunnel"
    assert sorted(processes[1:]) == ["backend", "cat", "makesock"], processes

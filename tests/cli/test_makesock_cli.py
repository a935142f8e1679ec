"""makesock: usage, errors, the option set, descriptors and lifetimes, under tcpserver.

The descriptor check is exact: PROBE lists its descriptors with fstat and
readlink on /proc/self/fd/N, which open none, before it does anything else.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import free_port

SEP = "-makesock_connect_to"
USAGE = (
    b"makesock: usage: makesock [ -d fd ] [ -s separator ] [ -t stream|seqpacket|dgram ]"
    b" prog1 [ arg ... ] -makesock_connect_to prog2 [ arg ... ]\n"
)
TIMEOUT = 20

# argv: first FD | second. The first talks on FD and reports on its stdout (the
# network); the second answers on its stdin/stdout and reports on stderr.
PROBE = """
import os, sys
fds = {}
for fd in range(256):
    try:
        os.fstat(fd)
    except OSError:
        continue
    fds[fd] = os.readlink("/proc/self/fd/%d" % fd)
import json, socket
report = {"pid": os.getpid(), "ppid": os.getppid(), "fds": fds}
mine = int(sys.argv[2]) if sys.argv[1] == "first" else 0
end = socket.socket(fileno=mine)
report["type"] = int(end.type)
if sys.argv[1] == "first":
    end.send(b"ping")
    report["heard"] = end.recv(100).decode()
    end.detach()
    os.write(1, (json.dumps(report) + "\\n").encode())
else:
    end.detach()
    report["heard"] = os.read(0, 100).decode()
    os.write(1, b"pong")
    os.write(2, (json.dumps(report) + "\\n").encode())
"""


def probe(*role: str) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", PROBE, *role]


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(argv), capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, **kwargs
    )


@contextlib.contextmanager
def tcpserver(program: list[str], log_path):
    """`tcpserver -v` on a free loopback port running program; yields (port, log reader)."""
    port = free_port()
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            ["tcpserver", "-v", "-R", "-H", "-l", "localhost", "127.0.0.1", str(port), *program],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while b"status: 0/" not in log_path.read_bytes():
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_bytes()
            time.sleep(0.02)
        yield port, log_path.read_bytes
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(TIMEOUT)


def wait_for(read, pattern: bytes) -> re.Match:
    deadline = time.monotonic() + TIMEOUT
    while not (found := re.search(pattern, read())):
        assert time.monotonic() < deadline, (pattern, read())
        time.sleep(0.02)
    return found


def converse(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize(
    "options, fd, kind",
    [
        ([], 3, socket.SOCK_STREAM),  # the original invocation, untouched
        (["-d", "5", "-s", ":::", "-t", "seqpacket"], 5, socket.SOCK_SEQPACKET),
        (["--fd=4", "--type=dgram", "--"], 4, socket.SOCK_DGRAM),
    ],
)
def test_descriptors_pids_and_status_under_tcpserver(makesock_bin, tmp_path, options, fd, kind):
    separator = options[options.index("-s") + 1] if "-s" in options else SEP
    program = [makesock_bin, *options, *probe("first", str(fd)), separator, *probe("second")]
    with tcpserver(program, tmp_path / "log") as (port, log):
        first = json.loads(converse(port))
        second = json.loads(wait_for(log, rb'\{"pid".*\}').group())
        served = int(wait_for(log, rb"tcpserver: pid (\d+) from").group(1))
        status = wait_for(log, rb"tcpserver: end (\d+) status (\d+)")
    # tcpserver's child is PROG1 itself; PROG2 is PROG1's child.
    assert first["pid"] == served == int(status.group(1))
    assert status.group(2) == b"0"
    assert second["ppid"] == first["pid"]
    # PROG1: the network on 0 and 1, stderr on 2, its end on fd; nothing else.
    mine = first["fds"]
    assert sorted(mine) == sorted({"0", "1", "2", str(fd)})
    assert mine["0"] == mine["1"] and mine["0"].startswith("socket:")
    assert mine[str(fd)].startswith("socket:") and mine[str(fd)] != mine["0"]
    # PROG2: the other end on 0 and 1, the same stderr; nothing else.
    theirs = second["fds"]
    assert sorted(theirs) == ["0", "1", "2"]
    assert theirs["0"] == theirs["1"] and theirs["0"].startswith("socket:")
    assert theirs["0"] not in (mine["0"], mine[str(fd)])
    assert theirs["2"] == mine["2"]
    assert first["type"] == second["type"] == kind
    assert (first["heard"], second["heard"]) == ("pong", "ping")


@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_when_prog1_exits_prog2_reads_eof(makesock_bin, kind):
    done = run(
        makesock_bin,
        "-t",
        kind,
        "sh",
        "-c",
        "exit 3",
        SEP,
        "sh",
        "-c",
        "cat; echo prog2 saw EOF >&2",
    )
    assert done.returncode == 3  # PROG1's status is makesock's
    assert done.stderr == b"prog2 saw EOF\n"  # read until PROG2 let go of stderr


@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_when_prog2_exits_prog1_reads_eof(makesock_bin, kind):
    done = run(makesock_bin, "-t", kind, "sh", "-c", "cat <&3; echo prog1 saw EOF", SEP, "true")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"prog1 saw EOF\n", b"")


def test_lifetimes_under_tcpserver(makesock_bin, tmp_path):
    """PROG2 ends the session: PROG1 reads EOF on 3, exits, tcpserver gets its status."""
    program = [makesock_bin, "sh", "-c", "cat <&3; exit 4", SEP, "sh", "-c", "echo bye >&2"]
    with tcpserver(program, tmp_path / "log") as (port, log):
        assert converse(port) == b""  # the client sees the end
        wait_for(log, rb"tcpserver: end \d+ status 1024")  # exit 4, as a wait status
        assert b"bye" in log()


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["prog"],
        ["prog", "arg", SEP],
        [SEP, "prog"],
        ["-d", "2", "a", SEP, "b"],
        ["-d", "x", "a", SEP, "b"],
        ["-d", "٣", "a", SEP, "b"],
        ["-t", "raw", "a", SEP, "b"],
        ["-q", "a", SEP, "b"],
        ["-d"],
        ["-d", "4"],
        ["-s", "::", "a", SEP, "b"],  # the separator is now "::"
        ["-h", "a"],
    ],
)
def test_usage_errors(makesock_bin, argv):
    done = run(makesock_bin, *argv)
    assert (done.returncode, done.stdout, done.stderr) == (100, b"", USAGE)


def test_help_explains_the_options(makesock_bin):
    for flag in ("-h", "--help"):
        done = run(makesock_bin, flag)
        assert (done.returncode, done.stderr) == (0, b"")
        for word in (b"-d FD", b"-s WORD", b"-t TYPE", b"seqpacket", b"-makesock_connect_to"):
            assert word in done.stdout


def test_prog1_missing_means_prog2_never_runs(makesock_bin, tmp_path):
    marker = tmp_path / "prog2-ran"
    done = run(makesock_bin, "/nonexistent", SEP, "touch", str(marker))
    assert done.returncode == 111
    assert done.stderr == b"makesock: fatal: unable to run /nonexistent: file does not exist\n"
    time.sleep(0.3)  # the child would have had ample time to run touch
    assert not marker.exists()


def test_prog2_missing_is_reported_and_prog1_reads_eof(makesock_bin, tmp_path):
    (tmp_path / "plain").write_text("not a program\n")
    done = run(makesock_bin, "sh", "-c", "cat <&3; echo EOF", SEP, str(tmp_path / "plain"))
    assert (done.returncode, done.stdout) == (0, b"EOF\n")  # the status is PROG1's
    assert (
        done.stderr == f"makesock: fatal: unable to run {tmp_path}/plain: access denied\n".encode()
    )


def test_prog1_arguments_may_look_like_options(makesock_bin):
    done = run(makesock_bin, "sh", "-c", 'echo "$@"', "-", "-d", "-h", SEP, "true")
    assert (done.returncode, done.stdout) == (0, b"-d -h\n")


def test_descriptors_the_caller_passed_are_passed_on(makesock_bin):
    """Like any chain-loader, makesock leaves the caller's descriptors alone."""
    keep_r, keep_w = os.pipe()
    try:
        done = run(
            makesock_bin,
            "sh",
            "-c",
            f"echo first > /dev/fd/{keep_w}",
            SEP,
            "sh",
            "-c",
            f"sleep 0.1; echo second > /dev/fd/{keep_w}",
            pass_fds=(keep_w,),
        )
        os.close(keep_w)
        keep_w = -1
        got = b""
        while chunk := os.read(keep_r, 100):
            got += chunk
    finally:
        os.close(keep_r)
        if keep_w >= 0:
            os.close(keep_w)
    assert done.returncode == 0
    assert got == b"first\nsecond\n"


def test_the_original_invocation_does_not_import_docopt():
    """docopt costs ~23 ms at every connection; the option-less form needs none of it."""
    code = (
        "import sys; from stunnel3 import makesock\n"
        "inv = makesock.parse(['makesock', 'a', '-x', '-makesock_connect_to', 'b'])\n"
        "print(inv.first, inv.second, inv.fd, 'docopt' in sys.modules)\n"
        "makesock.parse(['makesock', '-d', '4', 'a', '-makesock_connect_to', 'b'])\n"
        "print('docopt' in sys.modules)\n"
    )
    done = run(sys.executable, "-I", "-c", code)
    assert done.stdout == b"['a', '-x'] ['b'] 3 False\nTrue\n"


def test_our_stunnel_runs_in_process_only_when_exec_would_start_it(stunnel_bin, monkeypatch):
    from stunnel3 import makesock

    scripts = os.path.dirname(stunnel_bin)
    monkeypatch.setenv("PATH", f"{scripts}:/usr/bin:/bin")
    assert makesock.runs_our_stunnel("stunnel")
    assert makesock.runs_our_stunnel(stunnel_bin)
    monkeypatch.setenv("PATH", f"/usr/bin:{scripts}:/bin")  # Debian's stunnel 5 comes first
    assert not makesock.runs_our_stunnel("stunnel")
    assert not makesock.runs_our_stunnel("fixcrio")
    monkeypatch.setenv("STUNNEL3_MAKESOCK_EXEC", "1")
    assert not makesock.runs_our_stunnel(stunnel_bin)


def test_in_process_and_exec_give_the_same_session(makesock_bin, stunnel_bin, monkeypatch):
    """stunnel -V and a parse error through makesock: same output, status either way."""
    results = []
    for exec_always in ("0", "1"):
        env = dict(os.environ, STUNNEL3_MAKESOCK_EXEC=exec_always)
        runs = [
            subprocess.run(
                [makesock_bin, stunnel_bin, *args, "-makesock_connect_to", "true"],
                capture_output=True,
                env=env,
                timeout=30,
            )
            for args in (["-V"], ["-x"], ["-f", "-p", "/nonexistent.pem", "-F", "3"])
        ]
        masked = [re.sub(rb"(?m)^.* LOG(\d)\[\d+:\d+\]", rb"LOG\1", r.stderr) for r in runs]
        results.append([(r.returncode, text) for r, text in zip(runs, masked, strict=True)])
    assert results[0] == results[1]
    assert [status for status, _ in results[0]] == [0, 1, 1]

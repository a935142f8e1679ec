"""children.py: a program that outlives its session gets SIGTERM, then SIGKILL (issue #18).

Real processes: Python children that exit, ignore SIGTERM, or ignore both their
input's end and SIGTERM; each is ended by pid through a pidfd, never by name."""

import os
import subprocess
import sys
import time

import pytest

from stunnel3.engine import children

IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"


def start(code: str) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
    return process, os.pidfd_open(process.pid)


@pytest.mark.parametrize(
    ("code", "said", "status"),
    [
        ("pass", [], 0),
        ("import time; time.sleep(60)", ["SIGTERM"], -15),
        (IGNORES_TERM, ["SIGTERM", "SIGKILL"], -9),
    ],
    ids=["exits", "ends on SIGTERM", "ignores SIGTERM"],
)
def test_end_waits_then_terminates_then_kills(code, said, status):
    process, pidfd = start(code)
    if not said:
        process.wait(10)  # it has exited: nothing is sent
    else:
        time.sleep(0.3)  # it has installed its handlers
    heard: list[str] = []
    began = time.monotonic()
    try:
        children.end(pidfd, 0.5, heard.append)
        assert process.wait(5) == status
    finally:
        os.close(pidfd)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert heard == said
    assert time.monotonic() - began < 0.5 * len(said) + 2


def test_keep_does_nothing_while_the_program_runs_and_it_exits_by_itself():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: exits on its own after 0.3 s
        time.sleep(0.3)
        os._exit(7)
    pidfd = os.pidfd_open(pid)
    heard: list[str] = []
    try:
        children.keep(pid, pidfd, read_end, 0.2, heard.append)
        assert heard == []
        with pytest.raises(ChildProcessError):  # reaped by keep
            os.waitpid(pid, os.WNOHANG)
    finally:
        for fd in (pidfd, read_end, write_end):
            os.close(fd)


def test_keep_ends_the_program_when_the_lifeline_closes():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: ignores SIGTERM, never exits by itself
        import signal

        os.close(write_end)  # only the session holds the lifeline
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
        os._exit(0)
    pidfd = os.pidfd_open(pid)
    heard: list[str] = []
    try:
        time.sleep(0.2)
        os.close(write_end)  # the session is over
        children.keep(pid, pidfd, read_end, 0.3, heard.append)
        assert heard == ["SIGTERM", "SIGKILL"]
        assert children.exited(pidfd, 0)
    finally:
        os.close(pidfd)
        os.close(read_end)
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

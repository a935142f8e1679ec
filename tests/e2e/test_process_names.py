"""Process names: `ps`, `pidof` and `pgrep -x` show our programs as C ones would show them.

Each program runs as `python3 -I -S -c <script> prog args`; proctitle.py names
the process `prog` (/proc/PID/comm) and shows `prog args` as its command line.
Checked with the real tools (procps' ps and pgrep, sysvinit's pidof) on every
long-lived process of the chain: stunnel on its own, makesock become stunnel,
fixcrio's pump, the warm helper, and the worker that becomes a front's process.
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TIMEOUT, children, environment, no_leftovers  # noqa: F401
from test_warm import helper, spawn, start_held_session, wait_stderr  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_leftovers")
SEP = "-makesock_connect_to"
ROOT = Path(__file__).resolve().parents[2]


def shown(pid: int) -> tuple[str, list[str]]:
    """/proc's name and command line of pid (the padding NULs of a rewritten one dropped)."""
    comm = Path(f"/proc/{pid}/comm").read_text().rstrip("\n")
    words = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    return comm, [os.fsdecode(word) for word in words]


def pids(*argv: str) -> set[int]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    return {int(word) for word in done.stdout.split()}


def assert_named(pid: int, argv: list[str]) -> None:
    """pid is shown as argv, to /proc and to each tool that looks for a program by name."""
    name = os.path.basename(argv[0])
    assert shown(pid) == (name[:15], argv)
    assert pid in pids("pidof", name)
    assert pid in pids("pgrep", "-x", name)
    ps = subprocess.run(["ps", "-ww", "-o", "comm=,args=", "-p", str(pid)], capture_output=True,
                        text=True, timeout=TIMEOUT)  # fmt: skip
    assert ps.stdout.split(None, 1) == [name[:15], " ".join(argv) + "\n"]


def wait_until(condition, what: str):
    deadline = time.monotonic() + TIMEOUT
    while not (found := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.02)
    return found


def test_stunnel_is_stunnel(stunnel_bin, pki, tmp_path, monkeypatch):
    monkeypatch.setenv("STUNNEL3_WARM_DIR", str(tmp_path / "none"))  # the direct path
    with contextlib.ExitStack() as stack:
        process, _ = start_held_session(stunnel_bin, pki, stack)
        assert_named(process.pid, ["stunnel", "-f", "-p", str(pki["server"]), "-F", "3"])
        process.kill()
        process.communicate(timeout=TIMEOUT)


@pytest.mark.parametrize("warm", [False, True], ids=["direct", "warm"])
def test_makesock_becomes_stunnel_and_so_does_the_worker(
    warm, request, makesock_bin, stunnel_bin, pki
):
    """makesock runs our stunnel in its own process: named as its exec would have been. With
    the helper, the worker that becomes makesock's process is named so, not as the helper."""
    warm_helper = request.getfixturevalue("helper")  # imported from test_warm
    args = ["-f", "-p", str(pki["server"]), "-F", "3"]
    network, ours = socket.socketpair()
    with network, ours:
        process = spawn(makesock_bin, [stunnel_bin, *args, SEP, "cat"], warm,
                        {0: ours.fileno(), 1: ours.fileno()}, stderr=subprocess.PIPE)  # fmt: skip
        try:
            wait_stderr(process, b"stunnel 3.22 on")
            (served,) = warm_helper.workers() if warm else [process.pid]
            assert_named(served, ["stunnel", *args])
            if warm:  # the helper keeps PROG2 (docs/warm.md): the worker's own child
                keeper = served
            else:  # PROG2's keeper (issue #18): a fork of makesock, named as makesock was
                (keeper,) = children(served)
                assert shown(keeper) == ("makesock", ["makesock", stunnel_bin, *args, SEP, "cat"])
            # PROG2, exec'd (the keeper spawns it once stunnel runs): it ends with stunnel's
            # end of the pair
            (second,) = wait_until(lambda: children(keeper), "PROG2 under its keeper")
            wait_until(lambda: shown(second) == ("cat", ["cat"]), "PROG2 named cat")
            if warm:  # the front waits as the sh it is: the kernel named it by its file
                assert shown(process.pid)[0] == "makesock"
                assert process.pid in pids("pidof", "-x", "makesock")
            assert warm_helper.workers() == ([served] if warm else [])
        finally:
            process.terminate()
            process.communicate(timeout=TIMEOUT)
    warm_helper.wait_no_workers()


def test_the_fixcrio_pump_is_fixcrio(fixcrio_bin):
    program = ["sh", "-c", "read line"]
    process = subprocess.Popen([fixcrio_bin, *program], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, env=environment())  # fmt: skip
    try:
        (pump,) = wait_until(lambda: children(process.pid), "no pump")
        assert_named(pump, ["fixcrio", *program])
        assert shown(process.pid)[0] == "sh"  # the parent became the program, as ucspi-tcp's
    finally:
        process.communicate(b"\n", timeout=TIMEOUT)


def test_the_helper_is_stunnel3_warm(request):
    warm_helper = request.getfixturevalue("helper")
    assert_named(warm_helper.process.pid, ["stunnel3-warm", "-d", warm_helper.path])


def test_a_title_is_cut_to_the_memory_argv_had(tmp_path):
    """The words go where the kernel put argv: a longer title is cut, never spilled."""
    script = (
        "import sys\n"
        "from stunnel3.support.proctitle import set_title\n"
        "set_title(['stunnel-with-a-long-name', *['x' * 50] * 4, 'caf\\xe9'])\n"
        "sys.stdout.buffer.write(open('/proc/self/cmdline', 'rb').read())\n"
        "sys.stdout.write('|' + open('/proc/self/comm').read())\n"
    )
    title = b"\0".join([b"stunnel-with-a-long-name", *[b"x" * 50] * 4, "café".encode()])
    for pad in ("", "p" * 300):  # argv shorter than the title, then longer
        argv = [sys.executable, "-c", script, pad]
        done = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, cwd=ROOT)
        line, _, comm = done.stdout.rpartition(b"|")
        assert comm == b"stunnel-with-a-\n"  # TASK_COMM_LEN: 15 bytes and a NUL
        room = sum(len(os.fsencode(word)) + 1 for word in argv)
        assert line == title[: room - 1].ljust(room, b"\0")

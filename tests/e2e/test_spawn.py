"""Programs started without a fork (makesock's PROG2: limits.spawn, docs/makesock.md;
stunnel's -l: subprocess): what they get is what a forked one got.

makesock runs our stunnel in its own process, and its keeper (children.py) starts PROG2
with posix_spawn; under `softlimit` through prlimit(1), which gives the soft limits back
to the byte. Either way PROG2 sees the caller's limits and ignored signals, holds its end
of the pair on 0 and 1 and nothing else, and a PROG2 that cannot run is said on stderr in
makesock's words.
"""

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (  # noqa: F401  (no_leftovers is a fixture)
    TIMEOUT,
    Service,
    environment,
    free_port,
    no_leftovers,
    tcpserver,
    tls_exchange,
)

from stunnel3.support import limits

pytestmark = pytest.mark.usefixtures("no_leftovers")

SEP = "-makesock_connect_to"
LIMIT_LINES = ("Max address space", "Max data size", "Max stack size")
GLIBC_INTERNAL = 1 << 31 | 1 << 32  # SigIgn bits of signals 32 and 33


def start(prefix: list[str], makesock_bin, stunnel_bin, pki, second: list[str]):
    """makesock + our stunnel (-n smtp-, -F 3) and PROG2; no client: PROG2's end ends it."""
    argv = [*prefix, makesock_bin, stunnel_bin, "-p", str(pki["server"]), "-n", "smtp-", "-f",
            "-F", "3", SEP, *second]  # fmt: skip
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=environment(STUNNEL3_WARM="0"))  # fmt: skip


def facts(pid: int) -> dict:
    """What a process got: its soft limits, ignored signals, descriptors, argv."""
    limits_text = Path(f"/proc/{pid}/limits").read_text().splitlines()
    status = Path(f"/proc/{pid}/status").read_text()
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
    return {
        "limits": [line.split()[3] for line in limits_text if line.startswith(LIMIT_LINES)],
        "ignored": re.search(r"^SigIgn:\s*(\S+)", status, re.M)[1],  # type: ignore[index]
        "fds": fds,
        "ends": {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1) if fd in fds},
        "argv": Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1],
    }


def children(parent: int) -> list[int]:
    try:
        return [
            int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        ]
    except OSError:
        return []


def descendants(parent: int) -> list[int]:
    """parent's children and theirs, deepest last."""
    found = children(parent)
    for pid in list(found):
        found += descendants(pid)
    return found


def asleep(pid: int) -> bool:
    """pid has finished its exec and waits in `sleep`'s nanosleep. Linux shows the new
    argv (exec_mmap) before it closes the close-on-exec descriptors (do_close_on_exec),
    so a process whose cmdline already reads `sleep` may still hold the keeper's; one that
    sleeps (state S: an exec in progress is running) has closed them."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "S"


def the_child(parent: int) -> int:
    """PROG2 under parent (the keeper's child) once it sleeps in `sleep` (prlimit, if any,
    has exec'd it)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for pid in descendants(parent):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"sleep") and asleep(pid):
                    return pid
            except OSError:
                continue  # a child that came and went between the listing and this read
        time.sleep(0.01)
    raise AssertionError(f"no PROG2 under {parent}")


def stop(chain: subprocess.Popen) -> None:
    """PROG2 first (stunnel then reads EOF on 3 and ends), then whatever is left, by pid."""
    for pid in reversed(descendants(chain.pid)):
        with contextlib.suppress(ProcessLookupError):  # it ended after the listing
            os.kill(pid, signal.SIGKILL)
    try:
        chain.wait(timeout=TIMEOUT)
    finally:
        if chain.poll() is None:
            chain.kill()
            chain.wait()
        for pipe in (chain.stdout, chain.stderr):  # a failing test's traceback keeps
            if pipe:  # chain, and with it these pipes, open
                pipe.close()


@pytest.mark.parametrize("softlimit", [False, True], ids=["as-is", "softlimit"])
def test_the_spawned_program_gets_what_a_forked_one_got(softlimit, makesock_bin, stunnel_bin, pki):
    prefix = ["softlimit", "-m", "5000000"] if softlimit else []
    caller = subprocess.Popen([*prefix, "sleep", "30"], env=environment())
    try:
        while not (Path(f"/proc/{caller.pid}/cmdline").read_bytes().startswith(b"sleep")
                   and asleep(caller.pid)):  # fmt: skip
            time.sleep(0.01)  # softlimit has not exec'd it yet
        expected = facts(caller.pid)
    finally:
        caller.kill()
        caller.wait()
    chain = start(prefix, makesock_bin, stunnel_bin, pki, ["sleep", "30"])
    try:
        got = facts(the_child(chain.pid))
    finally:
        stop(chain)
    assert chain.returncode == 0  # the session ended at PROG2's end
    assert got["limits"] == expected["limits"]  # to the byte: 5000000 under softlimit
    # glibc's posix_spawn (2.36, Debian 12; Python's subprocess alike) leaves its own two
    # internal signals, 32 and 33, ignored: no program may use them, glibc installs its
    # handlers for them when it does.
    assert int(got["ignored"], 16) & ~GLIBC_INTERNAL == int(expected["ignored"], 16)
    assert got["fds"] == [0, 1, 2] and len(got["ends"]) == 1  # its end of the pair, stderr
    assert next(iter(got["ends"])).startswith("socket:")
    # Through prlimit (limits to give back) argv[0] is the program's path, else the word.
    assert got["argv"][0].endswith(b"/sleep") if softlimit else got["argv"][0] == b"sleep"


def test_a_program_that_cannot_run_is_said_on_stderr(makesock_bin, stunnel_bin, pki):
    chain = start([], makesock_bin, stunnel_bin, pki, ["/nonexistent/prog2"])
    _, err = chain.communicate(timeout=TIMEOUT)
    assert chain.returncode == 0  # stunnel read EOF on 3: the session ended
    assert b"makesock: fatal: unable to run /nonexistent/prog2: file does not exist\n" in err


def test_without_prlimit_the_caller_forks(monkeypatch, tmp_path):
    """limits.spawn: None (fork instead) when limits must come back and prlimit is missing;
    with prlimit, a child under the original soft limit."""
    soft, hard = limits.resource.getrlimit(limits.resource.RLIMIT_AS)
    wanted = 3_000_000_000 if soft == limits.resource.RLIM_INFINITY else soft // 2
    stack = limits.resource.getrlimit(limits.resource.RLIMIT_STACK)[0]
    shown = "unlimited" if stack == limits.resource.RLIM_INFINITY else str(stack)
    monkeypatch.setenv(limits.ENV, f"{wanted}:unlimited:{shown}")
    out = tmp_path / "as"
    args = [b"sh", b"-c", f"grep '^Max address space' /proc/self/limits >{out}".encode()]
    monkeypatch.setattr(limits, "PRLIMIT", "/nonexistent/prlimit")
    assert limits.spawn(b"/bin/sh", args, dict(os.environ), []) is None
    monkeypatch.undo()
    monkeypatch.setenv(limits.ENV, f"{wanted}:unlimited:{shown}")
    pid = limits.spawn(b"/bin/sh", args, dict(os.environ), [])
    assert pid is not None
    assert os.waitpid(pid, 0)[1] == 0
    assert Path(out).read_text().split()[3] == str(wanted)


LOCAL_REPORT = (  # the shell's own descriptors (a pipeline would add its pipes), then the rest
    "ls /proc/$$/fd; echo end; grep ^SigIgn /proc/$$/status;"
    " grep -E '^Max (address space|data size|stack size) ' /proc/$$/limits"
)


@pytest.mark.parametrize("softlimit", [False, True], ids=["spawned", "forked"])
def test_a_local_program_gets_what_it_got_forked(softlimit, stunnel_bin, pki, tmp_path):
    """-l: started by subprocess (vfork) when no limits are to be given back, else forked:
    the same descriptors, ignored signals and limits either way."""
    prefix = ["softlimit", "-m", "5000000"] if softlimit else []
    argv = [*prefix, "tcpserver", "-R", "-H", "-l", "localhost", "127.0.0.1"]
    program = [stunnel_bin, "-f", "-p", str(pki["server"]), "-l", "/bin/sh", "--", "sh", "-c",
               LOCAL_REPORT]  # fmt: skip
    port = free_port()
    with Service([*argv, str(port), *program], port, tmp_path / "tcpserver.log", environment()):
        said = tls_exchange(port, b"").decode().splitlines()
    caller = subprocess.run([*prefix, "sh", "-c", LOCAL_REPORT.replace("$$", "self")],
                            capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    fds, rest = said[: said.index("end")], said[said.index("end") + 1 :]
    expected = caller.stdout.splitlines()
    assert sorted(fds, key=int) == ["0", "1", "2"], said
    assert rest == expected[expected.index("end") + 1 :], (said, expected)


def test_a_local_program_that_cannot_run_is_logged(stunnel_bin, pki, tmp_path):
    program = [stunnel_bin, "-f", "-p", str(pki["server"]), "-l", "/nonexistent/prog"]
    with tcpserver(tmp_path, program, environment()) as service:
        assert tls_exchange(service.port, b"") == b""  # the program's end: nothing served
        log = service.wait_log("Connection closed")
    assert "/nonexistent/prog: No such file or directory (2)" in log

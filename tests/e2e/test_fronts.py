"""The sh fronts under the users' `softlimit -m 5000000`, for real (SPEC section 5).

What must hold: each executable starts and does its job under Debian's
softlimit; every program it starts sees the administrator's original soft
limits (softlimit -m 5000000 is 4882 KiB for AS, DATA and STACK) and SIGPIPE
as the caller left it; a hard limit below the floor gives one clear line and
exit 111; a soft limit above the floor is never lowered; a Python the front
cannot run is named, never replaced by another.
"""

import re
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import (  # noqa: F401  (no_leftovers is a fixture)
    TIMEOUT,
    Service,
    environment,
    free_port,
    install_on_a_closed_python,
    no_leftovers,
)

pytestmark = pytest.mark.usefixtures("no_leftovers")

SOFTLIMIT = ["softlimit", "-m", "5000000"]
KIB = b"4882"  # 5000000 // 1024, what `ulimit -S` prints under softlimit -m 5000000
SEP = "-makesock_connect_to"
SHOW_LIMITS = "ulimit -S -v; ulimit -S -d; ulimit -S -s"


def run(argv: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, input=stdin, capture_output=True, timeout=TIMEOUT, env=environment()
    )


def signals_ignored(prefix: list[str]) -> bytes:
    """The SigIgn line of a grep started right under prefix (no front of ours)."""
    return run([*prefix, "grep", "^SigIgn", "/proc/self/status"]).stdout


def test_fixcrio_works_and_its_program_keeps_the_limits(fixcrio_bin):
    done = run([*SOFTLIMIT, fixcrio_bin, "sh", "-c", f"{SHOW_LIMITS}; cat"], b"x\ny\r\n")
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout == b"\r\n".join([KIB, KIB, KIB, b"x", b"y", b""])


def test_the_limits_come_back_to_the_byte(makesock_bin):
    """softlimit -m 5000000 is 5000000 bytes, not 4882 KiB (4999168) after the front."""
    script = "grep -E '^Max (address space|data size|stack size) ' /proc/self/limits"
    prog1 = ["sh", "-c", "cat <&3"]  # shows what PROG2 writes on the pair
    done = run([*SOFTLIMIT, "softlimit", "-s", "4000001", makesock_bin, *prog1, SEP, "sh", "-c",
                script])  # fmt: skip
    got = {
        " ".join(line.split()[:3]): line.split()[3] for line in done.stdout.decode().splitlines()
    }
    assert got == {
        "Max address space": "5000000",
        "Max data size": "5000000",
        "Max stack size": "4000001",
    }, done


def test_fixcrio_program_gets_sigpipe_default(fixcrio_bin):
    done = run([*SOFTLIMIT, fixcrio_bin, "grep", "^SigIgn", "/proc/self/status"])
    assert done.stdout == signals_ignored(SOFTLIMIT).replace(b"\n", b"\r\n")


def test_makesock_works_and_both_programs_keep_the_limits(makesock_bin):
    first = f"{SHOW_LIMITS}; grep ^SigIgn /proc/self/status; echo hi >&3; cat <&3"
    second = f'{{ {SHOW_LIMITS}; grep ^SigIgn /proc/self/status; }} >&2; read x; echo "got $x"'
    done = run([*SOFTLIMIT, makesock_bin, "sh", "-c", first, SEP, "sh", "-c", second])
    sigign = signals_ignored(SOFTLIMIT)
    assert done.returncode == 0
    assert done.stdout == b"\n".join([KIB, KIB, KIB, b""]) + sigign + b"got hi\n"
    assert done.stderr == b"\n".join([KIB, KIB, KIB, b""]) + sigign


def test_stunnel_starts_under_softlimit(stunnel_bin):
    done = run([*SOFTLIMIT, stunnel_bin, "-V"])
    assert done.returncode == 0
    assert done.stderr.startswith(b"\nstunnel 3.22 on ")


def test_the_chain_under_softlimit_and_tcpserver(makesock_bin, fixcrio_bin, tmp_path):
    """softlimit, tcpserver, makesock, fixcrio, a program: the users' chain less stunnel."""
    port = free_port()
    chain = [
        *SOFTLIMIT,
        "tcpserver",
        "-R",
        "-H",
        "-l",
        "localhost",
        "127.0.0.1",
        str(port),
        makesock_bin,
        "sh",
        "-c",
        "cat <&3",
        SEP,
        fixcrio_bin,
        "sh",
        "-c",
        f"{SHOW_LIMITS}; printf 'bare\\nlines\\n'",
    ]
    with Service(chain, port, tmp_path / "tcpserver.log", environment()):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
    assert received == b"\r\n".join([KIB, KIB, KIB, b"bare", b"lines", b""])


@pytest.mark.parametrize(
    "program, args",
    [("fixcrio", ["cat"]), ("makesock", ["true", SEP, "true"]), ("stunnel", ["-V"])],
)
def test_a_hard_limit_below_the_floor_is_one_line_and_111(
    program, args, fixcrio_bin, makesock_bin, stunnel_bin
):
    front = {"fixcrio": fixcrio_bin, "makesock": makesock_bin, "stunnel": stunnel_bin}[program]
    done = run(["sh", "-c", 'ulimit -v 40000 && exec "$0" "$@"', front, *args])
    assert done.returncode == 111
    assert done.stdout == b""
    assert re.fullmatch(rf"{program}: fatal: [^\n]*hard limit[^\n]*\n".encode(), done.stderr)


def pump_limits(fixcrio_bin: str, soft_kib: int) -> tuple[bytes, int]:
    """What fixcrio's program sees, and the soft AS limit of its pump (our Python)."""
    proc = subprocess.Popen(
        ["sh", "-c", f'ulimit -S -v {soft_kib} && exec "$0" "$@"', fixcrio_bin]
        + ["sh", "-c", "ulimit -S -v; read wait"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=environment(),
    )
    try:
        seen = proc.stdout.readline()  # the program runs, its pump is its child
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1
        limits = Path(f"/proc/{children[0]}/limits").read_text()
        pump_as = re.search(r"Max address space\s+(\d+)", limits)
        assert pump_as, limits
    finally:
        proc.communicate(b"\n", timeout=TIMEOUT)
    return seen, int(pump_as.group(1))


def test_a_soft_limit_above_the_floor_is_left_alone(fixcrio_bin):
    seen, pump_as = pump_limits(fixcrio_bin, 300000)
    assert seen == b"300000\r\n"
    assert pump_as == 300000 * 1024  # Python ran under the administrator's limit


def test_a_soft_limit_below_the_floor_is_raised_for_python_only(fixcrio_bin):
    seen, pump_as = pump_limits(fixcrio_bin, 50000)
    assert seen == b"50000\r\n"
    assert pump_as > 50000 * 1024  # the front raised it for Python


def test_a_python_the_account_cannot_run_is_named_not_replaced(fixcrio_bin, tmp_path):
    """setuidgid to an account that cannot reach the installed Python (a venv of a Python
    under /root): the front says so, and never runs another Python instead (issue #18)."""
    with install_on_a_closed_python(tmp_path, fixcrio_bin) as (install, python):
        record = install / "stunnel3-python"
        as_nobody = ["setuidgid", "nobody", str(install / "fixcrio"), "cat"]
        done = run(as_nobody)
        assert (done.returncode, done.stdout) == (111, b"")
        said = f"fixcrio: fatal: unable to run {python}: access denied\n"
        assert done.stderr == said.encode()
        done = run([str(install / "fixcrio"), "cat"])  # root reaches it: that Python, no other
        said = f"fixcrio: fatal: unable to load stunnel3 in {python}: No module named"
        assert done.returncode == 111 and done.stderr.startswith(said.encode())
        record.unlink()
        done = run(as_nobody)
        assert (done.returncode, done.stdout) == (111, b"")
        said = f"fixcrio: fatal: unable to read {record}: file does not exist\n"
        assert done.stderr == said.encode()

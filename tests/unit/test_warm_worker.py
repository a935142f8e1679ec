"""warm_worker's parts that need no helper: the front's identity, limits, descriptors, signals.

The whole handoff, through a real helper and real fronts, is tests/e2e/test_warm.py.
"""

import os
import resource
import signal
import sys
from pathlib import Path

import pytest

from stunnel3.warm import worker as warm_worker

ROOT = Path(__file__).resolve().parents[2]


def front(tmp_path: Path, prog: str, python: str) -> bytes:
    """bin/'s front for prog, in a directory of its own with the stunnel3-python an
    installer would have written beside it for python."""
    text = (ROOT / "bin" / "stunnel").read_text()
    directory = tmp_path / f"{prog}-on-{python.replace('/', '_')}"
    directory.mkdir()
    (directory / prog).write_text(text.replace("\nprog=stunnel\n", f"\nprog={prog}\n"))
    (directory / "stunnel3-python").write_text(f"#!{python}\n")
    return bytes(directory / prog)


def test_front_program_is_ours_only_on_our_python(tmp_path):
    python = sys.executable
    assert warm_worker.front_program(front(tmp_path, "makesock", python), {}, python) == b"makesock"
    other = front(tmp_path, "stunnel", "/bin/true")  # another interpreter: not this helper's
    assert warm_worker.front_program(other, {}, python) is None
    assert warm_worker.front_program(other, {b"STUNNEL3_PYTHON": python.encode()}, python)
    if sys.prefix != sys.base_prefix:  # a venv's python is its own, though a link to the same
        system = front(tmp_path, "fixcrio", os.path.realpath(python))
        assert warm_worker.front_program(system, {}, python) is None
    assert warm_worker.front_program(b"/bin/sh", {}, python) is None  # no front mark
    assert warm_worker.front_program(bytes(tmp_path / "none"), {}, python) is None


def fake_front(limits: dict, env=()) -> warm_worker.Front:
    made = warm_worker.Front(1, -1, -1, 9, b"stunnel", [b"stunnel"])
    made.limits, made.env = limits, list(env)
    return made


def test_soft_memory_limits_are_raised_as_the_front_raises_them():
    inf = resource.RLIM_INFINITY
    made = fake_front(
        {
            resource.RLIMIT_AS: (5_000_000, inf),
            resource.RLIMIT_DATA: (5_000_000, 60_000_000),
            resource.RLIMIT_STACK: (inf, inf),
        },  # fmt: skip
        [(b"STUNNEL3_MEMORY_FLOOR", b"80000000")],
    )
    assert warm_worker._raised(made, resource.RLIMIT_AS, 5_000_000, inf) == 80_000_000
    assert warm_worker._raised(made, resource.RLIMIT_DATA, 5_000_000, 60_000_000) == 60_000_000
    assert (
        warm_worker._raised(made, resource.RLIMIT_AS, 90_000_000, inf) == 90_000_000
    )  # never lowered
    assert warm_worker._raised(made, resource.RLIMIT_NOFILE, 10, 20) == 10  # not a memory limit
    assert warm_worker._original_soft_limits(made) == b"5000000:5000000:unlimited"


@pytest.mark.parametrize("hard, refused", [(80_000_000, False), (79_999_999, True)])
def test_a_hard_limit_below_the_floor_is_left_to_the_direct_path(hard, refused):
    made = fake_front(
        {resource.RLIMIT_AS: (5_000_000, hard), resource.RLIMIT_DATA: (5_000_000, hard)},
        [(b"STUNNEL3_MEMORY_FLOOR", b"80000000")],
    )
    if refused:
        with pytest.raises(warm_worker.Refused, match="below the memory floor"):
            warm_worker._check_floor(made)
    else:
        warm_worker._check_floor(made)


def test_signal_masks_from_proc():
    assert warm_worker._signals("0000000000000000") == set()
    assert warm_worker._signals("0000000000004002") == {signal.SIGINT, signal.SIGTERM}


def test_world_of_ourselves_is_ours():
    assert warm_worker.world(str(os.getpid())) == warm_worker.world()
    assert {"root", "ns/mnt", "Seccomp"} <= warm_worker.world().keys()


def in_child(body) -> bytes:
    """Run body() in a forked child; what it wrote to the pipe it gets as its one argument."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            body(write)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read()
    os.waitpid(child, 0)
    return said


def test_place_descriptors_leaves_exactly_the_asked_ones():
    def body(out: int) -> None:
        a, b = os.pipe()
        c = os.open("/dev/null", os.O_RDONLY)
        # a goes to 5, c to 0, b to a's own number: every collision at once
        control, spare = warm_worker.place_descriptors({5: a, 0: c, a: b}, [out, c])
        have = [fd for fd in warm_worker.open_descriptors() if fd not in (control, spare)]
        same_pipe = os.fstat(a).st_ino == os.fstat(5).st_ino
        zero, kept = (os.readlink(f"/proc/self/fd/{fd}") for fd in (0, spare))
        os.write(control, repr((have, a, zero, same_pipe, kept, spare > a)).encode())

    have, a, zero, same_pipe, kept, above = eval(in_child(body))  # noqa: S307 - our child's repr
    assert have == sorted({0, 5, a})
    assert zero == "/dev/null" and same_pipe
    assert kept == "/dev/null" and above  # a kept descriptor: moved out of the front's way


def test_reset_signals_is_a_fresh_python():
    def body(out: int) -> None:
        signal.signal(signal.SIGTERM, lambda *a: None)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        warm_worker.reset_signals({signal.SIGUSR1})
        seen = [
            signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
            signal.getsignal(signal.SIGHUP) == signal.SIG_DFL,
            signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN,
            signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN,
            signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        ]
        os.write(out, repr(seen).encode())

    assert in_child(body) == repr([True] * 5).encode()


def test_getfd_copies_a_childs_descriptor_and_says_why_not():
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - waits for us
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    pidfd = os.pidfd_open(child)
    try:
        copy = warm_worker.getfd(pidfd, read_end)
        assert os.fstat(copy).st_ino == os.fstat(read_end).st_ino
        assert os.get_inheritable(copy) is False
        os.close(copy)
        with pytest.raises(warm_worker.Refused, match="pidfd_getfd: Bad file descriptor"):
            warm_worker.getfd(pidfd, 1000)
    finally:
        os.close(write_end)
        os.close(read_end)
        os.waitpid(child, 0)
        os.close(pidfd)

"""Give the administrator's soft memory limits back to the programs we start.

The sh front in bin/ raised the soft AS, DATA and STACK limits so that Python
can run under `softlimit -m 5000000`, and left the originals in
STUNNEL3_RLIMITS as `as:data:stack`, each in bytes or `unlimited` (as
/proc/self/limits says them). Every program started by our code (makesock's PROG1 and
PROG2, fixcrio's program, stunnel's -l program) must run under the limits the
administrator chose, so `prepare_child()` restores them right before exec;
`reap_children()` collects them when they end, so none stays a zombie.

`spawn()` starts a program without forking this process: posix_spawn(2),
which glibc makes with vfork. A fork of a Python process copies its page
tables, write-protects every page it has written (each later write to one
faults again), and the child's exec tears the copy down: on a warm worker
~400 page faults and ~3 ms of CPU per connection. posix_spawn cannot set
limits, so when ours differ from the originals the program starts through
util-linux's prlimit(1), which sets them to the byte and execs it: one small
exec instead of that fork. Without prlimit the caller forks as before.
"""

import _signal as signal  # the C module: `signal` builds enums (~8 ms on every connection)
import errno
import os
import resource
import stat

ENV = "STUNNEL3_RLIMITS"
_ORDER = (resource.RLIMIT_AS, resource.RLIMIT_DATA, resource.RLIMIT_STACK)
PRLIMIT = "/usr/bin/prlimit"
_PRLIMIT_FLAGS = {resource.RLIMIT_AS: "--as", resource.RLIMIT_DATA: "--data",
                  resource.RLIMIT_STACK: "--stack"}  # fmt: skip


def original_soft_limits(environ=os.environ) -> dict[int, int]:
    """The soft limits the front found, by resource; empty if it left none."""
    fields = environ.get(ENV, "").split(":")
    if len(fields) != len(_ORDER):
        return {}
    limits = {}
    for limit, text in zip(_ORDER, fields, strict=True):
        if text == "unlimited":
            limits[limit] = resource.RLIM_INFINITY
        elif text.isdigit():
            limits[limit] = int(text)
    return limits


def raised_limits(environ=os.environ) -> list[str]:
    """What the front raised, for a debug log line: `AS 4882 KiB -> 97656 KiB`."""
    names = {resource.RLIMIT_AS: "AS", resource.RLIMIT_DATA: "DATA", resource.RLIMIT_STACK: "STACK"}
    said = []
    for limit, soft in original_soft_limits(environ).items():
        now = resource.getrlimit(limit)[0]
        if now != soft:
            said.append(
                f"soft {names[limit]} limit raised from {soft // 1024} KiB to {now // 1024} KiB"
            )
    return said


def child_environment(environ=os.environ) -> dict[str, str]:
    """The environment for a program we start: ours, less the front's variable."""
    env = dict(environ)
    env.pop(ENV, None)
    return env


def prepare_child(environ=os.environ) -> None:
    """Call in the child between fork and exec: limits and signals as before Python.

    Python ignores SIGPIPE and SIGXFSZ at start-up, and an exec keeps ignored
    signals ignored; qmail-smtpd must see them as tcpserver left them.
    """
    for limit, (soft, hard) in _originals(environ).items():
        resource.setrlimit(limit, (soft, hard))
    for signum in _PYTHON_IGNORES:
        signal.signal(signum, signal.SIG_DFL)


_PYTHON_IGNORES = (signal.SIGPIPE, signal.SIGXFSZ)


def _originals(environ) -> dict[int, tuple[int, int]]:
    """(soft, hard) to give a program: the front's soft limits, never above the hard."""
    found = {}
    for limit, soft in original_soft_limits(environ).items():
        hard = resource.getrlimit(limit)[1]
        if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
            soft = hard
        found[limit] = (soft, hard)
    return found


def lowered(environ=os.environ) -> dict[int, int]:
    """The soft limits ours differ from, by resource: the originals a program must get."""
    return {limit: soft for limit, (soft, _) in _originals(environ).items()
            if resource.getrlimit(limit)[0] != soft}  # fmt: skip


def spawn(path: bytes, args: list[bytes], environ: dict, file_actions: list) -> int | None:
    """Start path with args and environ as prepare_child and an exec would, but without
    forking (see the top): the child's pid. The exec's error is raised (OSError); None
    when limits must be given back and there is no prlimit: the caller forks instead."""
    words = [
        f"{_PRLIMIT_FLAGS[limit]}={'unlimited' if soft == resource.RLIM_INFINITY else soft}:"
        for limit, soft in lowered().items()
    ]
    if words:
        if not os.access(PRLIMIT, os.X_OK):
            return None
        _check_runnable(path)  # prlimit would find out only after we have let go
        args = [PRLIMIT.encode(), *(word.encode() for word in words), b"--", path, *args[1:]]
        path = PRLIMIT.encode()
    elif _missing(path):
        # What the spawn would say, without the spawn: the PATH search tries each
        # directory, and a spawn that fails costs a child all the same (~0.2 ms).
        raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    return os.posix_spawn(path, args, environ, file_actions=file_actions,
                          setsigdef=_PYTHON_IGNORES)  # fmt: skip


def _missing(path: bytes) -> bool:
    """Nothing at path (execve's ENOENT): any other answer is left to the exec to give."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        pass
    return False


def _check_runnable(path: bytes) -> None:
    """Raise what execve(path) would for a missing or unrunnable file (the common cases)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise OSError(error.errno, os.strerror(error.errno or 0)) from None
    if not stat.S_ISREG(mode) or not os.access(path, os.X_OK):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))


def reap_children() -> list[int]:
    """Collect every child that has ended, without waiting; the pids collected."""
    reaped: list[int] = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append(pid)

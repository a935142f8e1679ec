"""Give the administrator's soft memory limits back to the programs we start.

The sh front in bin/ raised the soft AS, DATA and STACK limits so that Python
can run under `softlimit -m 5000000`, and left the originals in
STUNNEL3_RLIMITS as `as:data:stack`, each in bytes or `unlimited` (as
/proc/self/limits says them). Every program started by our code (makesock's PROG1 and
PROG2, fixcrio's program, stunnel's -l program) must run under the limits the
administrator chose, so `prepare_child()` restores them right before exec;
`reap_children()` collects them when they end, so none stays a zombie.
"""

import _signal as signal  # the C module: `signal` builds enums (~8 ms on every connection)
import os
import resource

ENV = "STUNNEL3_RLIMITS"
_ORDER = (resource.RLIMIT_AS, resource.RLIMIT_DATA, resource.RLIMIT_STACK)


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
    for limit, soft in original_soft_limits(environ).items():
        hard = resource.getrlimit(limit)[1]
        if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
            soft = hard
        resource.setrlimit(limit, (soft, hard))
    for name in ("SIGPIPE", "SIGXFSZ"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)


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

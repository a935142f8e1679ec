"""A program a session started ends with the session: EOF, then SIGTERM, then SIGKILL.

When a session ends, the program on its plaintext side has been told: EOF on
its input, the descriptor closed. One that does not exit then (a backend that
hangs, or ignores its input's end) would outlive its session, re-parented to
init and uncounted by tcpserver. So the process that started it gives it
STUNNEL3_BACKEND_EXIT_TIMEOUT seconds (bounds.py, default 10) to exit, then
sends SIGTERM, gives it as long again, then sends SIGKILL:

- a -l or -L program: stunnel's own session does it (session.py); the
  program runs as stunnel does, so stunnel may signal it;
- makesock's PROG2 (qmail-smtpd after setuidgid): stunnel may not. It leaves
  root for its jail, and kill(2) lets no other account signal `qmaild`. So when
  makesock runs our stunnel in its own process, its forked child stays root,
  outside the jail, as a keeper (`keep`): it starts PROG2 as its own child and
  waits until either PROG2 exits (nothing to do) or the session ends: makesock's
  process closes the lifeline, a pipe only it writes to, once stunnel has
  returned and PROG2's descriptors are closed (its EOF). The keeper reads
  nothing from anyone; the lifeline's end is all it acts on. makesock's process
  then waits for the keeper, so tcpserver counts the connection until PROG2 is
  gone.

Every signal goes through a pidfd: a pid cannot be reused while we hold one,
so no signal can reach another process. Only light modules: makesock imports
this.
"""

import _signal
import os
import select

SIGNALS = ((_signal.SIGTERM, "SIGTERM"), (_signal.SIGKILL, "SIGKILL"))


def exited(pidfd: int, seconds: float) -> bool:
    """Wait up to `seconds` for the process behind pidfd to exit; whether it has."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0.0, seconds) * 1000))


def end(pidfd: int, grace: float, say) -> None:
    """The program behind pidfd has had its EOF: `grace` seconds to exit, then
    SIGTERM and `grace` more, then SIGKILL. say(signal's name) before each."""
    for signum, name in SIGNALS:
        if exited(pidfd, grace):
            return
        say(name)
        try:
            _signal.pidfd_send_signal(pidfd, signum)
        except ProcessLookupError:
            return
    exited(pidfd, grace)  # SIGKILL's work is the kernel's: this is only a bound


def keep(pid: int, pidfd: int, lifeline: int, grace: float, say) -> None:
    """The keeper: until the program exits or the lifeline closes; then end() it."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(lifeline, select.POLLIN)
    while True:
        ready = dict(poller.poll())
        if pidfd in ready:
            break
        if lifeline in ready:
            end(pidfd, grace, say)
            break
    try:
        os.waitpid(pid, os.WNOHANG)  # not blocking: a process stuck in the kernel is init's
    except ChildProcessError:
        pass

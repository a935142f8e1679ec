"""stunnel's signals: 3.22's signal_handler, and the reaper of the children it leaves.

- TERM, QUIT, INT and HUP (TERMINATING, 3.22's four) raise Terminated in the
  main thread wherever it is: the service logs `Received signal <n>;
  terminating` and exits 3 (service.py; a daemon stops its workers first,
  daemon.py). A second one while the first unwinds, and any one after the
  service returned (`exit_at_once`), ends the process at once with status 3:
  a traceback must never reach the log from a weakref callback or the
  interpreter's shutdown.
- SIGCHLD reaps what ended (limits.reap_children): PROG2, which makesock
  leaves as our child, and the -l programs. A program we start gets every
  one of these back at its default (session.py).
"""

import os
import signal

from stunnel3.support import limits

TERMINATING = (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGHUP)


class Terminated(Exception):
    """SIGTERM, SIGQUIT, SIGINT or SIGHUP arrived: the service exits with status 3."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def install() -> None:
    """The service's handlers, before anything of its start-up runs."""
    for number in TERMINATING:
        signal.signal(number, _terminate)
    signal.signal(signal.SIGCHLD, reap_children)


def exit_at_once() -> None:
    """From here a terminating signal ends the process without unwinding (status 3)."""
    for number in TERMINATING:
        signal.signal(number, _exit_by_signal)


def reap_children(signum=None, frame=None) -> None:
    """makesock leaves PROG2 as our child, and -l programs are ours: no zombies."""
    limits.reap_children()


def _terminate(signum, frame) -> None:
    # A second terminating signal (a process group's, and the warm front's relayed copy)
    # must not raise again wherever the first one's unwinding is.
    exit_at_once()
    raise Terminated(signum)


def _exit_by_signal(signum, frame) -> None:
    os._exit(3)

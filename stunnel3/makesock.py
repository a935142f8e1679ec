"""makesock: connect two programs with a socketpair (SPEC section 3).

    makesock [options] PROG1 [args] -makesock_connect_to PROG2 [args]

Processes and descriptors:

- makesock itself becomes PROG1 (exec, same pid; when PROG1 is our own
  stunnel, its main runs in this process instead: see runs_our_stunnel). So the process tcpserver
  started, counts and waits for is PROG1, the one holding the network socket
  on 0 and 1, and tcpserver gets PROG1's exit status. PROG1 keeps 0, 1 and 2
  and gets its end of the pair on descriptor FD (3 by default).
- PROG2 is a child with the other end on 0 and 1; it keeps 2. When our
  in-process stunnel can add fixcrio's CRs itself, a fixcrio in PROG2 is left
  out (without_fixcrio).
- Nothing we open leaks: the pair, and the gate pipe below, are close-on-exec
  until placed. Descriptors the caller passed in above 2 are passed on as is,
  as any chain-loader does (except FD, which PROG1's end replaces).
- The two ends are each held by one program only, so for stream and
  seqpacket pairs neither outlives the other's end: when PROG1 exits, PROG2
  reads EOF on its stdin; when PROG2 exits, PROG1 reads EOF on FD. (A dgram
  pair carries no EOF: with -t dgram the programs must agree on an end.)
- The gate: the child waits until PROG1's exec has succeeded (the gate's
  close-on-exec write end closes) before it runs PROG2. If PROG1 cannot be
  run, makesock says so and exits 111, and PROG2 never starts. If PROG2
  cannot be run, the child says so on fd 2 and exits 111; PROG1 is already
  running and reads EOF on FD, which stunnel takes as the end of the session.
  That status is PROG1's business: PROG2 is PROG1's child, not tcpserver's.
- When PROG1 is our stunnel in this process, the child stays (root, outside
  stunnel's jail) as PROG2's keeper, and PROG2 runs as its child: when the
  session ends, PROG2 gets EOF, and if it does not exit, SIGTERM and then
  SIGKILL (children.py). This process closes PROG2's descriptors and the
  lifeline after stunnel returns, then waits for the keeper. The keeper
  starts PROG2 with posix_spawn (spawn_second: a second fork of a Python
  process costs its page faults), else by a fork (run_second). In the warm
  helper's worker no keeper is forked: the helper keeps PROG2 (hand_over).

The original invocation (no options) is parsed by hand, and docopt-ng is
imported only when options are given: `python3 -X importtime` puts docopt
(with re, typing and enum) at ~23 ms, against ~3 ms for this whole module,
and makesock starts on every SMTP connection.
"""

import _signal  # the C module, as for _socket
import _socket  # the C module: `socket` imports enum and selectors, ~10 ms more
import os
import sys
from _collections_abc import Callable  # loaded by os already: collections.abc is not

from stunnel3 import unix
from stunnel3.support import fronts, proctitle

PROG = "makesock"
SEPARATOR = "-makesock_connect_to"
USAGE = (
    "makesock [ -d fd ] [ -s separator ] [ -t stream|seqpacket|dgram ]"
    " prog1 [ arg ... ] -makesock_connect_to prog2 [ arg ... ]"
)
HELP = """makesock: run two programs connected by a socketpair.

Usage:
  makesock [options] [--] PROG1 [ARG...]
  makesock (-h | --help)

The words after PROG1 are its arguments up to the separator word; the words
after the separator are PROG2 and its arguments. makesock becomes PROG1 (the
process that started makesock waits for PROG1) with one end of the pair on
descriptor FD, its own 0, 1 and 2 unchanged. PROG2 runs as a child with the
other end on its 0 and 1, and its own 2. When either program exits, the other
reads end-of-file on its end (stream and seqpacket).

Options:
  -d FD, --fd=FD              PROG1's descriptor for its end; 3 or more
                              [default: 3]
  -s WORD, --separator=WORD   the word between PROG1's and PROG2's words
                              [default: -makesock_connect_to]
  -t TYPE, --type=TYPE        the socket type: stream, seqpacket or dgram
                              [default: stream]
  -h, --help                  show this text

Exit status: PROG1's; 100 for a usage error, 111 when makesock cannot run
PROG1 (`makesock: fatal: unable to run X: ...` on stderr).
"""
SOCKET_TYPES = {
    "stream": _socket.SOCK_STREAM,
    "seqpacket": _socket.SOCK_SEQPACKET,
    "dgram": _socket.SOCK_DGRAM,
}


class Invocation:
    """What to run: PROG1's and PROG2's argv, PROG1's descriptor, the pair's type."""

    def __init__(self, first: list[str], second: list[str], fd: int, kind: int) -> None:
        self.first = first
        self.second = second
        self.fd = fd
        self.kind = kind


def split(words: list[str], separator: str) -> tuple[list[str], list[str]]:
    """PROG1's words and PROG2's words, around the first separator."""
    if separator not in words[1:]:
        unix.usage(PROG, USAGE)
    at = words.index(separator, 1)
    first, second = words[:at], words[at + 1 :]
    if not second:
        unix.usage(PROG, USAGE)
    return first, second


def parse(argv: list[str]) -> Invocation:
    """Read makesock's command line; usage errors exit 100, -h exits 0."""
    words = argv[1:]
    if words and not words[0].startswith("-"):
        first, second = split(words, SEPARATOR)
        return Invocation(first, second, 3, _socket.SOCK_STREAM)
    import docopt  # only here: see the module's docstring for its cost

    try:
        # help=False, options_first=True, positional: docopt-ng and docopt 0.6 name them apart
        args = docopt.docopt(HELP, words, False, None, True)
    except docopt.DocoptExit:
        unix.usage(PROG, USAGE)
    if args["--help"]:
        os.write(1, HELP.encode())
        raise SystemExit(0)
    fd, kind = args["--fd"], args["--type"]
    if not (fd.isdigit() and fd.isascii() and int(fd) >= 3) or kind not in SOCKET_TYPES:
        unix.usage(PROG, USAGE)
    first, second = split([args["PROG1"], *args["ARG"]], args["--separator"])
    return Invocation(first, second, int(fd), SOCKET_TYPES[kind])


def make_pair(invocation: Invocation) -> int:
    """Make the pair, PROG1's end already on its descriptor; return PROG2's end."""
    first, second = _socket.socketpair(_socket.AF_UNIX, invocation.kind)
    first_fd, second_fd = first.detach(), second.detach()
    if second_fd == invocation.fd:  # FD was free and the kernel chose it
        second_fd, old = os.dup(second_fd), second_fd
        os.close(old)
    unix.move_fd(first_fd, invocation.fd)
    return second_fd


def run_second(argv: list[str], name: str, fd: int, end: int, gate: int) -> None:
    """The child: wait for PROG1's exec, then become PROG2 (argv) on end."""
    os.close(fd)
    if os.read(gate, 1):
        os._exit(0)  # PROG1 could not run and said so: PROG2 must not run alone
    os.close(gate)
    for target in (0, 1):
        if end == target:  # the caller had closed 0 or 1
            os.set_inheritable(target, True)
        else:
            os.dup2(end, target)
    if end > 1:
        os.close(end)
    unix.fatal(name, "run " + argv[0], unix.exec_program(argv), True)


def spawn_second(argv: list[str], name: str, fd: int, end: int, gate: int) -> int | None:
    """The keeper's PROG2, started without a fork of this Python (limits.spawn: a fork
    costs page faults) once PROG1 may run (the gate, as run_second waits for it): its
    pid. An exec error is said on fd 2 as run_second says it, and the keeper leaves
    (PROG1 reads EOF on FD). None: fork and run_second (0 or 1 closed by our caller,
    or limits to give back and no prlimit)."""
    if end <= 1:
        return None
    if os.read(gate, 1):
        os._exit(0)  # PROG1 could not run and said so: PROG2 must not run alone
    started = unix.spawn_program(argv, _second_actions(fd, end))
    if isinstance(started, OSError):
        unix.say(name, unix.fatal_text("run " + argv[0], started))
        os._exit(111)
    if started is not None:
        os.close(gate)
    return started


# The warm helper's worker (warm/helper.py) gives main one: PROG2's pid, pidfd and name go to
# the helper, which keeps PROG2; the lifeline to close when the session ends comes back.
HandOver = Callable[[int, int, str], int]


def hand_second_over(invocation: Invocation, argv: list[str], name: str, end: int,
                     elided: bool, hand_over: HandOver) -> int:  # fmt: skip
    """The warm path (main's hand_over): stunnel runs in this process, which the helper
    forked, and the helper keeps PROG2 (root, outside every jail, and it outlives its
    sessions): no keeper is forked. PROG2 is started from here at once (nothing waits
    for an exec), its pidfd goes to hand_over while it is surely unreaped (our child;
    we never wait for it), and after stunnel returns end_session closes PROG2's
    descriptors and the lifeline hand_over returned (the helper's signal: grace, TERM,
    KILL, as the keeper's), then waits until PROG2 has gone, the status after it."""
    pid = _start_second(argv, name, invocation.fd, end)
    os.close(end)
    lifeline, pidfd = -1, None
    if pid is not None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pass  # our caller ignores SIGCHLD: PROG2 has gone already
        else:
            lifeline = hand_over(pid, pidfd, argv[0])
    stunnel_argv = ["stunnel", *invocation.first[1:]]
    proctitle.set_title(stunnel_argv)
    from stunnel3 import stunnel

    status = stunnel.main(stunnel_argv, invocation.fd if elided else None)
    end_session(invocation.fd, lifeline, pidfd)
    return status


def _start_second(argv: list[str], name: str, fd: int, end: int) -> int | None:
    """PROG2 started from this process (spawned; forked where it cannot be): its pid, or
    None when it cannot run (said on fd 2 as run_second says it: stunnel reads EOF)."""
    if end > 1:
        started = unix.spawn_program(argv, _second_actions(fd, end))
        if isinstance(started, OSError):
            unix.say(name, unix.fatal_text("run " + argv[0], started))
            return None
        if started is not None:
            return started
    gate, opened = os.pipe()
    os.close(opened)  # PROG1 runs here: the gate is open
    pid = os.fork()
    if pid == 0:
        try:
            run_second(argv, name, fd, end, gate)
        finally:
            os._exit(111)
    os.close(gate)
    return pid


def _second_actions(fd: int, end: int) -> list:
    return [(os.POSIX_SPAWN_DUP2, end, 0), (os.POSIX_SPAWN_DUP2, end, 1),
            (os.POSIX_SPAWN_CLOSE, end), (os.POSIX_SPAWN_CLOSE, fd)]  # fmt: skip


def warning(name: str, pid: int, grace: float, signal_name: str) -> bytes:
    """The line said when PROG2 has not exited in time, before signal_name is sent."""
    after = "its session ended" if signal_name == "SIGTERM" else "SIGTERM"
    line = f"{PROG}: warning: {name} (pid {pid}) did not exit {grace:g} s after {after}: "
    return (line + f"sent {signal_name}\n").encode(errors="replace")


def keep_second(argv: list[str], name: str, fd: int, end: int, gate: int, lifeline: int) -> None:
    """The child, when PROG1 is our stunnel here: start PROG2, then keep it (children.py)."""
    from stunnel3.engine import bounds, children

    pid = spawn_second(argv, name, fd, end, gate)
    if pid is None:
        pid = os.fork()
        if pid == 0:
            os.close(lifeline)
            run_second(argv, name, fd, end, gate)
    try:
        pidfd = os.pidfd_open(pid)  # PROG2 is our child: not reaped before this ...
    except OSError:
        os._exit(0)  # ... unless our caller ignores SIGCHLD: then it is gone already
    for number in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGQUIT):
        _signal.signal(number, _signal.SIG_IGN)  # a process group's signal: PROG2 got it too
    _close_all_but(2, lifeline, pidfd)  # the client's socket, the pair: theirs, not ours
    grace = bounds.backend_exit()

    def say(signal_name: str) -> None:
        try:
            os.write(2, warning(argv[0], pid, grace, signal_name))
        except OSError:
            pass

    children.keep(pid, pidfd, lifeline, grace, say)
    os._exit(0)


def _close_all_but(*keep: int) -> None:
    start = 0
    for fd in sorted(keep):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, os.sysconf("SC_OPEN_MAX"))


def end_session(fd: int, lifeline: int, keeper: int | None) -> None:
    """After our stunnel returned: EOF for PROG2 (and the client), the lifeline closed
    (the keeper's signal), then the keeper's end, so that tcpserver, which waits for
    this process, counts the connection until PROG2 has gone (children.py)."""
    from stunnel3.engine import bounds, children

    for number in (0, 1, fd, lifeline):
        try:
            os.close(number)
        except OSError:
            pass
    if keeper is not None:
        children.exited(keeper, 2 * bounds.backend_exit() + 5)


def runs_our_stunnel(name: str) -> bool:
    """Would exec'ing name start our own stunnel front with this very Python?

    Then makesock runs stunnel's main in this process instead: the same code
    under the same limits, environment and descriptors, one interpreter start
    (~15 ms of CPU) less on every connection. STUNNEL3_MAKESOCK_EXEC=1 always
    execs.
    """
    if os.environ.get("STUNNEL3_MAKESOCK_EXEC") == "1":
        return False
    python = _front_python(_first_runnable(name), b"stunnel")
    return python is not None and fronts.interpreter(python) == fronts.interpreter(sys.executable)


def without_fixcrio(invocation: Invocation) -> tuple[list[str], str] | None:
    """PROG2's words without its fixcrio, and the name its exec errors go under; or None.

    The users' chain ends in `setuidgid qmaild fixcrio qmail-smtpd`. fixcrio's
    one job is a CR before each LF that has none, both ways between stunnel
    and qmail-smtpd; it costs a Python start (~20 ms of CPU) and a pump
    process on every connection. When PROG1 is our stunnel running in this
    process (runs_our_stunnel) and serving the pair as -F FD, its relay adds
    the same CRs to what it writes to FD and reads from it, and PROG2 runs as
    `setuidgid qmaild qmail-smtpd`: each side gets the bytes it would have got
    through fixcrio. The contract, both ends of it declared: our fixcrio is the
    file whose front says so (FRONT_MARK and `prog=fixcrio`, fronts.py);
    stunnel says whether its arguments serve FD (stunnel.serves_plaintext_fd);
    and FD goes to stunnel.main as an argument (its fixcrio_fd: the call is in
    this process, so nothing passes through the environment), from which the
    relay gets fixcrio's rule (line_ends.FixcrioRule).
    Only when all of this holds; else PROG2 runs as written:
    - a stream pair (on seqpacket or dgram, fixcrio would see messages);
    - PROG2 is `fixcrio PROG ...` or `setuidgid ACCOUNT fixcrio PROG ...`;
    - exec would find stunnel3's own fixcrio front (not some other program
      named fixcrio); after setuidgid, one that others may run, Python too;
    - PROG is an executable file (else fixcrio's own error line is kept);
    - stunnel serves FD (-F FD as C getopt reads it, without -d, -h, -V).
    """
    second = invocation.second
    at = 2 if os.path.basename(second[0]) == "setuidgid" else 0
    if invocation.kind != _socket.SOCK_STREAM or len(second) < at + 2:
        return None
    front = _first_runnable(second[at])
    python = _front_python(front, b"fixcrio") if front is not None else None
    if front is None or python is None or _first_runnable(second[at + 1]) is None:
        return None
    if at and not _others_may_start(front, python):
        return None
    from stunnel3 import stunnel

    if not stunnel.serves_plaintext_fd(invocation.first[1:], invocation.fd):
        return None
    return second[:at] + second[at + 1 :], second[0] if at else "fixcrio"


def _others_may_run(path: bytes) -> bool:
    """Whether any account may exec path: it and every directory above it are o+x."""
    path = os.path.abspath(path)
    while True:
        if not os.stat(path).st_mode & 0o001:
            return False
        if path == b"/":
            return True
        path = os.path.dirname(path)


def _others_may_start(front: bytes, python: str) -> bool:
    """Whether any account may run the fixcrio front at front on python: the front, the
    interpreter (as named, and where its links lead) and the stunnel3-python it reads."""
    named = os.fsencode(python)
    if not all(map(_others_may_run, (front, named, os.path.realpath(named)))):
        return False
    if os.environb.get(fronts.PYTHON_ENV):
        return True
    try:  # beside the front, whose directories _others_may_run has checked
        return bool(os.stat(os.path.join(os.path.dirname(front), fronts.RECORD)).st_mode & 0o004)
    except OSError:
        return False  # through a link: let the real fixcrio run, as written


def _first_runnable(name: str) -> bytes | None:
    """The file exec'ing name would run (djb's PATH search), if there is one."""
    for candidate in unix.candidates(name, os.environ):
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _front_python(path: bytes | None, prog: bytes) -> str | None:
    """The interpreter our bin/ front for prog at path would start, if it is one and runs."""
    if path is None or fronts.program(path) != prog:
        return None
    python = fronts.python(path, os.environb)
    if python is None or not os.access(python, os.X_OK):
        return None
    return os.fsdecode(python)


def main(argv: list[str], hand_over: HandOver | None = None) -> int:
    invocation = parse(argv)
    ours = runs_our_stunnel(invocation.first[0])
    elided = without_fixcrio(invocation) if ours else None
    second, name = elided or (invocation.second, PROG)
    try:
        second_end = make_pair(invocation)
    except OSError as error:
        unix.fatal(PROG, "create socket pair", error)
    if ours and hand_over is not None:
        return hand_second_over(invocation, second, name, second_end, elided is not None,
                                hand_over)  # fmt: skip
    try:
        gate_read, gate_write = os.pipe()
        lifeline = os.pipe() if ours else None  # see keep_second
        pid = os.fork()
    except OSError as error:
        unix.fatal(PROG, "fork", error)
    if pid == 0:
        try:
            os.close(gate_write)
            if lifeline is None:
                run_second(second, name, invocation.fd, second_end, gate_read)
            else:
                os.close(lifeline[1])
                keep_second(second, name, invocation.fd, second_end, gate_read, lifeline[0])
        finally:
            os._exit(111)
    os.close(second_end)
    os.close(gate_read)
    if lifeline is not None:  # ours: stunnel runs in this process
        try:
            keeper: int | None = os.pidfd_open(pid)
        except OSError:
            keeper = None  # SIGCHLD ignored by our caller: the keeper is reaped at once
        os.close(lifeline[0])
        argv = ["stunnel", *invocation.first[1:]]
        proctitle.set_title(argv)  # what ps shows after an exec of stunnel, before PROG2 runs
        os.close(gate_write)  # as a successful exec would: PROG2 may run
        from stunnel3 import stunnel

        status = stunnel.main(argv, invocation.fd if elided else None)  # see without_fixcrio
        end_session(invocation.fd, lifeline[1], keeper)
        return status
    failure = unix.exec_program(invocation.first)
    try:
        os.write(gate_write, b"!")
    except OSError:
        pass  # the child is gone already; nothing will run PROG2
    unix.fatal(PROG, "run " + invocation.first[0], failure)
    return unix.FATAL


if __name__ == "__main__":
    sys.exit(main(sys.argv))

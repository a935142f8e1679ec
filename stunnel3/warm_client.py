"""The thin side of the warm helper: hand this process over to stunnel3-warm.

`stunnel` runs per connection; most of its cost is importing OpenSSL and our
modules. When an administrator runs stunnel3-warm (warm.py, docs/warm.md), this
module sends everything that makes this process what it is to the helper, which
forks a worker that becomes it and runs the same code the direct path runs.
Here we only wait for the worker's status and exit with it.

Rules of this file:
- Import only C-level modules (_socket, _signal, resource: about nothing); the
  socket and signal wrappers cost ~15 ms for their enums. No dataclasses.
- Any doubt before the worker is committed means None: the caller runs the
  direct path as if the helper did not exist (no socket, refused, too big,
  the helper gone or slow). Nothing has been done to the connection yet.
- The exchange (SOCK_SEQPACKET, one message each; the helper forks a worker
  for the connection, and the worker itself does the talking until GO):
      client -> worker  the request, all our descriptors attached (SCM_RIGHTS)
      worker -> client  READY <pid> with a pidfd of itself attached (the worker
                        is set up and waits), or NO
      client -> worker  GO
      worker -> client  RUN: from now on the worker owns the connection
      helper -> client  X<status> (exit) or K<signum> (killed by a signal)
  Signals we receive after GO go to the worker through its pidfd
  (pidfd_send_signal): a pidfd names that one process even once its pid is
  free again, which a pid taken from READY would not if the worker had died.
  GO makes the handoff race-free: a client that timed out waiting for READY
  closes the socket instead, and the worker, which has run nothing, exits.
  RUN closes the other side: a worker that waited for GO in vain (the client
  stalled past its timeout) has exited having run nothing, and we get its
  X0 instead of RUN and run the direct path: no connection is lost.
- After RUN we close every descriptor we handed over (but stderr, for our own
  last words): a socket or pipe must reach EOF when the worker closes it.
"""

import _signal
import _socket
import os
import resource
import sys

DEFAULT_SOCKET = "/run/stunnel3/warm.sock"
SOCKET_ENV = "STUNNEL3_WARM_SOCKET"
SWITCH_ENV = "STUNNEL3_WARM"  # "0": never hand over
MAGIC = b"STUNNEL3-WARM/2"  # /2: one process per connection, signals by pidfd
MAX_REQUEST = 128 * 1024  # under the kernel's default socket buffer (208 KiB)
MAX_FDS = 252  # SCM_MAX_FD is 253: ours, then the cwd
HANDSHAKE_TIMEOUT = 10.0  # seconds for READY: a stuck helper costs one wait, not the session
FD_SIZE = 4
READY, REFUSED, GO, RUNNING = b"READY", b"NO", b"GO", b"RUN"
# Signals we pass on to the worker (when not ignored): those that end a process.
FORWARDED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM")


def hand_over(argv: list[str]) -> int | None:
    """The worker's exit status, or None when the direct path must run."""
    environ = os.environ
    if environ.get(SWITCH_ENV) == "0":
        return None
    fds = open_descriptors()
    if len(fds) > MAX_FDS:
        return None
    try:
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    forwarded = [getattr(_signal, name) for name in FORWARDED]
    try:
        request = encode_request(argv, fds)  # our signal mask as it was, in the request
        if len(request) > MAX_REQUEST:
            return None
        # A signal from here to GO is held, then relayed, or (no handoff) met as usual.
        mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, forwarded)
        try:
            sock = _connect(environ.get(SOCKET_ENV) or DEFAULT_SOCKET, request, fds + [cwd])
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
    finally:
        os.close(cwd)
    if sock is None:
        return None
    for fd in fds:
        if fd != 2:
            _close(fd)
    return _await_status(*sock)


def _connect(path: str, request: bytes, fds: list[int]):
    """Send the request; (socket, worker's pidfd) once the worker runs (RUN received)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    pidfd = None
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        sock.connect(path)
        rights = b"".join(fd.to_bytes(FD_SIZE, sys.byteorder) for fd in fds)
        sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        pidfd = _ready(sock)
        if pidfd is None:
            sock.close()
            return None
        sock.settimeout(None)
        _relay_signals(pidfd)  # installed while they are held: none is lost or early
        sock.send(GO)
        if sock.recv(64) != RUNNING:  # X0: it gave up waiting for GO, having run nothing
            raise OSError("the worker did not run")
    except OSError:  # no helper, not allowed, gone, or slow: the direct path
        _restore_signals()
        sock.close()
        if pidfd is not None:
            _close(pidfd)
        return None
    return sock, pidfd


def _ready(sock):
    """The worker's pidfd if it said READY <pid> with exactly that one descriptor, else None."""
    message, ancillary, flags, _ = sock.recvmsg(
        64, _socket.CMSG_SPACE(2 * FD_SIZE), _socket.MSG_CMSG_CLOEXEC
    )
    fds = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % FD_SIZE
            fds += [
                int.from_bytes(payload[i : i + FD_SIZE], sys.byteorder)
                for i in range(0, usable, FD_SIZE)
            ]
    word, _, pid = message.partition(b" ")
    if word == READY and pid.isdigit() and len(fds) == 1 and not flags & _socket.MSG_CTRUNC:
        return fds[0]
    for fd in fds:
        _close(fd)
    return None


def open_descriptors() -> list[int]:
    """Every descriptor open in this process, by number."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            os.fstat(fd)  # the directory listing's own descriptor is closed by now
        except OSError:
            continue
        found.append(fd)
    return sorted(found)


def encode_request(argv: list[str], fds: list[int]) -> bytes:
    """NUL-terminated fields: MAGIC, then sections `name count item...` (warm.decode_request)."""
    mask = old = os.umask(0o22)
    os.umask(old)
    ignored = [s for s in _signal.valid_signals() if _signal.getsignal(s) == _signal.SIG_IGN]
    sections = [
        (b"fds", [b"%d" % fd for fd in fds]),
        (b"argv", [os.fsencode(arg) for arg in argv]),
        (b"env", [key + b"=" + value for key, value in os.environb.items()]),
        (b"umask", [b"%d" % mask]),
        (b"rlimits", [b"%d %d %d" % (r, *resource.getrlimit(r)) for r in _rlimits()]),
        (b"ignored", [b"%d" % s for s in ignored]),
        (b"blocked", [b"%d" % s for s in _signal.pthread_sigmask(_signal.SIG_BLOCK, [])]),
        (b"uids", [b"%d" % i for i in os.getresuid()]),
        (b"gids", [b"%d" % i for i in os.getresgid()]),
        (b"groups", [b"%d" % g for g in os.getgroups()]),
    ]
    fields = [MAGIC]
    for name, items in sections:
        fields += [name, b"%d" % len(items), *items]
    return b"\0".join(fields) + b"\0"


def _rlimits() -> list[int]:
    return [getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")]


_saved: dict[int, object] = {}


def _relay_signals(pidfd: int) -> None:
    """Each terminating signal we get goes to the worker instead (root may signal it
    after its setuid, as kill(2) may; a worker of the helper's own uid keeps ours)."""

    def forward(signum, frame):
        try:
            _signal.pidfd_send_signal(pidfd, signum)
        except OSError:
            pass  # it has ended: its status is on its way

    for name in FORWARDED:
        signum = getattr(_signal, name)
        if _signal.getsignal(signum) != _signal.SIG_IGN:
            _saved[signum] = _signal.signal(signum, forward)


def _restore_signals() -> None:
    for signum, handler in _saved.items():
        _signal.signal(signum, handler)
    _saved.clear()


def _await_status(sock, pidfd: int) -> int:
    """Wait for the worker's status, reaping our own children; then leave as it did."""
    _signal.signal(_signal.SIGCHLD, _reap)  # makesock's PROG2 is our child, as before
    try:
        reply = sock.recv(64)
    except OSError:
        reply = b""
    if reply[:1] == b"X" and reply[1:].isdigit():
        return int(reply[1:])
    if reply[:1] == b"K" and reply[1:].isdigit():
        return _die_like(int(reply[1:]))
    # The helper died (killed, crashed): the worker may still be serving. Leave with it,
    # not before, so that tcpserver still counts the connection while it lasts.
    import select  # a C module, and only on this path

    select.select([pidfd], [], [])
    _say(b"stunnel: the warm helper ended the session without a status\n")
    return 1


def _die_like(signum: int) -> int:
    """The worker was killed by a signal: so are we, so that tcpserver sees the same."""
    try:
        _signal.signal(signum, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
    except (OSError, ValueError):
        pass
    return 3  # a signal whose default is not to end a process: 3.22's "signal" status


def _reap(signum, frame) -> None:
    # limits.reap_children() does the same, but importing it costs this thin
    # client a module load (~0.2 ms) on every connection: kept here on purpose.
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _say(text: bytes) -> None:
    try:
        os.write(2, text)
    except OSError:
        pass

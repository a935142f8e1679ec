"""stunnel3-warm: a resident helper that takes OpenSSL's import off every connection.

    stunnel3-warm [ -s socket ] [ -c limit ]

It imports, once, everything a `stunnel` session needs (and warms OpenSSL up:
tls_warmup.py), then listens on a Unix socket (SOCK_SEQPACKET; default
/run/stunnel3/warm.sock, or STUNNEL3_WARM_SOCKET; its directory 0700, the
socket 0600, both ours). Each `stunnel` started by the users' chain
(warm_client.py) hands itself over; see docs/warm.md.

One process per connection to the socket:

    helper (root, resident) --fork--> worker: reads the request, becomes
       |  waits for it (pidfd),                the client, READY, waits for GO,
       |  sends its end: X<status>/K<sig>      runs stunnel.run()
    thin client <====== SEQPACKET ======> (the same connection)

- The helper checks the peer's uid (SO_PEERCRED: 0 or our own) and forks the
  worker; it never reads from a connection, so no peer can make it wait or
  crash. It polls the listener, each worker's pidfd and each connection (for a
  hang-up only). A worker's end: waitpid, X<status> or K<signal> to its client.
  A client's hang-up: SIGTERM to its worker (3.22's end on SIGTERM).
- The worker reads the request (size, descriptors and time bounded), checks it
  (warm_worker.check_peer), becomes the client, says READY <pid> with a pidfd
  of itself, and runs stunnel only after GO (warm_client.py has the exchange).
- SIGTERM (or SIGINT): the socket is closed and removed at once, and the
  helper leaves when its last worker has ended: it alone can tell each client
  its worker's status (tcpserver must see what the session ended with).
- Anything wrong is one log line on stderr and NO (or a closed socket): the
  client then runs the direct path, so a refusal never costs a connection.
"""

import errno
import gc
import os
import select
import signal
import socket
import stat
import struct
import sys
import time

from stunnel3 import unix, warm_client, warm_worker
from stunnel3.warm_client import GO, HANDSHAKE_TIMEOUT, READY, REFUSED, RUNNING

PROG = "stunnel3-warm"
USAGE = "stunnel3-warm [ -s socket ] [ -c limit ]"
DEFAULT_LIMIT = 400  # workers at once; over it, clients run the direct path
HELP = f"""stunnel3-warm: load stunnel3 and OpenSSL once; serve each stunnel's session
from a process forked from here (stunnel3-warm(8), docs/warm.md).

usage: {USAGE}

  -s socket   the Unix socket to listen on (default: ${warm_client.SOCKET_ENV},
              else {warm_client.DEFAULT_SOCKET})
  -c limit    sessions served at once; over it, stunnel serves its own
              (default: {DEFAULT_LIMIT})
  -h, --help  show this text
"""
REQUEST_TIMEOUT = 5.0
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_log_fd: int | None = 2  # the helper's stderr; a worker keeps it aside, then drops it


def main(argv: list[str]) -> int:
    path, limit = _parse(argv[1:])
    _preload()
    listener, inode = _listen(path)
    say(f"info: listening on {path} (pid {os.getpid()})")
    helper = Helper(listener, limit)
    gc.freeze()  # the imported world stays shared with every fork, not copied
    try:
        while not helper.stopping:
            helper.turn()
    finally:
        helper.close_listener()
        _remove(path, inode)
    if helper.workers:
        say(f"info: stopping once {len(helper.workers)} sessions have ended")
    while helper.workers:
        helper.turn()
    say("info: stopped")
    return 0


def _parse(args: list[str]) -> tuple[str, int]:
    path = os.environ.get(warm_client.SOCKET_ENV) or warm_client.DEFAULT_SOCKET
    limit = DEFAULT_LIMIT
    while args:
        if args[0] in ("-h", "--help"):
            os.write(1, HELP.encode())
            raise SystemExit(0)
        if args[0] in ("-s", "-c") and len(args) > 1:
            if args[0] == "-s":
                path = args[1]
            elif args[1].isdigit() and int(args[1]) > 0:
                limit = int(args[1])
            else:
                unix.usage(PROG, USAGE)
            args = args[2:]
        else:
            unix.usage(PROG, USAGE)
    return path, limit


def _preload() -> None:
    """Everything a session imports, direct path or not: the stdlib and OpenSSL pieces
    service._load_modules names, and every module of ours (new protocols included)."""
    import encodings.idna  # noqa: F401
    import importlib
    import pkgutil
    import syslog  # noqa: F401
    import termios  # noqa: F401

    from cryptography import x509  # noqa: F401
    from OpenSSL import SSL  # noqa: F401

    import stunnel3

    for module in pkgutil.iter_modules(stunnel3.__path__):
        if module.name != "setup_service":  # an administrator's tool, not a session's
            try:
                importlib.import_module(f"stunnel3.{module.name}")
            except Exception as error:  # noqa: BLE001 - the worker meets it as stunnel would
                say(f"warning: unable to load stunnel3.{module.name}: {error}")
    from stunnel3 import tls_warmup

    tls_warmup.warm_up(lambda text: say(f"warning: {text}"))  # OpenSSL's first-use work, shared


def _listen(path: str) -> tuple[socket.socket, int]:
    """The socket, 0600 in a directory of ours that no one else may write to."""
    directory = os.path.dirname(path) or "."
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as error:
        unix.fatal(PROG, f"create {directory}", error)
    info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        unix.die(PROG, 111, f"unable to use {directory}: not a directory of ours, closed to others")
    _remove_stale(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = os.umask(0o177)
    try:
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(128)
    except OSError as error:
        unix.fatal(PROG, f"listen on {path}", error)
    finally:
        os.umask(old)
    return listener, os.stat(path).st_ino


def _remove_stale(path: str) -> None:
    """A socket left by a helper that died; never another file, never a live helper."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        unix.die(PROG, 111, f"unable to listen on {path}: not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        unix.die(PROG, 111, f"unable to listen on {path}: a helper is running there")
    finally:
        probe.close()


def _remove(path: str, inode: int) -> None:
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


class Helper:
    """The listener, the live workers and one poll set over them all."""

    def __init__(self, listener: socket.socket, limit: int):
        self.listener: socket.socket | None = listener
        self.limit = limit
        self.stopping = False
        self.workers: dict[int, tuple[int, socket.socket | None]] = {}  # pidfd: (pid, conn)
        self.conns: dict[int, int] = {}  # a connection's fd: its worker's pidfd
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)  # a signal makes poll return: the pipe is in it
        for signum in _STOP_SIGNALS:
            signal.signal(signum, lambda signum, frame: None)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nothing to reload: imports are code
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # never SIG_IGN: we want the statuses
        self.poller = select.poll()
        self.poller.register(self.wake_r, select.POLLIN)
        self.poller.register(listener, select.POLLIN)

    def turn(self) -> None:
        for fd, _ in self.poller.poll():
            if fd == self.wake_r:
                self._signals()
            elif self.listener is not None and fd == self.listener.fileno():
                self._accept()
            elif fd in self.workers:
                self._ended(fd)
            elif fd in self.conns:
                self._hung_up(fd)

    def close_listener(self) -> None:
        if self.listener is not None:
            self.poller.unregister(self.listener)
            self.listener.close()
            self.listener = None

    def _signals(self) -> None:
        try:
            got = os.read(self.wake_r, 64)
        except BlockingIOError:
            return
        if _STOP_SIGNALS & set(got):
            self.stopping = True

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError as error:  # EMFILE and the like: say it, breathe, go on
            say(f"warning: unable to accept: {unix.error_text(error.errno)}")
            time.sleep(0.1)
            return
        try:
            self._start_worker(conn)
        except OSError as error:
            conn.close()
            say(f"warning: unable to start a worker: {unix.error_text(error.errno)}")

    def _start_worker(self, conn: socket.socket) -> None:
        peer = _CREDENTIALS.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
        )
        pid, uid, _ = peer
        if uid not in (0, os.geteuid()):
            conn.close()
            say(f"warning: refused pid {pid} uid {uid}: only root and uid {os.geteuid()} may")
            return
        if len(self.workers) >= self.limit:
            conn.close()
            say(f"warning: refused pid {pid}: {self.limit} sessions already")
            return
        # Until the child has dropped our handlers and wake-up pipe, no signal may reach them.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            _flush()
            worker = os.fork()
            if worker == 0:
                self._become_worker(conn, peer)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        try:
            pidfd = os.pidfd_open(worker)
        except OSError:
            os.kill(worker, signal.SIGKILL)  # untracked, it could not be reported: never run it
            os.waitpid(worker, 0)
            raise
        self.workers[pidfd] = (worker, conn)
        self.conns[conn.fileno()] = pidfd
        self.poller.register(pidfd, select.POLLIN)
        self.poller.register(conn, 0)  # a hang-up only: the worker does the reading

    def _ended(self, pidfd: int) -> None:
        """A worker ended: tell its client how (the client may be gone: no matter)."""
        pid, conn = self.workers.pop(pidfd)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        if conn is not None:
            del self.conns[conn.fileno()]
            self.poller.unregister(conn)
            code = os.waitstatus_to_exitcode(status)
            _send(conn, b"X%d" % code if code >= 0 else b"K%d" % -code)
            conn.close()

    def _hung_up(self, fd: int) -> None:
        """The client is gone (SIGKILL, or it gave up before GO): so is its session."""
        pidfd = self.conns.pop(fd)
        pid, conn = self.workers[pidfd]
        self.poller.unregister(fd)
        if conn is not None:
            conn.close()
        self.workers[pidfd] = (pid, None)
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _become_worker(self, conn: socket.socket, peer: tuple[int, int, int]) -> None:
        """In the forked child: drop the helper's part, serve; never returns."""
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in _STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
            os.close(self.wake_r)
            os.close(self.wake_w)
            if self.listener is not None:
                self.listener.close()
            for pidfd, (_, other) in self.workers.items():
                os.close(pidfd)
                if other is not None:
                    other.close()
            status = _worker(conn, peer)
        except BaseException as error:  # noqa: BLE001 - a peer must never see us crash
            say(f"warning: worker for pid {peer[0]}: {type(error).__name__}: {error}")
        finally:
            _flush()
            os._exit(status & 0xFF)


# -- a worker ----------------------------------------------------------------------


def _worker(conn: socket.socket, peer: tuple[int, int, int]) -> int:
    """Read and check the request, become the client, READY, GO, run stunnel: its status."""
    global _log_fd
    pid, uid, gid = peer
    conn.settimeout(REQUEST_TIMEOUT)
    data, received = warm_worker.receive_request(conn)
    try:
        request = warm_worker.decode_request(data, len(received))
        warm_worker.check_peer(request, uid, gid, pid)
    except warm_worker.BadRequest as error:
        _close_all(received)
        say(f"warning: refused request from pid {pid}: {error}")
        _send(conn, REFUSED)
        return 0
    warm_worker.reset_signals(request.ignored)
    control, _log_fd = warm_worker.enter(request, received, [conn.detach(), os.dup(2)])
    try:
        warm_worker.become(request)
    except (OSError, ValueError) as error:
        say(f"warning: cannot become the client: {error}")
        os.write(control, REFUSED)
        return 1
    if not _ready(control):
        return 0  # no GO: it has run nothing, and the client runs the direct path
    from stunnel3 import log, stunnel

    log.show_pid(pid)  # administrators match log lines to tcpserver's "pid N"
    status = stunnel.run([os.fsdecode(arg) for arg in request.argv])
    _flush()
    return status


def _ready(control: int) -> bool:
    """READY <pid> with our pidfd, then wait for GO; both descriptors closed either way."""
    global _log_fd
    pidfd = os.pidfd_open(os.getpid())
    sock = socket.socket(fileno=control)
    try:
        socket.send_fds(sock, [READY + b" %d" % os.getpid()], [pidfd])
        sock.settimeout(HANDSHAKE_TIMEOUT)
        go = sock.recv(64)
        if go == GO:
            sock.send(RUNNING)  # the client keeps its descriptors until it has this
    except OSError:
        go = b""
    finally:
        os.close(pidfd)
        sock.close()
        if _log_fd is not None:
            os.close(_log_fd)
            _log_fd = None  # from here, stderr is the client's and the log is stunnel's
    return go == GO


def _send(sock: socket.socket, message: bytes) -> None:
    try:
        sock.send(message, socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)  # never wait on a peer
    except OSError:
        pass


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError as error:
            if error.errno != errno.EBADF:
                raise


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def say(text: str) -> None:
    """One line on the helper's stderr, written at once (workers are forked processes)."""
    if _log_fd is None:
        return
    try:
        os.write(_log_fd, f"{PROG}: {text}\n".encode(errors="replace"))
    except OSError:
        pass

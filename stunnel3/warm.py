"""stunnel3-warm: a resident helper that takes OpenSSL's import off every connection.

    stunnel3-warm [ -s socket ] [ -c limit ]

It imports, once, everything a `stunnel` session needs, then listens on a Unix
socket (SOCK_SEQPACKET; default /run/stunnel3/warm.sock, or STUNNEL3_WARM_SOCKET;
its directory 0700, the socket 0600, both ours). Each `stunnel` started by the
users' chain (warm_client.py) hands itself over; see docs/warm.md.

Processes, for each connection to the socket:

    helper (root, resident) --fork--> session --fork--> worker
                                         |                 becomes the client,
    thin client <== SEQPACKET ==========>|                 runs stunnel.run()
                                         waits for the worker, relays signals
                                         one way and the exit status the other

- The helper checks the peer's uid (SO_PEERCRED: 0 or our own) and forks;
  it never reads a request itself, so no peer can make it wait or crash.
  It reaps its sessions; SIGTERM (or SIGINT) closes and removes the socket
  and ends it; sessions already running finish on their own.
- The session reads the request (size, descriptors and time bounded), checks
  it (warm_worker.check_peer), forks the worker and waits until it has become
  the client; then READY, GO (warm_client.py has the exchange), and it waits
  for the worker: a signal number from the client is sent on to the worker,
  the client's end of the socket closing is SIGTERM to the worker, and the
  worker's end is reported as X<status> or K<signal>.
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

from stunnel3 import limits, unix, warm_client, warm_worker
from stunnel3.warm_client import GO, READY, REFUSED

PROG = "stunnel3-warm"
USAGE = "stunnel3-warm [ -s socket ] [ -c limit ]"
DEFAULT_LIMIT = 400  # sessions at once; over it, clients run the direct path
REQUEST_TIMEOUT = 5.0
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_HELPER_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}


class Stop(Exception):
    """SIGTERM or SIGINT: close the socket and leave."""


def main(argv: list[str]) -> int:
    path, limit = _parse(argv[1:])
    _preload()
    listener, inode = _listen(path)
    say(f"info: listening on {path} (pid {os.getpid()})")
    sessions: set[int] = set()
    signal.signal(
        signal.SIGCHLD, lambda signum, frame: sessions.difference_update(limits.reap_children())
    )
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nothing to reload: imports are code
    gc.freeze()  # the imported world stays shared with every fork, not copied
    try:
        while True:
            _accept_one(listener, sessions, limit)
    except Stop:
        pass
    finally:
        _remove(path, inode)
        listener.close()
    say("info: stopped")
    return 0


def _parse(args: list[str]) -> tuple[str, int]:
    path = os.environ.get(warm_client.SOCKET_ENV) or warm_client.DEFAULT_SOCKET
    limit = DEFAULT_LIMIT
    while args:
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
    from stunnel3 import tls

    tls.warm_up(lambda text: say(f"warning: {text}"))  # OpenSSL's first-use work, shared


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


def _stop(signum, frame) -> None:
    raise Stop


def _accept_one(listener: socket.socket, sessions: set[int], limit: int) -> None:
    try:
        conn, _ = listener.accept()
    except OSError as error:  # EMFILE and the like: say it, breathe, go on
        say(f"warning: unable to accept: {unix.error_text(error.errno)}")
        select.select([], [], [], 0.1)
        return
    with conn:
        try:
            _start_session(conn, listener, sessions, limit)
        except OSError as error:
            say(f"warning: unable to start a session: {unix.error_text(error.errno)}")


def _start_session(conn: socket.socket, listener, sessions: set[int], limit: int) -> None:
    pid, uid, gid = _CREDENTIALS.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    )
    if uid not in (0, os.geteuid()):
        say(f"warning: refused pid {pid} uid {uid}: only root and uid {os.geteuid()} may")
        return
    if len(sessions) >= limit:
        say(f"warning: refused pid {pid}: {limit} sessions already")
        return
    # Until the child has its own handlers, neither our Stop nor our reaper may run in it;
    # and here, the new pid is in `sessions` before the reaper can look for it.
    signal.pthread_sigmask(signal.SIG_BLOCK, _HELPER_SIGNALS)
    try:
        _flush()
        child = os.fork()
        if child == 0:
            os._exit(_session_process(conn, listener, (pid, uid, gid)))
        sessions.add(child)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELPER_SIGNALS)


# -- a session process -----------------------------------------------------------


def _session_process(conn: socket.socket, listener: socket.socket, peer) -> int:
    """The forked session: never returns into the helper's loop, never a traceback."""
    try:
        for signum in _HELPER_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELPER_SIGNALS)
        listener.close()
        _session(conn, peer)
    except BaseException as error:  # noqa: BLE001 - a peer must never see us crash
        say(f"warning: session for pid {peer[0]}: {type(error).__name__}: {error}")
    return 0


def _session(conn: socket.socket, peer) -> None:
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
        return
    started = _start_worker(conn, request, received, pid)
    if started is None:
        _send(conn, REFUSED)
        return
    worker, control = started
    if not _send(conn, READY) or _receive_quietly(conn) != GO:
        os.close(control)  # it has run nothing yet: the client went direct
        os.kill(worker, signal.SIGKILL)
        os.waitpid(worker, 0)
        return
    os.write(control, b"G")
    os.close(control)
    _send(conn, _watch(conn, worker))


def _start_worker(
    conn: socket.socket, request, received: list[int], client: int
) -> tuple[int, int] | None:
    """Fork the worker, wait until it has become the client: (pid, control fd) or None."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    _flush()
    worker = os.fork()
    if worker == 0:
        _worker(request, received, theirs.detach(), [conn, ours], client)
    theirs.close()
    _close_all(received)
    ours.settimeout(REQUEST_TIMEOUT)
    said = _receive_quietly(ours)
    if said == b"R":
        return worker, ours.detach()
    ours.close()
    os.kill(worker, signal.SIGKILL)
    os.waitpid(worker, 0)
    say(f"warning: cannot become the client: {said[1:].decode(errors='replace') or 'no reply'}")
    return None


def _worker(
    request, received: list[int], control: int, sockets: list[socket.socket], client: int
) -> None:
    """The forked worker: become the client, wait for G, run stunnel; never returns."""
    status = 1
    try:
        warm_worker.reset_signals(request.ignored)
        for sock in sockets:
            sock.detach()  # their numbers are about to be the client's: no object may close them
        control = warm_worker.enter(request, received, control)  # failing: "no reply"
        try:
            warm_worker.become(request)
        except (OSError, ValueError) as error:
            os.write(control, b"F" + str(error).encode(errors="replace")[:200])
            os._exit(1)
        os.write(control, b"R")
        go = os.read(control, 1)
        os.close(control)
        if go != b"G":
            os._exit(0)
        from stunnel3 import log, stunnel

        log.show_pid(client)  # administrators match log lines to tcpserver's "pid N"
        status = stunnel.run([os.fsdecode(arg) for arg in request.argv])
        _flush()
    finally:
        os._exit(status & 0xFF)


def _watch(conn: socket.socket, worker: int) -> bytes:
    """Relay the client's signals to the worker until it ends; its status message."""
    conn.settimeout(None)
    pidfd = os.pidfd_open(worker)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(conn, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if pidfd in ready:
            _, status = os.waitpid(worker, 0)
            code = os.waitstatus_to_exitcode(status)
            return b"X%d" % code if code >= 0 else b"K%d" % -code
        message = _receive_quietly(conn)
        if message[:1] == b"S" and message[1:].isdigit():
            signum = int(message[1:])
            if signum in signal.valid_signals():
                _kill(worker, signum)
        elif not message:  # the client is gone: so is the session (3.22 on SIGTERM)
            _kill(worker, signal.SIGTERM)
            poller.unregister(conn)


def _receive_quietly(sock: socket.socket) -> bytes:
    try:
        return sock.recv(256)
    except (TimeoutError, OSError):
        return b""


def _send(sock: socket.socket, message: bytes) -> bool:
    try:
        sock.send(message)
    except OSError:
        return False
    return True


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
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
    """One line on stderr, written at once (sessions are forked processes)."""
    try:
        os.write(2, f"{PROG}: {text}\n".encode(errors="replace"))
    except OSError:
        pass

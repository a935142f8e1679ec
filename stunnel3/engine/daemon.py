"""Daemon mode (-d [host:]port): listen, fork a worker per connection.

The order is the real 3.22's (tests/oracle compares), with sg2's jail:

    TLS context (the pem and the seed read as root; context.make_context)
    -> into the background unless -f (fork, setsid, chdir /, std fds on /dev/null)
    -> pid file (-P) -> `FD_SETSIZE=...` -> bind, listen (`bound to`, debug)
    -> [-/: chroot, then the context inside the jail, still as root]
    -> -g, -s (names looked up now: their errors come after `bound to`, as in 3.22)
    -> accept loop

With sg2's -i the whole jail (chroot and ids) comes first and the pem is read
inside it as the account, as in inetd mode; the pid file is then made before
the jail and filled in once the pid is known. The starting process waits for
the daemon to be ready and exits 0, or with the daemon's status if it failed
before (3.22's parent exited 0 at once, whatever happened next).

The parent loads the TLS context once, before it forks: every worker inherits
it, with its session-ticket key, so tickets resume across workers; and it does
one handshake first (tls_warmup.py), so that OpenSSL's first-use work is shared
by every worker instead of done again in each.

The parent never touches a connection: it accepts, forks, closes its copy.
Workers are bounded as 3.22 bounded its threads (FD_SETSIZE and the descriptor
limit: 500 clients for a limit of 1024 or more); a connection over the bound is
accepted and closed with a warning. SIGCHLD wakes the loop through a self-pipe
(signal.set_wakeup_fd). SIGTERM, SIGQUIT, SIGINT, SIGHUP (3.22's four): pass
SIGTERM on to the workers, wait for them (bounded), remove the pid file, exit 3.
Before its first fork it freezes its objects (gc.freeze): no collection in a
worker walks them, so their pages stay shared with it instead of being copied.
"""

import gc
import os
import resource
import select
import signal
import socket
import stat
import time

from stunnel3 import chroot
from stunnel3.engine import tls_warmup
from stunnel3.engine.context import jail_then_context, make_context
from stunnel3.engine.endpoints import apply_socket_options
from stunnel3.engine.errors import SetupError, os_error
from stunnel3.engine.signals import TERMINATING, Terminated, reap_children
from stunnel3.options import DEFAULT_PID_DIR, Options, SocketOption, service_name
from stunnel3.support.record import record, replace

STOP_WAIT = 5.0  # seconds the workers get to finish after SIGTERM
FD_SETSIZE = 1024  # 3.22 select()ed: its bound on descriptors, and so on clients
# 3.22's default for the accepting socket (its DEF_ACCEPT); -O a:SO_REUSEADDR=0 undoes it
REUSE = SocketOption("a", "SO_REUSEADDR", (1,))


def max_clients() -> tuple[int, str]:
    """3.22's bound on clients, and its line saying so (STUNNEL3_MAX_CLIENTS overrides)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    ulimit = -1 if soft == resource.RLIM_INFINITY else soft
    fds = ulimit if 16 <= ulimit < FD_SETSIZE else FD_SETSIZE
    clients = fds * 125 // 256 if fds >= 256 else (fds - 6) // 2
    clients = max(1, int(os.environ.get("STUNNEL3_MAX_CLIENTS", clients)))
    unlimited = " (unlimited)" if ulimit < 0 else ""
    return (
        clients,
        f"FD_SETSIZE={FD_SETSIZE}, file ulimit={ulimit}{unlimited} -> {clients} clients allowed",
    )


def serve(options: Options, log, run_session) -> int:
    """run_session(ctx, fd, env) -> status serves one connection in a worker."""
    devnull = os.open("/dev/null", os.O_RDWR)  # before any jail
    if options.chroot_dir is not None:  # the daemon's chdir("/") must not move the jail
        options = replace(options, chroot_dir=os.path.abspath(options.chroot_dir))
    pid_file = ctx = None
    if chroot.jail_first(options):  # sg2's -i: the whole jail first, the pem inside it
        pid_file = PidFile.create(options, log)
        ids = chroot.resolve_ids(options)
        if pid_file is not None:
            pid_file.chown(ids.uid, log)
        ctx = jail_then_context(options, ids, log)
    elif options.chroot_dir is None:
        ctx = make_context(options, log)  # 3.22: the pem read as root, before anything
    ready = None if options.foreground else _background(devnull)
    os.close(devnull)
    if pid_file is None:
        pid_file = PidFile.create(options, log)
    if pid_file is not None:
        pid_file.write(os.getpid(), log)
    limit, said = max_clients()
    log.notice(said)
    listener = bind(options, log)
    if not options.switch_ids_now:
        ids = chroot.resolve_ids(options)
        if options.chroot_dir is not None:
            chroot.enter_root(options, log)
            ctx = make_context(options, log)  # inside the jail, still as root
        if pid_file is not None:
            pid_file.chown(ids.uid, log)
        chroot.drop_ids(options, ids, log)
    # once here, not in each worker; a signal meanwhile waits (warm_up makes any error a warning)
    signal.pthread_sigmask(signal.SIG_BLOCK, TERMINATING)
    tls_warmup.warm_up(log.warning, ctx, server=not options.client)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, TERMINATING)
    if ready is not None:
        os.write(ready, b"R")
        os.close(ready)
    workers: set[int] = set()
    gc.freeze()  # the parent's objects stay shared with every worker: no collection touches them
    try:
        _accept_loop(
            options, log, listener, workers, limit, lambda fd, env: run_session(ctx, fd, env)
        )
    except Terminated as stop:
        log.err(f"Received signal {stop.signum}; terminating")
        _stop_workers(workers)
        if pid_file is not None:
            pid_file.remove(log)
        return 3
    return 0


def _background(devnull: int) -> int:
    """3.22's daemon(0, 0), and a pipe to the starting process: it exits when told
    the daemon is ready (0), or with the daemon's status if the daemon ended first."""
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child > 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # this process reaps the daemon itself
        os.close(ready_w)
        said = os.read(ready_r, 1)
        status = 0
        if not said:
            _, code = os.waitpid(child, 0)
            status = os.waitstatus_to_exitcode(code) if os.WIFEXITED(code) else 1
        os._exit(status)
    os.close(ready_r)
    os.setsid()
    os.chdir("/")
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    return ready_w


@record
class PidFile:
    """3.22's create_pid: -P none | dir[/] (stunnel.<service>.pid in it) | file."""

    path: str
    fd: int | None

    @classmethod
    def create(cls, options: Options, log) -> "PidFile | None":
        where = options.pid_file if options.pid_file is not None else DEFAULT_PID_DIR
        if where == "none":
            log.debug("No pid file being created")
            return None
        if "/" not in where:  # after chdir("/") a relative path would mean another file
            raise SetupError(f"Argument to -P ({where}) must be full path name")
        directory = where[:-1] if where.endswith("/") else where
        if _is_directory(directory):
            path = f"{directory}/stunnel.{service_name(options)}.pid"
        elif where.endswith("/"):
            raise SetupError(f"Argument to -P ({directory}/) is not valid a directory name")
        else:
            path = directory
        try:
            os.unlink(path)  # "silently remove old pid file"
        except OSError:
            pass
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o644)
        except OSError as error:
            raise SetupError(
                f"Cannot create pid file {path}\n{os_error('create', error).text}"
            ) from None
        return cls(path, fd)

    def write(self, pid: int, log) -> None:
        assert self.fd is not None
        os.write(self.fd, str(pid).encode())
        os.close(self.fd)
        self.fd = None
        log.debug(f"Created pid file {self.path}")

    def chown(self, uid: int | None, log) -> None:
        """3.22 gave the pid file to the -s user, so that it could remove it."""
        if uid is None:
            return
        try:
            os.chown(self.path, uid, -1)
        except OSError:
            log.err(f"Failed to chown pidfile {self.path}")

    def remove(self, log) -> None:
        log.debug(f"removing pid file {self.path}")
        try:
            os.unlink(self.path)
        except OSError as error:
            log.err(os_error(self.path, error).text)  # not critical, as in 3.22


def _is_directory(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def bind(options: Options, log) -> socket.socket:
    """The listening socket: no host means every IPv4 address (INADDR_ANY), as in 3.22."""
    assert options.daemon is not None
    host, port = options.daemon.host, options.daemon.port
    if host is None:
        address: tuple = ("0.0.0.0", port)
        family = socket.AF_INET
    else:
        from stunnel3.engine.session import resolve

        family, address = resolve(host, port, options.daemon.resolved)[0]  # 3.22: the first
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise os_error("local socket", error) from None
    if not apply_socket_options(sock.fileno(), (REUSE, *options.socket_options), "a", log):
        raise SetupError("")
    for step, call in (("bind", lambda: sock.bind(address)), ("listen", lambda: sock.listen(128))):
        try:
            call()
        except OSError as error:
            sock.close()
            raise os_error(step, error) from None
        if step == "bind":
            log.debug(f"{service_name(options)} bound to {address[0]}:{address[1]}")
    sock.setblocking(False)
    return sock


def tcp_environment(conn: socket.socket) -> dict:
    """What tcpserver exports, so that qmail-smtpd can run under -d -l directly."""
    local, remote = conn.getsockname(), conn.getpeername()
    env: dict = {"TCPLOCALHOST": None, "TCPREMOTEHOST": None, "TCPREMOTEINFO": None}
    local_ip, remote_ip = local[0], remote[0]
    if conn.family == socket.AF_INET6 and not remote_ip.startswith("::ffff:"):
        env.update(
            PROTO="TCP6",
            TCP6LOCALIP=local_ip,
            TCP6REMOTEIP=remote_ip,
            TCP6LOCALPORT=str(local[1]),
            TCP6REMOTEPORT=str(remote[1]),
        )
    else:
        env["PROTO"] = "TCP"
        local_ip, remote_ip = local_ip.removeprefix("::ffff:"), remote_ip.removeprefix("::ffff:")
    env.update(
        TCPLOCALIP=local_ip,
        TCPLOCALPORT=str(local[1]),
        TCPREMOTEIP=remote_ip,
        TCPREMOTEPORT=str(remote[1]),
    )
    return env


def _accept_loop(options, log, listener, workers: set[int], limit: int, serve_one) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    poller.register(listener.fileno(), select.POLLIN)
    name = service_name(options)
    while True:
        ready = dict(poller.poll())
        if wake_r in ready:  # workers that ended are said before the next is accepted
            while _drain(wake_r):
                pass
            _reap(workers, log, name)
        if listener.fileno() in ready:
            _accept(options, log, listener, workers, limit, serve_one, (wake_r, wake_w))


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def _accept(options, log, listener, workers: set[int], limit: int, serve_one, wake) -> None:
    try:
        conn, peer = listener.accept()
    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
        return
    host = str(peer[0]).removeprefix("::ffff:")
    log.debug(f"{service_name(options)} accepted FD={conn.fileno()} from {host}:{peer[1]}")
    if len(workers) >= limit:
        log.warning(f"Connection rejected: too many clients (>={limit})")
        conn.close()
        return
    pid = os.fork()
    if pid:
        workers.add(pid)
        conn.close()
        return
    status = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, reap_children)
        listener.close()
        for fd in wake:
            os.close(fd)
        conn.setblocking(True)
        env = tcp_environment(conn)
        status = serve_one(conn.detach(), env)
    except Terminated as stop:
        log.err(f"Received signal {stop.signum}; terminating")
        status = 3
    except BaseException as error:  # noqa: BLE001  a worker never unwinds into the loop
        log.err(f"{type(error).__name__}: {error}")
    finally:
        os._exit(status)


def _reap(workers: set[int], log, name: str) -> None:
    while workers:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            workers.clear()
            return
        if pid == 0:
            return
        workers.discard(pid)
        log.debug(f"{name} finished ({len(workers)} left)")  # 3.22's thread said it


def _stop_workers(workers: set[int]) -> None:
    for pid in workers:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_WAIT
    while workers and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            workers.discard(pid)
        else:
            time.sleep(0.05)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

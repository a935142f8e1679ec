"""Daemon mode (-d [host:]port): listen, fork a worker per connection.

Order (3.22's rule, sg2's -i): bind first, then enter the jail, unless -i asks
to drop privileges at once (then the port must be one the account may bind).
The parent loads the TLS context once, before it forks: every worker inherits
it, with its session-ticket key, so tickets resume across workers; and it does
one handshake first (tls_warmup.py), so that OpenSSL's first-use work is shared
by every worker instead of done again in each. Anything
outside the jail that the parent needs later (/dev/null, the pid file) is
opened before the jail.

The parent never touches a connection: it accepts, forks, closes its copy.
Before its first fork it freezes its objects (gc.freeze): no collection in a
worker walks them, so their pages stay shared with it instead of being copied.
Workers are bounded (3.22's max_clients: 125/256 of the descriptor limit);
at the bound the listener is simply not polled until one ends. SIGCHLD wakes
the loop through a self-pipe (signal.set_wakeup_fd). SIGTERM/SIGINT: pass it
on to the workers, wait for them (bounded), remove the pid file, exit 3.
"""

import gc
import os
import resource
import select
import signal
import socket
import time

from stunnel3 import chroot, tls, tls_warmup
from stunnel3.endpoints import apply_socket_options
from stunnel3.options import Options, pid_path, service_name
from stunnel3.relay import Terminated

STOP_WAIT = 5.0  # seconds the workers get to finish after SIGTERM


def max_clients() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft > 65536:
        soft = 65536
    return max(1, int(os.environ.get("STUNNEL3_MAX_CLIENTS", soft * 125 // 256)))


def serve(options: Options, log, ids, run_session) -> int:
    """run_session(ctx, fd, env) -> status serves one connection in a worker."""
    devnull = os.open("/dev/null", os.O_RDWR)
    pid_file = _open_pid_file(options)
    listener = None if options.switch_ids_now else bind(options, log)
    chroot.enter_jail(options, ids, log)
    chroot.seed_random(options, log)
    ctx = tls.make_context(options, log)
    tls_warmup.warm_up(log.warning, ctx, server=not options.client)  # once here, not in each worker
    if listener is None:
        listener = bind(options, log)
    ready = None
    if not options.foreground:
        ready, ready_w = os.pipe()
        if os.fork() > 0:
            # The shell gets its prompt back once the daemon has written its pid
            # file (the pipe's EOF): whoever reads it next finds the pid.
            os.close(ready_w)
            os.read(ready, 1)
            os._exit(0)
        os.close(ready)
        ready = ready_w
        os.setsid()
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    os.close(devnull)
    if pid_file is not None:
        os.write(pid_file[1], f"{os.getpid()}\n".encode())
        os.close(pid_file[1])
    if ready is not None:
        os.close(ready)
    workers: set[int] = set()
    gc.freeze()  # the parent's objects stay shared with every worker: no collection touches them
    try:
        _accept_loop(options, log, listener, workers, lambda fd, env: run_session(ctx, fd, env))
    except Terminated as stop:
        log.err(f"Received signal {stop.signum}; terminating")
        _stop_workers(workers)
        if pid_file is not None:
            try:
                os.unlink(pid_file[0])
            except OSError:
                pass  # inside the jail the pid file is out of reach
        return 3
    return 0


def _open_pid_file(options: Options) -> tuple[str, int] | None:
    path = pid_path(options)
    if path is None:
        return None
    try:
        return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as error:
        raise chroot.os_error(path, error) from None


def bind(options: Options, log) -> socket.socket:
    """The listening socket: no host means every address, IPv6 and IPv4 alike."""
    assert options.daemon is not None
    host, port = options.daemon.host, options.daemon.port
    if host is None:
        candidates = [(socket.AF_INET6, ("::", port)), (socket.AF_INET, ("0.0.0.0", port))]
    else:
        from stunnel3.service import resolve

        candidates = resolve(host, port)
    error: OSError = OSError(0, "no address")
    for family, address in candidates:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as failure:
            error = failure
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and host is None:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            apply_socket_options(sock.fileno(), options.socket_options, "l", log)
            sock.bind(address)
            sock.listen(128)
        except OSError as failure:
            sock.close()
            raise chroot.os_error("bind", failure) from None
        sock.setblocking(False)
        log.notice(f"{service_name(options)} bound to {address[0]}:{address[1]}")
        return sock
    raise chroot.os_error("socket", error)


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


def _accept_loop(options, log, listener: socket.socket, workers: set[int], serve_one) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    limit = max_clients()
    log.debug(f"{limit} clients allowed")
    while True:
        _reap(workers, log)
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        if len(workers) < limit:
            poller.register(listener.fileno(), select.POLLIN)
        for fd, _ in poller.poll():
            if fd == wake_r:
                while _drain(wake_r):
                    pass
            else:
                _accept(listener, workers, serve_one, (wake_r, wake_w), log)


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


def _accept(listener, workers: set[int], serve_one, wake: tuple[int, int], log) -> None:
    try:
        conn, _ = listener.accept()
    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
        return
    pid = os.fork()
    if pid:
        workers.add(pid)
        conn.close()
        return
    status = 1
    try:
        signal.set_wakeup_fd(-1)
        from stunnel3.service import reap_children

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


def _reap(workers: set[int], log) -> None:
    while workers:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            workers.clear()
            return
        if pid == 0:
            return
        workers.discard(pid)
        log.debug(f"Worker {pid} finished ({len(workers)} left)")


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

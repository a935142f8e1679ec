"""The service: SPEC §2's order of operations, then one session per connection.

    resolve ids -> import everything -> resolve -r/-I -> [daemon: bind]
    -> jail (chroot, ids) -> seed -> TLS context (paths inside the jail) -> serve

Nothing is imported after the jail: it holds no Python. Inetd mode (no -d)
serves the connection on fds 0/1; daemon mode (daemon.py) forks a worker per
connection, each running `session()` with the context its parent made.

Who is who in a session: the relay's "network" is the TLS side, its "backend"
the plaintext side. Server mode: network = the accepted connection (fds 0/1),
backend = -F, -l/-L or -r. Client mode (-c): network = the -r connection,
backend = -F, -l/-L, or the accepted connection.
"""

import os
import signal
import socket

from stunnel3 import chroot, limits, tls
from stunnel3.endpoints import Endpoint, apply_socket_options, peer_address, set_nodelay
from stunnel3.options import Options, program_argv, service_name
from stunnel3.protocol import Passthrough
from stunnel3.relay import Relay, Terminated
from stunnel3.tls import ContextError, TlsSession

CONNECT_TIMEOUT = 60.0
SERVER_PROTOCOLS = ("smtp", "smtp-", "pop3", "pop3-", "imap-")  # nntp: 3.22 had none either


class SessionError(Exception):
    """One connection cannot be served (backend refused, program not found)."""


def run(options: Options, log) -> int:
    """The whole service; the exit status (0 ended, 1 setup error, 3 signal)."""
    _install_signals()
    try:
        return _run(options, log)
    except Terminated as stop:
        log.err(f"Received signal {stop.signum}; terminating")
        return 3
    except (chroot.SetupError, ContextError) as error:
        log.err(error.text)
        return 1
    finally:
        # Past this point a SIGTERM must not raise into the interpreter's
        # shutdown (a traceback would reach the log): it ends us at once.
        signal.signal(signal.SIGTERM, _exit_by_signal)
        signal.signal(signal.SIGINT, _exit_by_signal)


def _run(options: Options, log) -> int:
    ids = chroot.resolve_ids(options)  # first: /etc is still there
    _check_mode(options)
    _load_modules(options)
    remote = (
        resolve(options.remote.host or "127.0.0.1", options.remote.port) if options.remote else []
    )
    prepare = getattr(log, "prepare_for_jail", None)
    if prepare is not None:
        prepare()
    if options.daemon is not None:
        from stunnel3 import daemon

        return daemon.serve(
            options, log, ids, lambda ctx, fd, env: session(options, log, ctx, remote, fd, fd, env)
        )
    chroot.enter_jail(options, ids, log)
    chroot.seed_random(options, log)
    ctx = tls.make_context(options, log)
    return session(options, log, ctx, remote, 0, 1, {})


def _check_mode(options: Options) -> None:
    if options.protocol is not None:
        make_layer(options, None)  # raises SetupError for what we cannot do
    if options.client and options.remote is None:
        raise chroot.SetupError("Client mode (-c) needs -r: the TLS side is the remote service")
    if options.transparent:
        _check_transparent(options)


def _check_transparent(options: Options) -> None:
    """-T: the -r connection leaves from the client's own address (Linux IP_TRANSPARENT)."""
    if options.remote is None or options.client:
        raise chroot.SetupError("Transparent proxy (-T) works only in server mode with -r")
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_IP, getattr(socket, "IP_TRANSPARENT", 19), 1)
    except OSError as error:
        raise chroot.SetupError(
            f"Transparent proxy (-T) not supported here: setsockopt IP_TRANSPARENT: "
            f"{error.strerror} ({error.errno})"
        ) from None
    finally:
        probe.close()


def _load_modules(options: Options) -> None:
    """Import now every module this session can need, the jail holds no Python; and only
    those: on the direct path every import costs every connection its CPU. (The protocol
    layer's module is loaded already: _check_mode made a layer.)"""
    if options.remote or options.local_ip or options.daemon:
        import encodings.idna  # noqa: F401  socket may encode a host name
    if options.local_pty:
        import fcntl  # noqa: F401  -L: the pty's controlling terminal
        import termios  # noqa: F401
    if options.ident_user is not None:
        from stunnel3 import ident  # noqa: F401
    if options.local_program is not None:
        import subprocess  # noqa: F401  -l: started by it (_spawn_program)
    if options.daemon is not None:
        from stunnel3 import daemon  # noqa: F401
    # OpenSSL reads its configuration on first use: let that happen out here, with the
    # context make_context will configure (one the warm helper made is kept).
    tls.prepare_context()


def make_layer(options: Options, log):
    """The protocol layer between TLS and the plaintext side (protocol.py)."""
    protocol = options.protocol
    if protocol is None:
        return Passthrough()
    if options.client:
        from stunnel3.client_negotiation import client_layer

        try:
            return client_layer(protocol)
        except KeyError:
            raise chroot.SetupError(f"Protocol not supported in client mode: {protocol}") from None
    if protocol not in SERVER_PROTOCOLS:
        raise chroot.SetupError(f"Protocol not supported in server mode: {protocol}")
    level = log.level if log is not None else 0
    if protocol.startswith("pop3"):
        from stunnel3 import pop3

        return pop3.Pop3Proxy(require_tls=protocol == "pop3", log_dialogue=level >= 7)
    if protocol == "imap-":
        from stunnel3 import imap

        return imap.ImapProxy(log_dialogue=level >= 7)
    from stunnel3 import smtp

    return smtp.SmtpProxy(require_tls=protocol == "smtp", log_dialogue=level >= 7)


def resolve(host: str, port: int) -> list[tuple]:
    """(family, sockaddr) for -r or -I, found before the jail hides /etc/hosts."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise chroot.SetupError(f"Error resolving '{host}'") from None
    return [(family, address) for family, _, _, _, address in found]


# -- one session ---------------------------------------------------------------


def session(options: Options, log, ctx, remote: list[tuple], rfd: int, wfd: int, env: dict) -> int:
    """Serve one accepted connection (fds rfd/wfd); the exit status of its process."""
    peer = peer_address(rfd)
    if peer is not None and options.ident_user is not None:
        from stunnel3 import ident

        if not ident.check(rfd, options.ident_user, log):
            Endpoint(rfd, wfd, "accepted").reset()
            return 0
    if peer is not None:
        log.notice(f"{service_name(options)} connected from {peer[0]}:{peer[1]}")
        set_nodelay(rfd)
        apply_socket_options(rfd, options.socket_options, "a", log)
    accepted = Endpoint(rfd, wfd, "accepted")
    relay = None
    try:
        network, backend, opener = _sides(options, log, ctx, remote, accepted, peer, env)
        relay = Relay(
            network,
            backend,
            make_layer(options, log),
            lambda: TlsSession(ctx, server=not options.client),
            log,
            opener,
        )
        ok = relay.run()
    except SessionError as error:
        log.err(str(error))
        accepted.reset()
        return 0
    state = "closed" if ok else "reset"
    log.notice(
        f"Connection {state}: {relay.ssl_bytes} bytes sent to SSL, "
        f"{relay.sock_bytes} bytes sent to socket"
    )
    return 0


def _sides(options, log, ctx, remote, accepted: Endpoint, peer, env):
    """(network, backend, open_backend): who plays which part (see the module doc)."""
    if options.client:
        network = connect(options, log, remote, None)
        return network, _plaintext_end(options, log, env, accepted), None
    if options.remote is not None:
        return accepted, connect(options, log, remote, peer), None
    if options.local_program is not None and options.protocol is None:
        # 3.22's order: the handshake first, then the program (it learns the
        # peer's certificate names, and a failed handshake costs no fork).
        return accepted, None, lambda session: start_program(options, log, env, session)
    return accepted, _plaintext_end(options, log, env, accepted), None


def _plaintext_end(options: Options, log, env: dict, accepted: Endpoint) -> Endpoint:
    if options.plaintext_fd is not None:
        fd = options.plaintext_fd
        try:
            os.fstat(fd)
        except OSError as error:
            raise SessionError(f"-F {fd}: {error.strerror} ({error.errno})") from None
        return Endpoint(fd, fd, f"fd {fd}", add_cr=options.plaintext_add_cr)
    if options.local_program is not None:
        return start_program(options, log, env, None)
    return accepted


def connect(options: Options, log, remote: list[tuple], peer) -> Endpoint:
    """The -r connection (from -I's address, or with -T from the client's own)."""
    error: OSError = OSError(0, "no address")
    for family, address in remote:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if options.transparent and peer is not None:
                sock.setsockopt(socket.SOL_IP, getattr(socket, "IP_TRANSPARENT", 19), 1)
                sock.bind((peer[0], 0))
            elif options.local_ip:
                sock.bind((options.local_ip, 0))
            apply_socket_options(sock.fileno(), options.socket_options, "r", log)
            log.debug(f"{service_name(options)} connecting {address[0]}:{address[1]}")
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(address)
        except OSError as failure:
            error = failure
            sock.close()
            continue
        set_nodelay(sock.fileno())
        fd = sock.detach()
        return Endpoint(fd, fd, "remote")
    raise SessionError(f"remote connect: {error.strerror} ({error.errno})")


def start_program(options: Options, log, env: dict, session: TlsSession | None) -> Endpoint:
    """-l (socketpair) or -L (pty): fork, then exec with the administrator's limits."""
    from stunnel3 import limits

    program = options.local_program
    assert program is not None
    extra = dict(env)
    names = session.peer_names() if session is not None else None
    if names is not None:  # 3.22 told the program whose certificate it was
        extra["SSL_CLIENT_DN"], extra["SSL_CLIENT_I_DN"] = names
    if options.local_pty:
        ours, theirs = os.openpty()
    else:
        pair = socket.socketpair()
        ours, theirs = pair[0].detach(), pair[1].detach()
    if options.local_pty or limits.lowered():  # a new session and terminal; limits to give back
        pid: int | None = os.fork()
        if pid == 0:
            _exec_program(options, log, program, theirs, extra, limits)
    else:
        pid = _spawn_program(options, log, program, theirs, _program_environment(extra, limits))
    os.close(theirs)
    if pid is not None:
        log.info(f"Local mode child started (PID={pid})")
    return Endpoint(ours, ours, program, pty=options.local_pty)


def _program_environment(extra: dict, limits) -> dict:
    environment = limits.child_environment()
    for key, value in extra.items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    return environment


def _spawn_program(options, log, program: str, fd: int, environment: dict) -> int | None:
    """-l without a fork of this process (subprocess: vfork and exec, in C), with what
    _exec_program gives it: fd on 0 and 1 (and 2 without -f), nothing else above 2,
    SIGPIPE and SIGXFSZ at their defaults. Its pid, or None when it cannot be run."""
    import subprocess

    try:
        child = subprocess.Popen(program_argv(options), executable=program, stdin=fd, stdout=fd,
                                 stderr=None if options.foreground else fd, close_fds=True,
                                 env=environment, restore_signals=True)  # fmt: skip
    except OSError as error:
        log.err(f"{program}: {error.strerror} ({error.errno})")
        return None
    _started.append(child)  # never collected: reap_children reaps it
    return child.pid


_started: list = []


def _exec_program(options, log, program: str, fd: int, extra: dict, limits) -> None:
    try:
        if options.local_pty:
            os.login_tty(fd)  # new session, the pty as stdin/out/err and controlling tty
        else:
            os.dup2(fd, 0)
            os.dup2(fd, 1)
            if not options.foreground:  # 3.22: without -f the program's stderr is the peer too
                os.dup2(fd, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        environment = _program_environment(extra, limits)
        for name in ("SIGTERM", "SIGINT", "SIGCHLD"):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        limits.prepare_child()
        os.execvpe(program, program_argv(options), environment)
    except OSError as error:
        log.err(f"{program}: {error.strerror} ({error.errno})")
    finally:
        os._exit(1)


# -- signals -------------------------------------------------------------------


def _terminate(signum, frame) -> None:
    # A second TERM or INT (a process group's, and the warm front's relayed copy) must not
    # raise again wherever the first one's unwinding is (a weakref callback: a traceback).
    signal.signal(signal.SIGTERM, _exit_by_signal)
    signal.signal(signal.SIGINT, _exit_by_signal)
    raise Terminated(signum)


def _exit_by_signal(signum, frame) -> None:
    os._exit(3)


def reap_children(signum=None, frame=None) -> None:
    """makesock leaves PROG2 as our child, and -l programs are ours: no zombies."""
    limits.reap_children()


def _install_signals() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    signal.signal(signal.SIGCHLD, reap_children)

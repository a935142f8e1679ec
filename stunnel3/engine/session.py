"""One session (3.22's client()): the local side, the remote side, the relay between.

In order: `<service> started`; with -r and -l together the -l program is the
local side; if the local side is a socket: its -O l: options, TCP wrappers,
IDENT, `<service> connected from <ip>:<port>`; then either the handshake first
and the -l program after it (server mode, -l, no -n: it learns the peer's
certificate), or the remote side first (-r connection, -l program, -F) and the
handshake after; `Connection closed` (or `reset`) unless the session failed
before it was set up; `<service> finished (0 left)` (daemon mode: the parent
says it, daemon.py).

Who is who: the relay's "client" is the TLS side, its "backend" the plaintext
side (the layers' words, protocol.py). Server mode: client = the local side
(fds 0/1, the accepted connection, or the -l program beside -r), backend = -F,
-l/-L or -r. Client mode (-c): client = the -r connection or the -l program,
backend = -F, the -l program beside -r, or the local side.

The -l program gets a TCP connection over 127.0.0.1, as 3.22's make_sockets
made it (exim says `[127.0.0.1]`, not a local submission); -L a pty.
"""

import errno
import os
import signal
import socket
from typing import TYPE_CHECKING

from stunnel3.engine import children, libwrap
from stunnel3.engine.bounds import Bounds
from stunnel3.engine.endpoints import Endpoint, apply_socket_options, peer_address, set_nodelay
from stunnel3.engine.errors import SetupError
from stunnel3.engine.signals import TERMINATING
from stunnel3.layers import policy
from stunnel3.layers.protocol import Passthrough
from stunnel3.options import Options, program_argv, service_name
from stunnel3.relay import Relay
from stunnel3.support import limits
from stunnel3.tls import TlsSession

if TYPE_CHECKING:  # only makesock's hand-over loads it (stunnel._line_ends)
    from stunnel3.engine.line_ends import FixcrioRule

CONNECT_TIMEOUT = 60.0
SERVER_PROTOCOLS = ("smtp", "smtp-", "pop3", "pop3-", "imap-")
UNSUPPORTED_PROTOCOLS = ("smb", "telnet")  # 3.22 knew their names, and no more


class SessionError(Exception):
    """One connection cannot be served: its lines are logged, then it is dropped."""

    def __init__(self, *lines: str):
        super().__init__(*lines)
        self.lines = lines  # none: the reason was logged already


def make_layer(options: Options, log, tls_available: bool = True):
    """The protocol layer between TLS and the plaintext side (protocol.py).

    A protocol the engine lacks fails the connection with 3.22's two lines. A
    STARTTLS layer gets this client's policy (policy.py, from the environment
    tcpserver passed on), and tls_available False if the certificate cannot be used."""
    protocol = options.protocol
    if protocol is None:
        return Passthrough()
    side = "client" if options.client else "server"
    log.debug(f"Negotiations for {protocol}({side} side) started")
    if protocol in UNSUPPORTED_PROTOCOLS or (protocol == "nntp" and not options.client):
        what = "Protocol not supported" + (" in server mode" if protocol == "nntp" else "")
        raise SessionError(what, "Protocol negotiations failed")
    if options.client:
        from stunnel3.layers.client_negotiation import client_layer

        try:
            return client_layer(protocol)
        except KeyError:
            pass
    elif protocol in SERVER_PROTOCOLS:
        return _server_layer(protocol, log, tls_available)
    raise SessionError(
        f"Protocol {protocol} not supported in {side} mode", "Protocol negotiations failed"
    )


def _server_layer(protocol: str, log, tls_available: bool):
    client, problems = policy.read(os.environ, protocol)  # read once, here
    for problem in problems:
        log.warning(problem)
    log.info(client.describe(tls_available))
    layer_options = client.layer_options(tls_available)
    if layer_options["require_tls"] and not layer_options["offer_tls"]:
        log.err("TLS is required and not available: the client is turned away")
    if protocol.startswith("pop3"):
        from stunnel3.layers import pop3

        return pop3.Pop3Proxy(**layer_options, log_dialogue=log.level >= 7)
    if protocol == "imap-":
        from stunnel3.layers import imap

        return imap.ImapProxy(**layer_options, log_dialogue=log.level >= 7)
    from stunnel3 import smtp

    return smtp.SmtpProxy(**layer_options, log_dialogue=log.level >= 7)


def session(
    options: Options,
    log,
    ctx,
    rfd: int,
    wfd: int,
    env: dict,
    allowed: bool | None = None,
    bounds: Bounds | None = None,
    line_ends: "FixcrioRule | None" = None,
) -> int:
    """Serve one connection (fds rfd/wfd); the exit status of its process.

    `allowed`: TCP wrappers' verdict, when it had to be taken before the jail;
    `line_ends`: what the relay does to the line ends of -F's descriptor, when it
    is the backend (makesock's hand-over: stunnel.main)."""
    name = service_name(options)
    bounds = bounds or Bounds()
    log.debug(f"{name} started")
    local = Endpoint(rfd, wfd, "local")
    relay = None
    try:
        if options.remote is not None and options.local_program is not None:
            local = start_program(options, log, env, None)  # 3.22: -r with -l (pppd's idiom)
        _greet(options, log, local, allowed)
        network, backend, opener = _sides(options, log, ctx, local, env)
        on_plaintext_fd = backend is not None and backend.rfd == options.plaintext_fd
        relay = Relay(
            network,
            backend,
            make_layer(options, log, tls_available=ctx is not None),
            lambda: TlsSession(ctx, server=not options.client),
            log,
            opener,
            bounds,
            line_ends if on_plaintext_fd else None,
        )
        ok = relay.run()
    except SessionError as error:
        for line in error.lines:
            log.err(line)
        local.reset()
        ok = None
    if relay is not None and ok is not None and _was_set_up(relay):
        log.notice(
            f"Connection {'closed' if ok else 'reset'}: {relay.ssl_bytes} bytes sent to SSL, "
            f"{relay.sock_bytes} bytes sent to socket"
        )
    ends = [local] if relay is None else [local, relay.client, relay.backend]
    end_programs([end for end in ends if end is not None], bounds.backend_exit, log)
    if options.daemon is None:
        log.debug(f"{name} finished (0 left)")
    return 0


def end_programs(ends: list[Endpoint], grace: float, log) -> None:
    """The -l/-L program of the session ends with it (children.py): our ends closed
    (its EOF, and the client's), then SIGTERM and SIGKILL for one that lingers."""
    programs = {end.program for end in ends if end.program is not None}
    if not programs:
        return
    for end in ends:
        end.close()
    for pid, pidfd in sorted(programs):
        said = [f"{grace:g} s after the session"]

        def say(signal_name: str, pid=pid, said=said) -> None:
            log.warning(f"Local mode child (PID={pid}) did not exit {said[0]}: {signal_name}")
            said[0] = f"{grace:g} s after SIGTERM"

        children.end(pidfd, grace, say)
        os.close(pidfd)


def _was_set_up(relay: Relay) -> bool:
    """3.22 said how a connection ended only once it had one: not after a failed handshake."""
    return relay.tls is None or relay.tls.established


def _greet(options: Options, log, local: Endpoint, allowed: bool | None) -> None:
    """3.22's init_local: a socket's -O l: options, TCP wrappers, IDENT, then `connected`."""
    peer = _local_peer(local.rfd, options.transparent)
    if peer is None:
        return
    if not apply_socket_options(local.rfd, options.socket_options, "l", log):
        raise SessionError()
    if allowed is None:
        allowed = libwrap.allows(local.rfd, service_name(options))
    if not allowed:
        for level, text in libwrap.refusal_lines(peer):
            log.log(level, text)
        raise SessionError()
    if options.ident_user is not None:
        from stunnel3.engine import ident

        if not ident.check(local.rfd, options.ident_user, log):
            raise SessionError()
    log.notice(f"{service_name(options)} connected from {peer[0]}:{peer[1]}")
    set_nodelay(local.rfd)


def _local_peer(fd: int, transparent: bool) -> tuple[str, int] | None:
    """The peer of the local side if it is a TCP socket; not a socket is fine (a pipe,
    /dev/null), unless -T needs the client's address, or the socket is not connected."""
    try:
        sock = socket.socket(fileno=fd)  # a descriptor that is not a socket: ENOTSOCK
        try:
            sock.getpeername()
        finally:
            sock.detach()
    except OSError as error:
        if transparent or error.errno != errno.ENOTSOCK:
            raise SessionError(f"getpeerbyname: {error.strerror} ({error.errno})") from None
        return None
    return peer_address(fd)


def _sides(options, log, ctx, local: Endpoint, env):
    """(client, backend, open_backend): who plays which part (see the module doc)."""
    if options.client:
        client = _remote_side(options, log, env, None)
        backend = _plaintext_fd(options) if options.plaintext_fd is not None else local
        return client, backend, None
    if options.remote is None and options.local_program is not None and not options.protocol:
        # 3.22's order: the handshake first, then the program (it learns the
        # peer's certificate names, and a failed handshake costs no fork).
        return local, None, lambda tls: _remote_side(options, log, env, local, tls)
    return local, _remote_side(options, log, env, local), None


def _remote_side(options, log, env, local: Endpoint | None, tls=None) -> Endpoint:
    """3.22's init_remote: the -r connection, the -l program or (sg2) -F."""
    try:
        if options.remote is not None:
            remote = connect(options, log, peer_address(local.rfd) if local else None)
        elif options.local_program is not None:
            remote = start_program(options, log, env, tls)
        else:
            remote = _plaintext_fd(options)
    except SessionError as error:
        raise SessionError(*error.lines, "Failed to initialize remote file descriptor") from None
    log.debug(f"Remote FD={remote.rfd} initialized")
    if not apply_socket_options(remote.rfd, options.socket_options, "r", log):
        end_programs([remote], Bounds().backend_exit, log)
        raise SessionError()
    return remote


def _plaintext_fd(options: Options) -> Endpoint:
    fd = options.plaintext_fd
    assert fd is not None
    try:
        os.fstat(fd)
    except OSError as error:
        raise SessionError(f"-F {fd}: {error.strerror} ({error.errno})") from None
    return Endpoint(fd, fd, f"fd {fd}")


def resolve(host: str, port: int, resolved: tuple[str, ...] = ()) -> list[tuple]:
    """(family, sockaddr) for -r or -d: the addresses found while parsing, or now."""
    try:
        hosts = resolved or (host,)
        found = [
            entry
            for name in hosts
            for entry in socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        ]
    except (OSError, UnicodeError) as error:
        raise SetupError(f"Error resolving '{host}': {error}") from None
    return [(family, address) for family, _, _, _, address in found]


def connect(options: Options, log, peer) -> Endpoint:
    """The -r connection (from -I's address, or with -T from the client's own)."""
    assert options.remote is not None
    remote = resolve(
        options.remote.host or "127.0.0.1", options.remote.port, options.remote.resolved
    )
    error: OSError = OSError(0, "no address")
    for family, address in remote:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            _bind_source(options, sock, peer)
        except OSError as failure:  # 3.22 bound -I's address and -T's alike, with one text
            sock.close()
            raise SessionError(f"bind transparent: {failure.strerror} ({failure.errno})") from None
        try:
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


def _bind_source(options: Options, sock: socket.socket, peer) -> None:
    if options.local_ip:
        sock.bind((options.local_ip, 0))
    elif options.transparent and peer is not None:
        sock.setsockopt(socket.SOL_IP, getattr(socket, "IP_TRANSPARENT", 19), 1)
        sock.bind((peer[0], 0))


def loopback_pair() -> tuple[int, int]:
    """3.22's make_sockets: a TCP connection over 127.0.0.1 (ours, the program's).

    The -l program sees a TCP peer at 127.0.0.1, as under 3.22 (exim says
    `[127.0.0.1]`, not a local submission), not a Unix socket pair."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        theirs = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            theirs.connect(listener.getsockname())
            ours, _ = listener.accept()
        except OSError:
            theirs.close()
            raise
    return ours.detach(), theirs.detach()


def start_program(options: Options, log, env: dict, session: TlsSession | None) -> Endpoint:
    """-l (a TCP loopback pair) or -L (a pty): fork, then exec with the administrator's limits."""
    program = options.local_program
    assert program is not None
    extra = dict(env)
    names = session.peer_names() if session is not None else None
    if names is not None:  # 3.22 told the program whose certificate it was
        extra["SSL_CLIENT_DN"], extra["SSL_CLIENT_I_DN"] = names
    try:
        if options.local_pty:
            ours, theirs = os.openpty()
            log.debug(f"{os.ttyname(theirs)} allocated")
        else:
            ours, theirs = loopback_pair()
        # SIGCHLD waits until the pidfd is open: the handler must not reap the pid first
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            if options.local_pty or limits.lowered():  # a new session and terminal; limits back
                pid: int | None = os.fork()
                if pid == 0:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                    _exec_program(options, log, program, theirs, extra)
            else:  # no fork of this Python: vfork and exec
                pid = _spawn_program(options, log, program, theirs, _program_environment(extra))
            pidfd = os.pidfd_open(pid) if pid is not None else None
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    except OSError as error:
        raise SessionError(f"{'openpty' if options.local_pty else 'socket'}: {error.strerror}"
                           f" ({error.errno})") from None  # fmt: skip
    os.close(theirs)
    end = Endpoint(ours, ours, program, pty=options.local_pty)
    if pid is not None and pidfd is not None:
        log.info(f"Local mode child started (PID={pid})")
        end.program = pid, pidfd
    return end


def _program_environment(extra: dict) -> dict:
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
    every signal at its default (SIGPIPE and SIGXFSZ too). Its pid, or None when it
    cannot be run."""
    import subprocess

    try:
        child = subprocess.Popen(program_argv(options), executable=program, stdin=fd, stdout=fd,
                                 stderr=None if options.foreground else fd, close_fds=True,
                                 env=environment, restore_signals=True)  # fmt: skip
    except OSError as error:
        log.err(f"{program}: {error.strerror} ({error.errno})")
        return None
    _started.append(child)  # never collected (no ResourceWarning): the pidfd reaps it
    return child.pid


_started: list = []


def _exec_program(options, log, program: str, fd: int, extra: dict) -> None:
    try:
        if options.local_pty:
            os.login_tty(fd)  # new session, the pty as stdin/out/err and controlling tty
        else:
            os.dup2(fd, 0)
            os.dup2(fd, 1)
            if not options.foreground:  # 3.22: without -f the program's stderr is the peer too
                os.dup2(fd, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        environment = _program_environment(extra)
        for number in (*TERMINATING, signal.SIGCHLD):
            signal.signal(number, signal.SIG_DFL)
        limits.prepare_child()
        os.execvpe(program, program_argv(options), environment)
    except OSError as error:
        log.err(f"{program}: {error.strerror} ({error.errno})")
    finally:
        os._exit(1)

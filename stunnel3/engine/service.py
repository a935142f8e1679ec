"""The service: SPEC §2's order of operations after the log opened, up to the first session.

`serve` is the one start-up of every path: the inetd path (the front, or makesock
running stunnel in its own process), the daemon, and the warm worker (which runs
stunnel.main as the front's own Python would have). As the real 3.22 runs it
(tests/oracle compares), with sg2's jail:

    signals (signals.py) -> the STUNNEL3_ bounds checked (bounds.py)
    -> inherited descriptors closed -> every module the session needs loaded
    -> daemon: daemon.serve, 3.22's daemon order (the pem read as root before bind)
    -> inetd: [-s/-g without -i said to be ignored]
              [jail first, with -/ or -i: TCP wrappers' verdict, chroot, ids]
              -> pem checked -> seed -> TLS context -> STUNNEL_INFO (context.py;
                 a pem that cannot be used: a STARTTLS server mode goes on without TLS)
              -> the session on fds 0/1 (session.py)

The jail comes first where sg2 needs it: the pem and the seed are paths
inside the jail, read as the unprivileged account (SPEC §2, docs/jail.md).
Nothing is imported after the jail: it holds no Python. TCP wrappers judge
fd 0 before the chroot in inetd mode (libwrap.py); the session says the
verdict where 3.22 said it. Any setup error (errors.py) is its log lines and
status 1; a terminating signal is `Received signal <n>; terminating`, status 3.
"""

from typing import TYPE_CHECKING

from stunnel3 import chroot, tls
from stunnel3.engine import libwrap, signals
from stunnel3.engine.bounds import Bounds
from stunnel3.engine.context import jail_then_context, make_context
from stunnel3.engine.endpoints import peer_address
from stunnel3.engine.errors import SetupError
from stunnel3.engine.session import SERVER_PROTOCOLS, session
from stunnel3.engine.signals import Terminated
from stunnel3.options import Options, service_name

if TYPE_CHECKING:  # only makesock's hand-over loads it (stunnel._line_ends)
    from stunnel3.engine.line_ends import FixcrioRule


def serve(options: Options, log, line_ends: "FixcrioRule | None" = None) -> int:
    """The whole service; the exit status (0 ended, 1 setup error, 3 signal).

    line_ends: what the relay does to the line ends of -F's descriptor (inetd
    mode: makesock's hand-over, stunnel.main)."""
    signals.install()
    try:
        bounds = Bounds()  # a bad STUNNEL3_ setting is one fatal line, before anything
        chroot.close_inherited(options, log)
        _load_modules(options)
        if options.daemon is not None:
            from stunnel3.engine import daemon

            return daemon.serve(
                options,
                log,
                lambda ctx, fd, env: session(options, log, ctx, fd, fd, env, bounds=bounds),
            )
        chroot.warn_ignored_ids(options, log)
        if chroot.jail_first(options):
            allowed = _wrappers_allow(options, 0)  # /etc/hosts.allow is outside the jail
            ctx = jail_then_context(options, chroot.resolve_ids(options), log)
        else:
            allowed, ctx = None, make_context(options, log)
        return session(options, log, ctx, 0, 1, {}, allowed, bounds, line_ends)
    except Terminated as stop:
        log.err(f"Received signal {stop.signum}; terminating")
        return 3
    except SetupError as error:
        for line in error.text.splitlines():
            log.err(line)
        return 1
    finally:
        # Past this point a SIGTERM must not raise into the interpreter's
        # shutdown (a traceback would reach the log): it ends us at once.
        signals.exit_at_once()


def _load_modules(options: Options) -> None:
    """Import now every module this session can need, the jail holds no Python; and only
    those: on the direct path every import costs every connection its CPU."""
    if options.remote or options.local_ip or options.daemon:
        import encodings.idna  # noqa: F401  socket may encode a host name
    if options.local_pty:
        import fcntl  # noqa: F401  -L: the pty's controlling terminal
        import termios  # noqa: F401
    if options.ident_user is not None:
        from stunnel3.engine import ident  # noqa: F401
    if options.local_program is not None and not options.local_pty:
        import subprocess  # noqa: F401  -l: started by it (session._spawn_program)
    from stunnel3.engine import tls_library
    from stunnel3.support import on_demand

    if on_demand.uses_certificates(options):  # the warm helper may have left them deferred
        for name in on_demand.CERTIFICATE_MODULES:
            on_demand.load(name)
    tls_library.openssl_text()  # whose OpenSSL, from /proc: the jail has none (STUNNEL_INFO)

    if options.client:
        from stunnel3.layers import client_negotiation  # noqa: F401
    elif options.protocol in SERVER_PROTOCOLS:
        _load_layer(options.protocol)
    if options.daemon is not None:
        from stunnel3.engine import daemon  # noqa: F401
    # OpenSSL reads its configuration on first use: let that happen out here, with the
    # context make_context will configure (one the warm helper made is kept).
    tls.prepare_context()


def _load_layer(protocol: str) -> None:
    """The one protocol module session.make_layer will use."""
    if protocol.startswith("pop3"):
        from stunnel3.layers import pop3  # noqa: F401
    elif protocol == "imap-":
        from stunnel3.layers import imap  # noqa: F401
    else:
        from stunnel3 import smtp  # noqa: F401


def _wrappers_allow(options: Options, fd: int) -> bool:
    return peer_address(fd) is None or libwrap.allows(fd, service_name(options))

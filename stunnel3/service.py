"""The service: 3.22's main() after the log opened, up to the first session.

Start-up, as the real 3.22 runs it (tests/oracle compares), with sg2's jail:

    the STUNNEL3_ bounds checked (bounds.py) -> inherited descriptors closed
    -> [inetd mode: -s/-g without -i said to be ignored]
    -> [jail first: inetd mode with -/ or -i, daemon mode with -i]
    -> pem checked (stat, `Wrong permissions`) -> seed -> TLS context -> STUNNEL_INFO
       (a pem that cannot be used: a STARTTLS server mode goes on without TLS)
    -> inetd: the session on fds 0/1 (session.py)
    -> daemon: see daemon.py (the pem is read as root before bind; -/ after it)

The jail comes first where sg2 needs it: the pem and the seed are paths
inside the jail, read as the unprivileged account (SPEC §2, docs/jail.md).
Nothing is imported after the jail: it holds no Python. TCP wrappers judge
fd 0 before the chroot in inetd mode (libwrap.py); the session says the
verdict where 3.22 said it.
"""

import os
import signal
import socket

from stunnel3 import chroot, libwrap, limits, tls
from stunnel3.bounds import Bounds, SettingError
from stunnel3.endpoints import peer_address
from stunnel3.options import Options, service_name
from stunnel3.relay import Terminated
from stunnel3.session import SERVER_PROTOCOLS, TERMINATING, session
from stunnel3.tls import ContextError
from stunnel3.usage import stunnel_info

# Said once as the process starts (inetd mode: once a session), after the pem's own line.
NO_TLS = "TLS is not available (the certificate above cannot be used): STARTTLS is not offered"

__all__ = ["TERMINATING", "make_context", "reap_children", "run"]


def run(options: Options, log) -> int:
    """The whole service; the exit status (0 ended, 1 setup error, 3 signal)."""
    _install_signals()
    try:
        return _run(options, log)
    except Terminated as stop:
        log.err(f"Received signal {stop.signum}; terminating")
        return 3
    except (chroot.SetupError, ContextError, SettingError) as error:
        for line in error.text.splitlines():
            log.err(line)
        return 1
    finally:
        # Past this point a SIGTERM must not raise into the interpreter's
        # shutdown (a traceback would reach the log): it ends us at once.
        for number in TERMINATING:
            signal.signal(number, _exit_by_signal)


def _run(options: Options, log) -> int:
    bounds = Bounds()  # a bad STUNNEL3_ setting is one fatal line, before anything
    chroot.close_inherited(options, log)
    _load_modules(options)
    prepare = getattr(log, "prepare_for_jail", None)
    if prepare is not None:
        prepare()
    if options.daemon is not None:
        from stunnel3 import daemon

        return daemon.serve(
            options,
            log,
            lambda ctx, fd, env: session(options, log, ctx, fd, fd, env, bounds=bounds),
        )
    chroot.warn_ignored_ids(options, log)
    allowed = None
    if jail_first(options):
        allowed = _wrappers_allow(options, 0)  # /etc/hosts.allow is outside the jail
        chroot.enter_jail(options, chroot.resolve_ids(options), log)
    ctx = make_context(options, log)
    return session(options, log, ctx, 0, 1, {}, allowed, bounds)


def jail_first(options: Options) -> bool:
    """sg2: the jail comes before the pem and the seed (they are paths inside it)."""
    if options.daemon is not None:
        return options.switch_ids_now
    return options.chroot_dir is not None or options.switch_ids_now


def make_context(options: Options, log):
    """3.22's order: the pem checked, the seed read, the TLS context; then STUNNEL_INFO.

    None where a STARTTLS server mode goes on without TLS (tls_unavailable)."""
    ctx = None
    try:
        if not options.client or options.pem is not None:
            tls.check_pem(options.pem or "stunnel.pem", log)
        chroot.seed_random(options, log)
        ctx = tls.make_context(options, log)
    except tls.PemError as error:
        tls_unavailable(options, log, error)
    _check_mode(options)  # ours, after 3.22's own checks
    log.notice(stunnel_info())
    return ctx


def tls_unavailable(options: Options, log, error: tls.PemError) -> None:
    """A pem that cannot be used stops no mail (Postfix's rule): with -n smtp-, pop3-
    or imap- the session goes on in plaintext and STARTTLS is not offered; where TLS
    is required (-n smtp, pop3) the client hears why (the layer's `unavailable`
    reply). Without -n, and in client mode, 3.22's fatal error (exit 1)."""
    if options.client or options.protocol not in SERVER_PROTOCOLS:
        raise error
    for line in error.text.splitlines():
        log.err(line)
    log.err(NO_TLS)


def _check_mode(options: Options) -> None:
    if options.client and options.remote is None and options.local_program is None:
        raise chroot.SetupError("Client mode (-c) needs -r or -l: the TLS side is the remote one")
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
    """Import now every module a session can need: the jail holds no Python."""
    import encodings.idna  # noqa: F401  socket may encode a host name
    import fcntl  # noqa: F401  -L: the pty's controlling terminal
    import termios  # noqa: F401

    from cryptography import x509  # noqa: F401  pyOpenSSL loads it lazily
    from OpenSSL import SSL

    from stunnel3 import client_negotiation, ident, limits, tls_library  # noqa: F401

    tls_library.openssl_text()  # whose OpenSSL, from /proc: the jail has none (STUNNEL_INFO)

    if options.protocol in SERVER_PROTOCOLS and not options.client:
        from stunnel3 import imap, pop3, smtp  # noqa: F401
    if options.daemon is not None:
        from stunnel3 import daemon  # noqa: F401
    # OpenSSL reads its configuration on first use: let that happen out here.
    SSL.Context(SSL.TLS_METHOD)


def _wrappers_allow(options: Options, fd: int) -> bool:
    return peer_address(fd) is None or libwrap.allows(fd, service_name(options))


# -- signals -------------------------------------------------------------------


def _terminate(signum, frame) -> None:
    # A second terminating signal (a process group's, and the warm front's relayed copy)
    # must not raise again wherever the first one's unwinding is (a weakref callback: a
    # traceback).
    for number in TERMINATING:
        signal.signal(number, _exit_by_signal)
    raise Terminated(signum)


def _exit_by_signal(signum, frame) -> None:
    os._exit(3)


def reap_children(signum=None, frame=None) -> None:
    """makesock leaves PROG2 as our child, and -l programs are ours: no zombies."""
    limits.reap_children()


def _install_signals() -> None:
    for number in TERMINATING:
        signal.signal(number, _terminate)
    signal.signal(signal.SIGCHLD, reap_children)

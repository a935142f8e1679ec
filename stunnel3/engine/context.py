"""The last steps of SPEC §2's start-up: the pem, the seed, the TLS context, STUNNEL_INFO.

3.22's order, wherever the mode puts them (service.py, daemon.py): the pem is
checked (stat, `Wrong permissions`), the seed read (chroot.seed_random), the
context made from the pem (tls.make_context), then our own checks of the mode,
and the STUNNEL_INFO line. With sg2's jail first (chroot.jail_first: inetd mode
with -/ or -i, a daemon with -i), the whole jail comes before them: the pem and
the seed are paths inside it, read as the unprivileged account (docs/jail.md).
A pem that cannot be used stops no mail: a STARTTLS server mode goes on without
TLS (tls_unavailable).
"""

import socket

from stunnel3 import chroot, tls
from stunnel3.engine.errors import SetupError
from stunnel3.engine.session import SERVER_PROTOCOLS
from stunnel3.engine.usage import stunnel_info
from stunnel3.options import Options

# Said once as the process starts (inetd mode: once a session), after the pem's own line.
NO_TLS = "TLS is not available (the certificate above cannot be used): STARTTLS is not offered"


def jail_then_context(options: Options, ids: chroot.Ids, log):
    """sg2: chroot, setgroups, setgid, setuid (chroot.enter_jail), then make_context inside."""
    chroot.enter_jail(options, ids, log)
    return make_context(options, log)


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
        raise SetupError("Client mode (-c) needs -r or -l: the TLS side is the remote one")
    if options.transparent:
        _check_transparent(options)


def _check_transparent(options: Options) -> None:
    """-T: the -r connection leaves from the client's own address (Linux IP_TRANSPARENT)."""
    if options.remote is None or options.client:
        raise SetupError("Transparent proxy (-T) works only in server mode with -r")
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_IP, getattr(socket, "IP_TRANSPARENT", 19), 1)
    except OSError as error:
        raise SetupError(
            f"Transparent proxy (-T) not supported here: setsockopt IP_TRANSPARENT: "
            f"{error.strerror} ({error.errno})"
        ) from None
    finally:
        probe.close()

"""OpenSSL's first-use work, done once in a process that forks a child per connection.

OpenSSL builds much of itself lazily and once per process: the provider's
algorithm tables at the first context, the key and certificate decoders at the
first load, the signature, key exchange and cipher methods at the first
handshake. A child forked before that pays it again on every connection (about
3 ms of CPU here: a fork of a loaded process that makes a context from an RSA
pem and does one handshake, 8 ms cold, 5 ms after a warm-up in its parent); a
child forked after it shares the result, copy-on-write. The daemon's parent
(daemon.py) and the warm helper (warm/helper.py) call warm_up() before they fork.
"""

import os

# cryptography before 40 (Debian 12: 38) loads its backend only when a key is
# made or loaded, and the daemon warms up in its jail, where no import works.
import cryptography.hazmat.backends.openssl.backend  # noqa: F401
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from stunnel3.options import Options
from stunnel3.support import on_demand, self_signed
from stunnel3.tls import RECORD, Quiet, TlsError, make_context

_DRAIN = 65536  # a handshake flight fits in one read


def warm_up(warn, ctx: SSL.Context | None = None, server: bool = True) -> None:
    """Do once what each forked child would do cold (see the top of this file).

    Given `ctx` (the daemon's own context, a `server` one or not), one
    handshake runs against it; without it (the warm helper, which
    cannot read the real pem: that is read in the jail) a throwaway RSA and a
    throwaway EC pem, made here, are loaded and each does one handshake.
    A failure costs speed, never service: one `warn(text)`, and we go on.
    """
    try:
        if ctx is None:
            for key_type in ("rsa", "ec"):
                _handshake(_throwaway_context(key_type), _throwaway_context(None))
        elif server:
            _handshake(ctx, _throwaway_context(None), quiet=ctx)
        else:  # RSA: signing with an EC key imports a module, and the daemon is jailed
            _handshake(_throwaway_context("rsa"), ctx, quiet=ctx)
    except Exception as error:  # noqa: BLE001 - see the last line of the docstring
        warn(f"TLS warm-up failed: {type(error).__name__}: {error}")


def _throwaway_context(key_type: str | None) -> SSL.Context:
    """make_context's own work; with key_type, a server's: a pem made here, loaded from PEM."""
    if key_type is not None and on_demand.deferred("cryptography.x509"):
        return _context_from(_pem_from_a_child(key_type))  # the warm helper
    ctx = make_context(Options(client=True), Quiet())  # no pem read from a file
    if key_type is not None:
        pem = _throwaway_pem(key_type)
        cert = x509.load_pem_x509_certificate(pem)
        key = serialization.load_pem_private_key(pem, None)
        try:
            ctx.use_certificate(cert)
            ctx.use_privatekey(key)  # type: ignore[arg-type]
        except TypeError:  # pyOpenSSL before 24.3 (Debian 12: 23.0) takes only its own types
            ctx.use_certificate(crypto.X509.from_cryptography(cert))
            ctx.use_privatekey(crypto.PKey.from_cryptography_key(key))  # type: ignore[arg-type]
        ctx.check_privatekey()
        ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


def _pem_from_a_child(key_type: str) -> bytes:
    """_throwaway_pem, made in a child: the warm helper leaves x509 unloaded (warm.py)."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)
            os.write(write_end, _throwaway_pem(key_type))
        finally:
            os._exit(0)
    os.close(write_end)
    with open(read_end, "rb") as pipe:
        pem = pipe.read()
    os.waitpid(child, 0)
    return pem


def _context_from(pem: bytes) -> SSL.Context:
    """A server's context from the pem, as make_context makes one from a file: an
    anonymous one (memfd)."""
    fd = os.memfd_create("warm-up.pem")
    try:
        os.write(fd, pem)
        return make_context(Options(pem=f"/proc/self/fd/{fd}"), Quiet())
    finally:
        os.close(fd)


def _throwaway_pem(key_type: str) -> bytes:
    """A key and a self-signed certificate no one will ever see.

    The daemon warms up inside its jail, where nothing may be imported: every
    module support/self_signed.py uses is loaded with x509 already."""
    import datetime

    return self_signed.pem("warm-up.invalid", key_type, datetime.timedelta(hours=1), serial=1)


def _handshake(server_ctx: SSL.Context, client_ctx: SSL.Context, quiet=None) -> None:
    """One full handshake and a record each way, over memory BIOs; raises if it fails."""
    server, client = SSL.Connection(server_ctx, None), SSL.Connection(client_ctx, None)
    server.set_accept_state()
    client.set_connect_state()
    for conn in (server, client):
        if conn.get_context() is quiet:  # its verify callback logs: not ours to call
            conn.set_verify(SSL.VERIFY_NONE, lambda *args: True)
    for _ in range(10):
        done = [_step(conn) for conn in (client, server)]
        _move(client, server)
        _move(server, client)
        if all(done):
            break
    else:
        raise TlsError("the handshake did not finish")
    client.send(b"warm-up")
    _move(client, server)
    server.recv(RECORD)
    server.send(b"warm-up")
    _move(server, client)
    client.recv(RECORD)


def _step(conn: SSL.Connection) -> bool:
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        return False
    return True


def _move(source: SSL.Connection, sink: SSL.Connection) -> None:
    try:
        sink.bio_write(source.bio_read(_DRAIN))
    except SSL.WantReadError:
        pass

"""The TLS engine: one context per process, and TLS sessions over memory BIOs.

Theory of operation
-------------------
A `TlsSession` owns no socket. It is an OpenSSL `Connection(ctx, None)`: two
memory BIOs and the TLS state machine between them. The relay moves bytes:

    network bytes in  -> receive()    (ciphertext into the incoming BIO)
    outgoing()        -> network out  (ciphertext OpenSSL wants to send)
    write(plaintext)  -> encrypted into the outgoing BIO
    read()            -> plaintext out of the incoming BIO, or None

"Want read" is the only wait there is: a memory BIO never blocks on write, so
when `handshake()` or `read()` cannot go on, OpenSSL needs more bytes from the
peer. Any operation may also have produced bytes to send (a handshake flight,
an alert, a key update reply), so the relay drains `outgoing()` after every
call, whatever the call returned.

TLS 1.3 moves some messages after the handshake: a server sends its session
tickets once the handshake is done (they leave with the next drain), and a
client receives them in the middle of application data, where `read()` eats
them and returns None ("no plaintext yet"): not an EOF, not an error.

At a protocol switch (STARTTLS) the bytes that arrived from the network after
the switching command but before the relay made the session belong to TLS
already: the protocol layer hands them back (`StartTls.early`) and the relay
feeds them first with `receive()`. Bytes the peer sent before the switch never
reach TLS.

Bulk: a memory BIO cannot block, so partial writes are off (SSL_write takes a
whole buffer and cuts its records itself, one call instead of one per 16 KiB),
and `outgoing()` sizes its read from what was written since the last drain:
one BIO_read for a whole burst, stopped by a short read rather than by an
exception. Calls that cannot change anything are not made: `outgoing()` after
no SSL call, `read()` again after "want read" with no bytes received since.
`read()` returns what one SSL_read gives (a record at most); `read_many()`
reads records up to a size into one buffer and copies them out once, for a
caller that wants fewer, larger pieces (the relay).

EOF: close_notify makes `read()` return b"". A TCP EOF without close_notify
(`receive(b"")`) reads the same (OP_IGNORE_UNEXPECTED_EOF): many SMTP clients
half-close or close after QUIT, and 3.22 treated that as a close, not an error.
Without the option OpenSSL would also refuse to write afterwards, and the
replies still owed to a half-closed client would be lost. SMTP carries its own
end markers (QUIT, the end-of-data dot), so truncation gains an attacker
nothing there.

Renegotiation is refused (OP_NO_RENEGOTIATION): a TLS 1.2 peer that asks for a
new handshake gets OpenSSL's warning alert no_renegotiation and the session goes
on as it was (RFC 5746 lets the peer choose to go on or to end it; OpenSSL peers
end it). OpenSSL says nothing of it to the caller, and an info callback cannot
be used to learn it: Python code that OpenSSL calls back loses any exception
raised in it, SIGTERM's Terminated included. But in TLS 1.2 a record's type is in
the clear, and an alert that a read (not close()) made us write, one that did
not end the session, can only be that refusal: `outgoing()` counts those records
in what it drains, and the relay logs the refusal. Any failure (a
handshake that cannot agree, a bad record) leaves the alert OpenSSL wrote in the
outgoing BIO: the relay sends it before it closes, so the peer learns why
(protocol_version, handshake_failure, ...) instead of reading a bare reset.
"""

from __future__ import annotations  # x509 may be a stand-in until first used (on_demand.py)

import os
import stat
import warnings
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from stunnel3.engine.errors import SetupError
from stunnel3.engine.tls_library import load_pem_certificates
from stunnel3.layers.protocol import TlsInfo
from stunnel3.options import Options
from stunnel3.support.record import replace

# Forward-secret key exchange only for TLS 1.2 (TLS 1.3 suites always are);
# CBC suites are kept for old mail servers that opportunistic TLS must still reach.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:ECDHE+AES:!aNULL:!eNULL"
SESSION_ID_CONTEXT = b"stunnel SID"  # 3.22's sid_ctx
RECORD = 16384  # the largest TLS record's plaintext
# SSL_MODE_ENABLE_PARTIAL_WRITE (ssl.h; pyOpenSSL turns it on for every context
# and names no constant for it): only a blocking transport needs it. Before
# pyOpenSSL 25.3 (Debian 12 has 23.0) there is no clear_mode: the mode stays on,
# and write() loops over the records one call each, slower but the same bytes.
_PARTIAL_WRITE = 0x1
_DRAIN_MIN = 65536  # a handshake flight, an alert, a ticket fit in one read
# Bulk bytes cross the binding pyOpenSSL's own recv() and bio_read() call (its
# module-level lib and ffi, in every pyOpenSSL since 0.14) into one buffer per
# session, and are copied out once: recv() and bio_read() allocate a buffer per
# call and copy it into a bytes, and read_many's join copied the records again.
# Without them, the pyOpenSSL calls it is.
try:
    _SSL_READ = SSL._lib.SSL_read  # type: ignore[attr-defined]
    _BIO_READ = SSL._lib.BIO_read  # type: ignore[attr-defined]
    _ALLOCATE = SSL._ffi.new_allocator(should_clear_after_alloc=False)  # type: ignore[attr-defined]
    _AS_BYTES = SSL._ffi.buffer  # type: ignore[attr-defined]
    _DIRECT = True
except AttributeError:  # pragma: no cover  (a pyOpenSSL without them)
    _DIRECT = False
ALERT = 0x15  # the content type of an alert record (RFC 5246 section 6.2.1)

# The X509_V_ERR_* texts a mail administrator meets most (x509_vfy.h numbers).
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self signed certificate",
    19: "self signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}


class ContextError(SetupError):
    """The pem, key or CA cannot be used; `text` is 3.22's log line, exit status 1."""


class PemError(ContextError):
    """The pem itself cannot be used (missing, unreadable, no key, another key,
    encrypted): a STARTTLS server mode goes on without TLS (context.make_context)."""


class TlsError(Exception):
    """The peer or the handshake failed; the session ends (status 0, 3.22's rule)."""


def oneline(name: x509.Name) -> str:
    """A certificate name as X509_NAME_oneline wrote it: /C=../O=../CN=.."""
    return "".join(
        f"/{attribute.rfc4514_attribute_name}={attribute.value!s}"
        for rdn in name.rdns
        for attribute in rdn
    )


def _der(cert: crypto.X509) -> bytes:
    return cert.to_cryptography().public_bytes(serialization.Encoding.DER)


def _ssl_reason(error: SSL.Error) -> str:
    """The OpenSSL reason of a pyOpenSSL error: `[('lib', 'func', 'reason')]` -> reason."""
    try:
        return "; ".join(entry[2] for entry in error.args[0]) or "unknown error"
    except (IndexError, TypeError):
        return str(error)


def check_pem(path: str, log) -> None:
    """3.22 stat()ed the pem before anything else: `<pem>: <strerror> (<errno>)`."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):  # unreadable to the jail's account: say so now
            with open(path, "rb"):
                pass
    except OSError as error:
        raise PemError(f"{path}: {error.strerror} ({error.errno})") from None
    if stat.S_IMODE(st.st_mode) & 0o007:
        log.warning(f"Wrong permissions on {path}")


# An encrypted key in PEM (PKCS #8, or OpenSSL's traditional form): OpenSSL would ask
# for its passphrase on the terminal, and with none (a jail, tcpserver) read it from
# fd 0: in inetd mode the client's connection (issue #18).
_ENCRYPTED_MARKS = (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")


def _encrypted(path: str) -> str:
    return (
        f"{path}: the private key is encrypted and no passphrase is asked: decrypt it "
        f"(openssl pkey -in {path} -out key.pem) and put key.pem in its place"
    )


class _NoPassphrase:
    """OpenSSL's passphrase callback: there is none (never the terminal, never fd 0)."""

    asked = False

    def __call__(self, maxlen: int, verify: bool, userdata) -> bytes:
        self.asked = True
        return b""


def _refuse_passphrases(ctx: SSL.Context) -> _NoPassphrase:
    callback = _NoPassphrase()
    with warnings.catch_warnings():  # pyOpenSSL 25 deprecates it, and has no other way
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.set_passwd_cb(callback)
    return callback


def _load_pem(ctx: SSL.Context, path: str, log) -> None:
    passphrase = _refuse_passphrases(ctx)
    try:
        ctx.use_certificate_chain_file(path)
    except SSL.Error as error:
        raise PemError(
            f"Error reading certificate file: {path}\n"
            f"SSL_CTX_use_certificate_chain_file: {_ssl_reason(error)}"
        ) from None
    log.debug(f"Certificate: {path}")
    try:
        with open(path, "rb") as pem:
            if any(mark in pem.read() for mark in _ENCRYPTED_MARKS):
                raise PemError(_encrypted(path))
    except OSError:
        pass  # OpenSSL's own reading says it below
    try:
        ctx.use_privatekey_file(path)
    except SSL.Error as error:
        if passphrase.asked:
            raise PemError(_encrypted(path)) from None
        reason = _ssl_reason(error)
        if "mismatch" in reason:  # OpenSSL now checks the pair here already
            raise PemError("Private key does not match the certificate") from None
        if not _has_private_key(path):  # OpenSSL 3 says `unsupported; PEM lib`
            reason = f"no private key in {path} (it must hold the key and its certificate)"
        raise PemError(f"SSL_CTX_use_PrivateKey_file: {reason}") from None
    try:
        ctx.check_privatekey()
    except SSL.Error:
        raise PemError("Private key does not match the certificate") from None


def _has_private_key(path: str) -> bool:
    """Whether the pem holds any PEM private key block (RSA, EC, PKCS#8, encrypted or not)."""
    try:
        with open(path, "rb") as pem:
            return b"PRIVATE KEY-----" in pem.read()
    except OSError:
        return True  # it was read a moment ago: let OpenSSL's reason stand


def _local_certificates(options: Options) -> set[bytes]:
    """DER of every certificate in -A and -a: level 3 wants the peer's among them."""
    texts: list[bytes] = []
    if options.ca_file:
        with open(options.ca_file, "rb") as pem:
            texts.append(pem.read())
    if options.ca_dir:
        for name in sorted(os.listdir(options.ca_dir)):
            try:
                with open(os.path.join(options.ca_dir, name), "rb") as pem:
                    texts.append(pem.read())
            except OSError:
                continue
    found: set[bytes] = set()
    for text in texts:
        try:
            certs = load_pem_certificates(text)
        except ValueError:
            continue  # not a pem: 3.22's lookup would not find anything in it either
        found.update(cert.public_bytes(serialization.Encoding.DER) for cert in certs)
    return found


def _set_verify(ctx: SSL.Context, options: Options, log) -> None:
    """3.22's verify_init: nothing at all without -v (-A and -a are not even read)."""
    if options.verify_level is None:
        ctx.set_verify(SSL.VERIFY_NONE)
        return
    level = options.verify_level
    log.debug(f"cert_defaults is {options.cert_defaults}")
    log.debug(f"cert_dir is {options.ca_dir or ''}")
    log.debug(f"cert_file is {options.ca_file or ''}")
    if options.cert_defaults & 1:  # -S 1 or 3: OpenSSL's compiled-in store
        log.debug("Initializing SSL library verify paths")
        ctx.set_default_verify_paths()
    if options.cert_defaults & 2:
        log.debug("installing defaults where not set")
    for where, is_file in ((options.ca_file, True), (options.ca_dir, False)):
        if not where:
            continue
        try:
            ctx.load_verify_locations(where if is_file else None, None if is_file else where)
        except SSL.Error as error:
            said = "loading verify certificates from" if is_file else "setting verify directory to"
            raise ContextError(
                f"Error {said} {where}\nSSL_CTX_load_verify_locations: {_ssl_reason(error)}"
            ) from None
        log.debug(f"Loaded verify certificates from {where}" if is_file else (
            f"Set verify directory to {where}"))  # fmt: skip
    if level >= 3:
        log.notice(f"Peer certificate location {options.ca_dir or ''}")
    local = _local_certificates(options) if level >= 3 else set()

    def verify(conn, cert, errnum, depth, ok):
        subject = oneline(cert.to_cryptography().subject)
        if level == 0:  # 3.22 asked for a certificate and took whatever came
            log.notice(f"VERIFY IGNORE: depth={depth}, {subject}")
            return True
        if not ok:
            reason = _VERIFY_ERRORS.get(errnum, f"error {errnum}")
            log.warning(f"VERIFY ERROR: depth={depth}, error={reason}: {subject}")
            return False
        if level >= 3 and depth == 0:
            if _der(cert) not in local:
                log.warning(f"VERIFY ERROR ONLY MY: no cert for {subject}")
                return False
        log.notice(f"VERIFY OK: depth={depth}, {subject}")
        return True

    mode = SSL.VERIFY_PEER
    if level >= 2:
        mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    ctx.set_verify(mode, verify)


# A context made ahead of make_context (prepare_context), unconfigured.
_spare: SSL.Context | None = None


def prepare_context(renew: bool = False) -> None:
    """Make this process's next context now, unless one waits already (renew: always).

    make_context then configures it instead of making one (SSL_CTX_new: ~0.5 ms of
    CPU). Made before the jail, it is OpenSSL's first use, which reads its
    configuration; made in the warm helper, every worker forked from it inherits
    it, and with it OpenSSL's session-ticket key: a client resumes its TLS
    session on any worker (the helper renews it, a new key, every hour).
    """
    global _spare
    if renew or _spare is None:
        _spare = SSL.Context(SSL.TLS_METHOD)


def _new_context() -> SSL.Context:
    global _spare
    ctx, _spare = _spare, None
    return ctx if ctx is not None else SSL.Context(SSL.TLS_METHOD)


# Server contexts the warm helper configured before it forked (keep_context): what
# make_context reads, the pem's bytes included -> the context. A worker whose jail
# holds a pem of the very same bytes takes the helper's context instead of decoding
# the pem and checking its key again: ~0.9 MB of pages less written per session
# (bench/memory_by_process.py), and the CPU of the decoding.
_kept: dict[tuple, SSL.Context] = {}
_KEPT_AT_MOST = 16  # pems in one helper: one a service directory, and a few renewed


def _keepable(options: Options) -> bool:
    """Whether make_context reads nothing but the pem: not with -v's files and callbacks,
    nor in client mode (no pem)."""
    return not options.client and options.verify_level is None


def _kept_key(options: Options, pem: bytes) -> tuple:
    """What a kept context stands for."""
    return (options.pem or "stunnel.pem", pem, options.cipher_list, options.session_timeout)


def keep_context(options: Options, path: str) -> None:
    """In the warm helper, before a fork: configure the context these options will make
    from the pem at `path` (where the helper sees the worker's pem), unless one is kept.
    Whatever fails here is left for the worker to meet, and say, as it would have."""
    if not _keepable(options):
        return
    try:
        with open(path, "rb") as pem:
            data = pem.read()
    except OSError:
        return
    key = _kept_key(options, data)
    if key in _kept:
        return
    try:  # a context of its own: the workers' spare (prepare_context) keeps its ticket key
        ctx = _configure(SSL.Context(SSL.TLS_METHOD), replace(options, pem=path), Quiet())
        with open(path, "rb") as pem:
            if pem.read() != data:  # changed while OpenSSL read it: keep nothing
                return
    except (ContextError, OSError, SSL.Error):
        return
    if len(_kept) >= _KEPT_AT_MOST:
        _kept.clear()
    _kept[key] = ctx


def forget_contexts() -> None:
    """The helper renews its session-ticket key: the kept contexts hold the old one."""
    _kept.clear()


class Quiet:
    """A log that keeps nothing: for contexts that are ours, not the administrator's
    (the helper's kept ones, the warm-up's)."""

    def __getattr__(self, name):
        return lambda *args: None


def _kept_context(options: Options, log) -> SSL.Context | None:
    """The helper's context for this pem, read here (in the jail) byte for byte."""
    if not _keepable(options):
        return None
    path = options.pem or "stunnel.pem"
    try:
        with open(path, "rb") as pem:
            ctx = _kept.get(_kept_key(options, pem.read()))
    except OSError:
        return None  # _load_pem says why
    if ctx is not None:
        log.debug(f"Certificate: {path}")  # as _load_pem says it
    return ctx


def make_context(options: Options, log) -> SSL.Context:
    """The one context of this process (daemon workers inherit it across fork)."""
    if _kept:
        kept = _kept_context(options, log)
        if kept is not None:
            return kept
    return _configure(_new_context(), options, log)


def _configure(ctx: SSL.Context, options: Options, log) -> SSL.Context:
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(
        SSL.OP_NO_COMPRESSION
        | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_IGNORE_UNEXPECTED_EOF
    )
    if hasattr(ctx, "clear_mode"):  # pyOpenSSL 25.3 and later
        ctx.clear_mode(_PARTIAL_WRITE)
    ctx.set_session_id(SESSION_ID_CONTEXT)
    ctx.set_timeout(options.session_timeout)
    # 3.22's order of checks, each fatal: the pem (check_pem first), verification, ciphers
    if not options.client or options.pem:
        _load_pem(ctx, options.pem or "stunnel.pem", log)
    _set_verify(ctx, options, log)
    try:
        ctx.set_cipher_list((options.cipher_list or DEFAULT_CIPHERS).encode())
    except SSL.Error as error:
        raise ContextError(f"SSL_CTX_set_cipher_list: {_ssl_reason(error)}") from None
    return ctx


def _alert_records(records: bytes) -> int:
    """How many alert records a run of whole TLS records holds."""
    count = position = 0
    while position + 5 <= len(records):
        count += records[position] == ALERT
        position += 5 + int.from_bytes(records[position + 3 : position + 5], "big")
    return count


class TlsSession:
    """One TLS connection over memory BIOs (see the theory of operation above)."""

    def __init__(self, ctx: SSL.Context, server: bool):
        self._conn = SSL.Connection(ctx, None)
        self._verb = "SSL_accept" if server else "SSL_connect"  # 3.22's words in errors
        if server:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()
        self.established = False
        self.renegotiations_refused = 0  # no_renegotiation alerts sent (see the top)
        self._tls12 = False  # established in TLS 1.2, where renegotiation exists
        self._read_since_drain = False  # output may hold an alert a read made
        self._done_writing = False  # close() or a failure: any alert now is not a refusal
        self._written = 0  # plaintext written since the last drain
        self._held: bytes | TlsError | None = None  # what ended read_many's last batch
        self._stirred = False  # an SSL call since the last drain (it may have output)
        self._starved = False  # the last read wanted bytes, and none came since

    def receive(self, data: bytes) -> None:
        self._starved = False
        if data:
            self._conn.bio_write(data)
        else:
            self._conn.bio_shutdown()

    def outgoing(self) -> bytes:
        if not self._stirred:
            return b""  # no SSL call since the last drain: nothing can be waiting
        self._stirred = False
        # Each record adds well under 1/64 of 16 KiB (header, tag, padding):
        # one read takes a whole burst. A full read means more may wait.
        size = max(_DRAIN_MIN, self._written + self._written // 64)
        self._written = 0
        chunks = []
        while True:
            chunk = self._drain(size)
            if not chunk:
                break
            chunks.append(chunk)
            if len(chunk) < size:
                break
        out = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self._read_since_drain:
            self._read_since_drain = False
            if not self._done_writing:
                self.renegotiations_refused += _alert_records(out)
        return out

    def _drain(self, size: int) -> bytes:
        """Up to size bytes of the outgoing BIO; b"" when it is empty."""
        if not _DIRECT:
            try:
                return self._conn.bio_read(size)
            except SSL.WantReadError:
                return b""
        buffer = self._scratch(size)
        got = _BIO_READ(self._conn._from_ssl, buffer, size)  # type: ignore[attr-defined]
        return _AS_BYTES(buffer, got)[:] if got > 0 else b""  # a memory BIO: <= 0 is empty

    def handshake(self) -> bool:
        """Advance the handshake; True once it is complete."""
        self._stirred, self._starved = True, False
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except (SSL.SysCallError, SSL.ZeroReturnError):
            raise TlsError(f"{self._verb}: Peer suddenly disconnected") from None
        except SSL.Error as error:
            raise TlsError(f"{self._verb}: {_ssl_reason(error)}") from None
        self.established = True
        self._tls12 = self._conn.get_protocol_version() == SSL.TLS1_2_VERSION
        return True

    def read(self) -> bytes | None:
        """Plaintext (up to one record), None for "need more bytes", b"" at EOF."""
        if self._starved:
            return None  # it wanted bytes and none came since: it still does
        self._stirred = True
        self._read_since_drain = self._tls12
        return self._read_outcome(lambda: self._conn.recv(RECORD))

    def _read_outcome(self, read) -> bytes | None:
        """What read() (an SSL_read, in pyOpenSSL's words) gives: its plaintext, None for
        "want read" (remembered), b"" at EOF; a failure is TlsError."""
        try:
            return read()
        except SSL.WantReadError:
            self._starved = True
            return None
        except SSL.ZeroReturnError:
            return b""
        except SSL.SysCallError:
            return b""  # EOF in the middle of a record
        except SSL.Error as error:
            self._done_writing = True
            raise TlsError(f"SSL_read: {_ssl_reason(error)}") from None

    def read_many(self, size: int) -> bytes | None:
        """Whole records joined up to about `size` bytes; None and b"" as read().

        An EOF or an error after some plaintext ends the batch: the plaintext
        goes out first, the next call reports the rest."""
        if self._held is not None:
            held, self._held = self._held, None
            if isinstance(held, TlsError):
                raise held
            return held
        if _DIRECT:
            return self._read_into_buffer(size)
        first = self.read()
        if not first:
            return first
        chunks = [first]
        total = len(first)
        while total < size:
            try:
                plain = self.read()
            except TlsError as error:
                self._held = error
                break
            if not plain:
                self._held = plain  # b"" (EOF) waits for the next call; None is not kept
                break
            chunks.append(plain)
            total += len(plain)
        return first if len(chunks) == 1 else b"".join(chunks)

    def _read_into_buffer(self, size: int) -> bytes | None:
        """read_many through SSL_read into one buffer: its records, copied out once."""
        if self._starved:
            return None
        buffer = self._scratch(size)
        ssl = self._conn._ssl  # type: ignore[attr-defined]
        self._stirred = True
        self._read_since_drain = self._tls12
        total = 0
        while total < size:
            got = _SSL_READ(ssl, buffer + total, min(RECORD, size - total))
            if got <= 0:
                break
            total += got
        else:
            return _AS_BYTES(buffer, total)[:]
        # Why it stopped, as read() says it (what recv() would have raised for this SSL_read):
        # after some plaintext, an EOF or an error waits for the next call.
        ending: bytes | TlsError | None
        try:
            ending = self._read_outcome(
                lambda: self._conn._raise_ssl_error(ssl, got)  # type: ignore[attr-defined]
            )
        except TlsError as error:
            ending = error
        if total:
            self._held = ending
            return _AS_BYTES(buffer, total)[:]
        if isinstance(ending, TlsError):
            raise ending
        return ending

    def _scratch(self, size: int) -> Any:
        """The session's buffer (cffi's char[]) of at least size bytes, made or grown at
        the first call that needs it: a session that only ever moves a few lines
        touches a page of it."""
        if self._buffer is None or len(self._buffer) < size:
            self._buffer = _ALLOCATE("char[]", size)
        return self._buffer

    _buffer: Any = None

    def write(self, data) -> None:
        """Encrypt all of data (bytes, bytearray or memoryview) into the outgoing BIO."""
        view = memoryview(data)
        self._written += len(view)
        self._stirred = True
        while view:
            try:
                sent = self._conn.send(view)
            except SSL.Error as error:
                raise TlsError(f"SSL_write: {_ssl_reason(error)}") from None
            view = view[sent:]

    def close(self) -> None:
        """Queue our close_notify (the peer's may come later or never)."""
        self._stirred = self._done_writing = True
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass

    def info(self) -> TlsInfo:
        return TlsInfo(
            version=self._conn.get_protocol_version_name(),
            cipher=self._conn.get_cipher_name() or "",
            bits=self._conn.get_cipher_bits() or 0,
        )

    def peer_names(self) -> tuple[str, str] | None:
        """(subject, issuer) of the peer's certificate, as 3.22 gave them to -l."""
        peer = self._conn.get_peer_certificate()
        if peer is None:
            return None
        cert = peer.to_cryptography()
        return oneline(cert.subject), oneline(cert.issuer)

"""What the relay loop and a protocol layer (smtp.py, imap.py, pop3.py, client_negotiation.py)
say to each other.

The relay (relay.py) owns every socket, buffer and timer; a protocol layer owns
none. It is fed bytes and answers with actions, in order:

    feed_client(data)   bytes that came from the client, the side TLS faces
                        (plaintext: before StartTls they are raw network bytes,
                        after it they are what TLS decrypted); b"" means EOF
    feed_backend(data)  bytes from the plaintext side (qmail-smtpd on -F 3, a
                        -l program, a -r service); b"" means EOF
    tls_started(info)   the handshake asked for by StartTls has completed
    start()             the session begins (before any byte is read)

and returns a list of `Action`s that the relay carries out in order. After
StartTls, every ToClient goes through TLS (queued until the handshake is done).
In client mode (-c) "client" still means the side TLS faces: the remote server.
A layer may also have a `client_paused` property: while it is True the relay
reads no more client bytes (back-pressure on a client that pipelines faster
than the backend answers), and an `awaiting` property: True while a
command/reply exchange is under way (part of a command has come, or a reply is
owed); a layer that has it is bounded per exchange and per session (relay.py,
bounds.py), one without it (Passthrough) only by idle time. ToClient(b"") and
ToBackend(b"") mean EOF: once
what is queued for that side is written, the relay half-closes it
(close_notify, or shutdown(SHUT_WR)). The session ends when both directions are closed, or at Close.
Every action takes effect before the relay waits again: a reply the layer makes
to decrypted client bytes leaves at once, with no further byte from anyone.

Without -n, `Passthrough` is the layer: every byte goes straight across.
"""

from stunnel3.support.record import record


@record(frozen=True)
class ToClient:
    data: bytes


@record(frozen=True)
class ToBackend:
    data: bytes


@record(frozen=True)
class StartTls:
    """Begin the TLS handshake on the client side now.

    `early` holds bytes the layer had already taken from the client that belong
    to the TLS stream (implicit TLS: a ClientHello sent before the greeting).
    """

    early: bytes = b""


@record(frozen=True)
class Close:
    """End the session: what is queued for either side is written, then each side
    gets EOF (close_notify once TLS is on, shutdown(SHUT_WR)), and the relay ends
    (waiting 10 s at most for a peer that reads nothing)."""

    reason: str


@record(frozen=True)
class Log:
    level: int  # syslog level, 0 emerg .. 7 debug
    text: str


Action = ToClient | ToBackend | StartTls | Close | Log


@record(frozen=True)
class TlsInfo:
    version: str  # "TLSv1.3"
    cipher: str  # "TLS_AES_256_GCM_SHA384"
    bits: int


class Passthrough:
    """No protocol: a byte-transparent relay, TLS from the first byte (3.22 without -n)."""

    def start(self) -> list[Action]:
        return [StartTls()]

    def feed_client(self, data: bytes) -> list[Action]:
        return [ToBackend(data)]

    def feed_backend(self, data: bytes) -> list[Action]:
        return [ToClient(data)]

    def tls_started(self, info: TlsInfo) -> list[Action]:
        return []

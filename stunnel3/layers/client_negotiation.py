"""Client mode -n (3.22's smtp_client, pop3_client, nntp_client) as protocol layers.

With -c -n PROTO the remote server speaks plaintext first: read its greeting,
pass the greeting to the local side, ask for TLS, and on the expected reply
start TLS; from then on every byte goes straight across. Like 3.22:

    smtp  greeting 220 (multi-line)  EHLO localhost -> 250   STARTTLS -> 220
    pop3  greeting +OK                                       STLS     -> +OK
    nntp  greeting 200 or 201                                STARTTLS -> 382

Only the greeting reaches the local client; the EHLO dialogue is ours. Bytes the
local client sends before TLS wait until TLS is up (they must never cross in
plaintext). Bytes the server sent after its last negotiation reply belong to
TLS and are handed over in StartTls.early. No sockets here (STYLE item 1).
"""

from stunnel3.layers.protocol import Action, Close, Log, StartTls, TlsInfo, ToBackend, ToClient
from stunnel3.support.record import record

MAX_LINE = 8192


@record(frozen=True)
class Step:
    send: bytes | None  # our command, None for the greeting
    expect: tuple[bytes, ...]  # accepted reply prefixes (the final line)
    error: str  # 3.22's log text when the reply is something else
    forward: bool = False  # pass the reply to the local client (the greeting)


SMTP = (
    Step(None, (b"220",), "Remote server is not RFC 1425 compliant", forward=True),
    Step(b"EHLO localhost\r\n", (b"250",), "Remote server is not RFC 1425 compliant"),
    Step(b"STARTTLS\r\n", (b"220",), "Remote server is not RFC 2487 compliant"),
)
POP3 = (
    Step(None, (b"+OK",), "Unknown server welcome", forward=True),
    Step(b"STLS\r\n", (b"+OK",), "Server does not support TLS"),
)
NNTP = (
    Step(None, (b"200", b"201"), "Unknown server welcome", forward=True),
    Step(b"STARTTLS\r\n", (b"382",), "Server does not support TLS"),
)
CLIENT_PROTOCOLS = {"smtp": SMTP, "smtp-": SMTP, "pop3": POP3, "nntp": NNTP}


class ClientNegotiation:
    """A protocol layer for the relay (see protocol.py) that runs `steps`, then passes."""

    def __init__(self, steps: tuple[Step, ...], multiline: bool):
        self.steps = list(steps)
        self.multiline = multiline  # SMTP's "250-" continuation lines
        self.incoming = bytearray()  # the server's bytes not yet parsed
        self.held = bytearray()  # the local client's bytes, until TLS
        self.held_eof = False
        self.tls = False
        self.failed = False

    def start(self) -> list[Action]:
        return self._send_next()

    def _send_next(self) -> list[Action]:
        step = self.steps[0]
        return [ToClient(step.send)] if step.send else []

    def feed_client(self, data: bytes) -> list[Action]:
        if self.tls:
            return [ToBackend(data)]
        if self.failed:
            return []
        if not data:
            return self._fail("Protocol negotiations failed: connection closed")
        self.incoming += data
        actions: list[Action] = []
        while not self.failed and not self.tls:
            end = self.incoming.find(b"\n")
            if end < 0:
                if len(self.incoming) > MAX_LINE:
                    return actions + self._fail("Protocol negotiations failed: line too long")
                break
            line = bytes(self.incoming[: end + 1])
            del self.incoming[: end + 1]
            actions += self._line(line)
        return actions

    def _line(self, line: bytes) -> list[Action]:
        step = self.steps[0]
        actions: list[Action] = [Log(7, " <- " + line.rstrip(b"\r\n").decode("latin-1"))]
        if step.forward:
            actions.append(ToBackend(line))
        if self.multiline and line[3:4] == b"-":
            return actions  # more lines of the same reply follow
        if not line.startswith(step.expect):
            return actions + self._fail(step.error)
        self.steps.pop(0)
        if self.steps:
            return actions + self._send_next()
        self.tls = True
        return actions + [StartTls(early=bytes(self.incoming))]

    def _fail(self, text: str) -> list[Action]:
        self.failed = True
        return [Log(3, text), Log(3, "Protocol negotiations failed"), Close(text)]

    def feed_backend(self, data: bytes) -> list[Action]:
        if self.tls:
            return [ToClient(data)]
        if data:
            self.held += data
        else:
            self.held_eof = True
        return []

    def tls_started(self, info: TlsInfo) -> list[Action]:
        actions: list[Action] = []
        if self.held:
            actions.append(ToClient(bytes(self.held)))
            self.held.clear()
        if self.held_eof:
            actions.append(ToClient(b""))
        return actions


def client_layer(protocol: str) -> ClientNegotiation:
    """The layer for -c -n PROTOCOL; KeyError if 3.22 had no such client negotiation."""
    steps = CLIENT_PROTOCOLS[protocol]
    return ClientNegotiation(steps, multiline=steps is SMTP)

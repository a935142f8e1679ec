"""What every STARTTLS protocol layer (smtp.py, imap.py, pop3.py) does the same way.

`LineProxy` is the part of a layer that is not the protocol: it answers the relay
(protocol.py), collects the actions a call produces, buffers what the client sent
until the layer has parsed it, and ends the session on a `ProxyError`. Each layer
keeps its own rules, states, replies and limits; it supplies:

  State       its own enum.Enum with at least COMMAND, HANDSHAKE and CLOSED, named
              on the class as COMMAND, HANDSHAKE, CLOSED
  _pump       parse the client's buffered bytes as far as the state allows
  _backend_bytes / _unfinished_response
              take the backend's bytes; what is left of a response cut by EOF

The rules kept here, once for all layers:

  EOF         client EOF stops client input; the backend gets EOF only once
              nothing the client sent is still waiting (_client_eof_due). Backend
              EOF passes what is left of a response, then EOF, then the session ends.
  errors      one family (h11's rule): a ProxyError carries the reply the client
              gets, the session then ends and all later input is ignored.
  TLS         _start_tls() asks the relay for the handshake and holds parsing in
              HANDSHAKE; when it completes, parsing resumes where STARTTLS held it.
  log         Log(7) per line only when log_dialogue; P: marks the proxy's own lines.
  commands    the proxy's idea of a command is the backend's (first_word, loggable):
              a verb ends at any blank some backend ends it at; what the proxy does
              not know, it waits on (the backend's reply decides what follows) and
              never logs; a credential or SASL data never reaches the log.
"""

import enum
import re
from typing import ClassVar

from stunnel3.protocol import Action, Close, Log, StartTls, TlsInfo, ToBackend, ToClient

# Where a verb ends and words part, for some backend: every server splits at SP;
# exim, Postfix and mailfront also at TAB (exim strips trailing white space, so
# `DATA<TAB>` is DATA to it, and mailfront takes `AUTH<TAB>LOGIN`); the other C
# isspace() bytes for servers that split with isspace(). Reading a verb in more
# lines than a backend does is safe (the reply decides what follows); fewer is not.
BLANKS = b" \t\v\f\r"
_BLANK = re.compile(rb"[ \t\v\f\r]")
# SASL mechanism names the debug log may show (RFC 4422 registry, and common X- ones).
SASL_MECHANISMS = frozenset(
    b"PLAIN LOGIN CRAM-MD5 DIGEST-MD5 GSSAPI GS2-KRB5 NTLM EXTERNAL ANONYMOUS XOAUTH2"
    b" OAUTHBEARER SCRAM-SHA-1 SCRAM-SHA-1-PLUS SCRAM-SHA-256 SCRAM-SHA-256-PLUS".split()
)


def first_word(text: bytes) -> tuple[bytes, bytes]:
    """`mail\\tFROM:<a>\\r\\n` -> (b"mail", b"FROM:<a>"): the first word (leading
    blanks skipped; it ends at any of BLANKS) and the rest, without the blanks
    around it or the line end. Callers upper-case a verb themselves. Linear in
    the line, whatever its blanks (a regular expression that backtracks over
    them cost seconds for one 16 KiB line)."""
    body = text.rstrip(BLANKS + b"\n").lstrip(BLANKS)
    blank = _BLANK.search(body)
    if blank is None:
        return body, b""
    return body[: blank.start()], body[blank.end() :].lstrip(BLANKS)


def loggable(
    verb: bytes, argument: bytes, line: bytes, known, secret, sasl, tag: bytes = b""
) -> str:
    """How the debug log shows a command line whose upper-cased verb is `verb`.

    sasl (AUTH, AUTHENTICATE): the verb, the mechanism if it is a registered
    one, *** for whatever else follows. secret (LOGIN, USER, PASS, APOP): the
    verb and ***. Another verb in `known`: the line as it came. Anything else
    only by its size: a line the proxy does not understand may be anything,
    a password sent where a command was due included. `tag` (IMAP's) goes first."""
    shown = tag.decode("latin-1") + " " if tag else ""
    if verb in sasl:
        mechanism, rest = first_word(argument)
        if mechanism.upper() not in SASL_MECHANISMS:
            return shown + verb.decode() + (" ***" if argument else "")
        return shown + f"{verb.decode()} {mechanism.upper().decode()}" + (" ***" if rest else "")
    if verb in secret:
        return shown + verb.decode() + (" ***" if argument else "")
    if verb in known:
        return line.rstrip(b"\r\n").decode("latin-1")
    return f"({len(line)} bytes: not a command this proxy knows)"


class ProxyError(Exception):
    """An error the session cannot go on from: `reply` goes to the client, then the
    session ends and input is refused (h11's rule). Errors a session survives (a
    line too long, a refused STARTTLS) are plain replies queued in turn, not these."""

    def __init__(self, reply: bytes):
        super().__init__(reply.decode("ascii").strip())
        self.reply = reply


def next_line(
    buffer: bytes, limit: int, too_long: bytes, error: type[ProxyError] = ProxyError
) -> tuple[bytes | None, bytes]:
    """(the first whole line of buffer, LF included, and the rest), or (None, buffer)
    while it has not all come; a line of more than limit bytes before its LF raises
    error(too_long), whole or partial (the bound must not depend on how bytes came)."""
    end = buffer.find(b"\n")
    if end > limit or (end < 0 and len(buffer) > limit):
        raise error(too_long)
    if end < 0:
        return None, buffer
    return buffer[: end + 1], buffer[end + 1 :]


class LineProxy:
    COMMAND: ClassVar[enum.Enum]
    HANDSHAKE: ClassVar[enum.Enum]
    CLOSED: ClassVar[enum.Enum]

    def __init__(self, log_dialogue: bool = False):
        self.log_dialogue = log_dialogue
        self.state: enum.Enum = self.COMMAND
        self.tls: TlsInfo | None = None
        self._tls_active = False  # StartTls issued (the handshake may be under way)
        # Client bytes not yet parsed. A bytearray: `del buffer[:n]` is O(1) in CPython,
        # so taking pipelined lines off its front costs no copy of the rest.
        self._client = bytearray()
        self._client_eof = False
        self._backend_eof_sent = False
        self._out: list[Action] = []

    # -- the interface the relay drives (protocol.py) --------------------------

    def start(self) -> list[Action]:
        return []

    def feed_client(self, data: bytes) -> list[Action]:
        if self.state is self.CLOSED or self._client_eof:
            return []
        if data:
            self._client += data
        else:
            self._client_eof = True
        self._guarded(self._pump)
        return self._take()

    def feed_backend(self, data: bytes) -> list[Action]:
        if self.state is self.CLOSED:
            return []
        if not data:
            leftover = self._unfinished_response()
            if leftover:  # an unfinished response still reaches the client
                self._emit(ToClient(leftover))
            self._emit(ToClient(b""))
            self._close("server closed the connection")
            return self._take()
        self._backend_bytes(data)
        return self._take()

    def tls_started(self, info: TlsInfo) -> list[Action]:
        self.tls = info
        self._log(f"P: TLS started: {info.version} {info.cipher} {info.bits} bits")
        if self.state is self.HANDSHAKE:
            self.state = self.COMMAND
            self._guarded(self._pump)
        return self._take()

    # -- what each layer supplies -----------------------------------------------

    def _pump(self) -> None:
        raise NotImplementedError

    def _backend_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    def _unfinished_response(self) -> bytes:
        raise NotImplementedError

    # -- plumbing ---------------------------------------------------------------

    def _start_tls(self, early: bytes = b"") -> None:
        """Ask the relay for the handshake; parsing waits in HANDSHAKE until it is done."""
        self._emit(StartTls(early=early))
        self._tls_active = True
        self.state = self.HANDSHAKE

    def _emit(self, action: Action) -> None:
        self._out.append(action)

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _log(self, line: str) -> None:
        if self.log_dialogue:
            self._out.append(Log(7, line))

    def _log_lines(self, prefix: str, data: bytes) -> None:
        if self.log_dialogue:
            for line in data.splitlines():
                self._log(prefix + line.decode("latin-1"))

    def _say(self, reply: bytes) -> None:
        """A reply the proxy makes itself goes to the client (logged as P:)."""
        self._log_lines("P: ", reply)
        self._emit(ToClient(reply))

    def _close(self, reason: str) -> None:
        self._emit(Close(reason))
        self.state = self.CLOSED

    def _guarded(self, step) -> None:
        if self.state is self.CLOSED:
            return
        try:
            step()
        except ProxyError as error:
            self._fail(error)

    def _fail(self, error: ProxyError) -> None:
        self._say(error.reply)
        self._close(str(error))

    def _client_eof_due(self) -> bool:
        """The client has ended and nothing it sent still waits: the backend's turn
        for EOF (once; the layer emits it with _end_backend_input)."""
        waiting = self._client and self.state is not self.CLOSED
        return self._client_eof and not waiting and not self._backend_eof_sent

    def _end_backend_input(self) -> None:
        self._emit(ToBackend(b""))
        self._backend_eof_sent = True

"""POP3 STLS proxy (-n pop3-, -n pop3): a sans-I/O state machine (SPEC section 6).

Bytes from the client and from the backend go in; actions come out (protocol.py).
The relay's calls, client buffering, EOF and the error rule are layer.LineProxy's.
The rules, each kept in one place (docs/imap-pop3.md has the reasons):

  greeting    the backend's greeting passes unchanged; no command is parsed before it.
  commands    a line ends at LF; verbs in any case; each forwarded command puts what
              its response looks like on a FIFO (RFC 2449 PIPELINING), so responses
              are framed right: RETR, TOP, CAPA, and LIST, UIDL, LANG, AUTH without
              an argument answer `+OK` with a multi-line body ended by `.`; a body
              passes uninterpreted (a mail line that reads `+OK` or `STLS` is data).
  CAPA        the body is rewritten: + STLS before TLS (once), none after it; only
              capabilities whose commands the FIFO can frame are kept.
  stop points after AUTH (SASL lines follow `+ ` continuations), STLS, and a command
              the proxy does not know, nothing is parsed until the answer; a `+ `
              to such a command makes the next line a SASL line too (the backend
              decides), and its +OK counts as a login. Verbs end at any blank
              (layer.BLANKS): `PASS<TAB>x` is a PASS.
  STLS        TLS active, arguments, or after authentication -> -ERR; client bytes
              after it -> -ERR and the session ends (CVE-2011-0411); else
              `+OK Begin TLS negotiation`, StartTls. POP3 has nothing to reset: the
              backend is still in the AUTHORIZATION state and never learns of TLS.
  -n pop3     TLS required (3.22's -n pop3 made STLS the first command): before TLS
              only CAPA, STLS and QUIT; the rest -> -ERR. CAPA then offers no USER
              or SASL, as nothing may log in yet.
  bounds      MAX_LINE per client line (a longer one gets -ERR and is dropped),
              MAX_LINE per backend line outside a body, MAX_PENDING commands.
  log         Log(7) per line when log_dialogue (C: client, S: server, P: proxy);
              USER, PASS, APOP and AUTH arguments and SASL lines show as ***, a
              multi-line body and a command the proxy does not know only as their size.
"""

import enum
from collections import deque
from dataclasses import dataclass

from stunnel3.layer import LineProxy, ProxyError, first_word, loggable, next_line
from stunnel3.protocol import ToBackend, ToClient

# RFC 2595 section 4: the positive answer to STLS; refusals as its examples word them.
BEGIN_TLS = b"+OK Begin TLS negotiation\r\n"
STLS_TWICE = b"-ERR Command not permitted when TLS active\r\n"
STLS_ARGUMENTS = b"-ERR STLS takes no arguments\r\n"
STLS_AFTER_LOGIN = b"-ERR STLS is only allowed before authentication\r\n"
# CVE-2011-0411: bytes pipelined after STLS are never forwarded, and nothing the
# client sends in plaintext afterwards can be trusted to be its own.
STLS_INJECTION = b"-ERR Commands pipelined after STLS are refused, closing connection\r\n"
# -n pop3: RFC 2449's [AUTH] response code says "log in differently" (RFC 3206).
MUST_STLS = b"-ERR [AUTH] Must issue a STLS command first\r\n"
LINE_TOO_LONG = b"-ERR Line too long\r\n"
TOO_MUCH_PIPELINING = b"-ERR Too many pipelined commands, closing connection\r\n"
BACKEND_LINE_TOO_LONG = b"-ERR Server response line too long, closing connection\r\n"
STLS_CAPABILITY = b"STLS\r\n"

# RFC 1939 section 4 says 255 octets for a command, but SASL lines after AUTH carry
# tokens as large as SMTP's (RFC 5034 section 4: no limit); SMTP's bound serves both.
MAX_LINE = 16384
MAX_PENDING = 1000
MAX_HELD = 1 << 20
MAX_CAPABILITIES = 1000

MULTILINE = frozenset({b"RETR", b"TOP", b"CAPA"})
MULTILINE_WITHOUT_ARGUMENT = frozenset({b"LIST", b"UIDL", b"LANG", b"AUTH"})
ALLOWED_BEFORE_TLS = frozenset({b"CAPA", b"STLS", b"QUIT"})
SECRET_ARGUMENTS = frozenset({b"USER", b"PASS", b"APOP"})
LOGIN_COMMANDS = frozenset({b"PASS", b"APOP", b"AUTH"})
# Commands the FIFO frames and the log shows (all but the secret ones) as they came.
KNOWN = frozenset(
    b"USER PASS APOP AUTH CAPA STLS QUIT STAT LIST RETR DELE NOOP RSET TOP UIDL LANG UTF8".split()
)
# CAPA tags whose commands answer one line or a `.`-ended body the FIFO knows
# (RFC 2449, 2595, 5034, 6856); anything else is dropped: its framing is unknown.
KEPT_CAPABILITIES = frozenset(
    {
        b"TOP",
        b"USER",
        b"SASL",
        b"RESP-CODES",
        b"LOGIN-DELAY",
        b"PIPELINING",
        b"EXPIRE",
        b"UIDL",
        b"IMPLEMENTATION",
        b"AUTH-RESP-CODE",
        b"UTF8",
        b"LANG",
    }
)


class Pop3Error(ProxyError):
    """The POP3 layer's error family (layer.ProxyError): the reply ends the session."""


class State(enum.Enum):
    COMMAND = "command"  # command lines next
    HANDSHAKE = "handshake"  # StartTls issued; tls_started next
    CLOSED = "closed"


class Expect(enum.Enum):
    GREETING = "greeting"
    SINGLE = "single"  # one line
    MULTI = "multi"  # +OK starts a body ended by "."
    CAPA = "capa"  # a body, rewritten
    AUTH = "auth"  # `+ ` continuations until the final line; may be multi (no argument)
    LOGIN = "login"  # PASS, APOP: +OK enters the TRANSACTION state
    UNKNOWN = "unknown"  # not in KNOWN: one line; `+ ` is SASL, +OK may be a login
    STLS = "stls"  # local: decided at the head of the FIFO
    LOCAL = "local"  # local: a ready reply


STOP_POINTS = frozenset({Expect.GREETING, Expect.AUTH, Expect.STLS, Expect.UNKNOWN})
SASL_EXPECTS = frozenset({Expect.AUTH, Expect.UNKNOWN})  # may answer `+ `: SASL follows
LOGIN_EXPECTS = frozenset({Expect.LOGIN, Expect.AUTH, Expect.UNKNOWN})


@dataclass
class Pending:
    expect: Expect
    reply: bytes = b""  # LOCAL: the reply; STLS: its arguments
    multi: bool = False  # AUTH without a mechanism: a body of mechanisms


def split_command(line: bytes) -> tuple[bytes, bytes]:
    verb, argument = first_word(line)
    return verb.upper(), argument


def shown(verb: bytes, argument: bytes, line: bytes) -> str:
    """The command as the debug log may show it: no user name, password or SASL data,
    and only the size of a line the proxy does not know (layer.loggable)."""
    return loggable(verb, argument, line, KNOWN, SECRET_ARGUMENTS, {b"AUTH"})


def capability_tag(line: bytes) -> bytes:
    return line.strip().split(b" ", 1)[0].upper()


class Body:
    """A multi-line body (RFC 1939 section 3): bytes pass until a line that is `.`.

    `bytes.find(b"\\n.")` is the only scan, so a large RETR costs no per-line work;
    the few bytes that might begin the end line are held across feeds."""

    def __init__(self) -> None:
        self._held = b""
        self._line_start = True  # the next byte begins a line
        self.size = 0

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """(bytes to pass on, None) or (the rest of the body with its end, bytes after)."""
        buffer = self._held + data
        self._held = b""
        start = 0 if self._line_start else None
        position = 0
        while True:
            if start is None:
                found = buffer.find(b"\n.", position)
                if found < 0:
                    self._line_start = buffer.endswith(b"\n")
                    return self._pass(buffer), None
                start = found + 1
            tail = buffer[start : start + 3]
            for end in (b".\r\n", b".\n"):
                if tail.startswith(end):
                    cut = start + len(end)
                    return self._pass(buffer[:cut]), buffer[cut:]
            if tail in (b"", b".", b".\r"):  # may still become the end line
                self._held, self._line_start = buffer[start:], True
                return self._pass(buffer[:start]), None
            position, start = start, None

    def _pass(self, data: bytes) -> bytes:
        self.size += len(data)
        return data


class Pop3Proxy(LineProxy):
    """require_tls: -n pop3 (STLS first); False for -n pop3- (plaintext fallback)."""

    COMMAND, HANDSHAKE, CLOSED = State.COMMAND, State.HANDSHAKE, State.CLOSED

    def __init__(self, require_tls: bool = False, log_dialogue: bool = False):
        super().__init__(log_dialogue)
        self.require_tls = require_tls
        self._logged_in = False  # a +OK to PASS, APOP or AUTH: the TRANSACTION state
        self._sasl = False  # the next client line answers a `+ ` continuation
        self._discarding = False  # the rest of a too-long line is being dropped
        self._server = b""
        self._body: Body | None = None
        self._capabilities: list[bytes] | None = None  # a CAPA body being collected
        self._pending: deque[Pending] = deque([Pending(Expect.GREETING)])

    # -- the backend's bytes (the rest of the relay's interface is LineProxy's) --

    def _backend_bytes(self, data: bytes) -> None:
        self._server += data
        self._guarded(self._responses)
        self._guarded(self._pump)

    def _unfinished_response(self) -> bytes:
        return self._server

    def _queue(self, entry: Pending) -> None:
        self._pending.append(entry)
        self._answer_local()

    # -- the client side --------------------------------------------------------

    def _pump(self) -> None:
        while self.state is State.COMMAND and self._client:
            if self._discarding:
                end = self._client.find(b"\n")
                del self._client[: end + 1 if end >= 0 else len(self._client)]
                self._discarding = end < 0
                continue
            stopped = self._pending and (
                self._pending[-1].expect in STOP_POINTS or len(self._pending) >= MAX_PENDING
            )
            if (stopped and not self._sasl) or not self._next_line():
                break
        if len(self._client) > MAX_HELD:
            raise Pop3Error(TOO_MUCH_PIPELINING)
        if self._client_eof_due():
            self._end_backend_input()

    def _next_line(self) -> bool:
        end = self._client.find(b"\n")
        if end < 0 or end >= MAX_LINE:
            if len(self._client) < MAX_LINE:
                if self._client_eof:
                    self._client.clear()  # a command cut by EOF is not a command
                return False
            self._discarding = True
            self._log("C: (line too long)")
            self._queue(Pending(Expect.LOCAL, LINE_TOO_LONG))
            return True
        line = bytes(self._client[: end + 1])
        del self._client[: end + 1]
        if self._sasl:
            self._sasl = False
            self._log("C: ***")
            self._emit(ToBackend(line))
            return True
        self._command(line)
        return True

    def _command(self, line: bytes) -> None:
        verb, argument = split_command(line)
        self._log("C: " + shown(verb, argument, line))
        if self.require_tls and not self._tls_active and verb not in ALLOWED_BEFORE_TLS:
            self._queue(Pending(Expect.LOCAL, MUST_STLS))
        elif verb == b"STLS":
            self._queue(Pending(Expect.STLS, argument))
        else:
            self._emit(ToBackend(line))
            self._queue(self._expectation(verb, argument))

    @staticmethod
    def _expectation(verb: bytes, argument: bytes) -> Pending:
        if verb == b"CAPA":
            return Pending(Expect.CAPA)
        if verb == b"AUTH":
            return Pending(Expect.AUTH, multi=not argument)
        if verb in LOGIN_COMMANDS:
            return Pending(Expect.LOGIN)
        if verb not in KNOWN:
            return Pending(Expect.UNKNOWN)
        multi = verb in MULTILINE or (verb in MULTILINE_WITHOUT_ARGUMENT and not argument)
        return Pending(Expect.MULTI if multi else Expect.SINGLE)

    # -- the answers, in FIFO order -----------------------------------------------

    def _answer_local(self) -> None:
        while self._pending and self._pending[0].expect in (Expect.LOCAL, Expect.STLS):
            entry = self._pending.popleft()
            if entry.expect is Expect.LOCAL:
                self._say(entry.reply)
            elif self._stls(entry.reply):
                return

    def _stls(self, argument: bytes) -> bool:
        """Answer STLS; True if TLS starts (nothing more is answered before it)."""
        if self._tls_active:
            self._say(STLS_TWICE)
        elif argument:
            self._say(STLS_ARGUMENTS)
        elif self._logged_in:
            self._say(STLS_AFTER_LOGIN)
        elif self._client:
            raise Pop3Error(STLS_INJECTION)
        else:
            self._say(BEGIN_TLS)
            self._start_tls()
            return True
        return False

    def _responses(self) -> None:
        """Take the backend's bytes as far as whole responses (and bodies) go."""
        while self._server and self.state is not State.CLOSED:
            if self._body is not None:
                self._body_bytes()
                continue
            line, self._server = next_line(self._server, MAX_LINE, BACKEND_LINE_TOO_LONG, Pop3Error)
            if line is None:
                return
            self._response_line(line)

    def _response_line(self, line: bytes) -> None:
        if self._capabilities is not None:
            self._capability_line(line)
            return
        self._log("S: " + line.rstrip(b"\r\n").decode("latin-1"))
        if not self._pending:  # unsolicited (a -ERR before a shutdown): pass it on
            self._emit(ToClient(line))
            return
        entry = self._pending[0]
        if entry.expect in SASL_EXPECTS and line[:1] == b"+" and line[:3] != b"+OK":
            self._sasl = True  # a SASL challenge: the client's next line answers it
            self._emit(ToClient(line))
            return
        positive = line[:3] == b"+OK"
        multi = entry.expect in (Expect.MULTI, Expect.CAPA) or entry.multi
        if positive and entry.expect is Expect.CAPA:
            self._capabilities = [line]
            return
        self._emit(ToClient(line))
        if positive and multi:
            self._body = Body()
            return
        if positive and entry.expect in LOGIN_EXPECTS:
            self._logged_in = True
        self._sasl = False
        self._done()

    def _done(self) -> None:
        """A response is complete: answer what waited for it, parse what it held up."""
        self._pending.popleft()
        self._answer_local()
        self._pump()

    def _body_bytes(self) -> None:
        assert self._body is not None
        data, rest = self._body.feed(self._server)
        self._server = b""
        if data:
            self._emit(ToClient(data))
        if rest is not None:
            self._log(f"S: (multi-line response, {self._body.size} bytes)")
            self._body = None
            self._server = rest
            self._done()

    def _capability_line(self, line: bytes) -> None:
        assert self._capabilities is not None
        if line.rstrip(b"\r\n") != b".":
            if len(self._capabilities) > MAX_CAPABILITIES:
                raise Pop3Error(BACKEND_LINE_TOO_LONG)
            self._capabilities.append(line)
            return
        lines = self.rewrite_capabilities(self._capabilities) + [line]
        self._capabilities = None
        for shown in lines:
            self._log("P: " + shown.rstrip(b"\r\n").decode("latin-1"))
        self._emit(ToClient(b"".join(lines)))
        self._done()

    def rewrite_capabilities(self, lines: list[bytes]) -> list[bytes]:
        """The CAPA response (its +OK line first) as the client must see it."""
        kept = [lines[0]]
        for line in lines[1:]:
            tag = capability_tag(line)
            if tag not in KEPT_CAPABILITIES:
                continue
            if self.require_tls and not self._tls_active and tag in (b"USER", b"SASL"):
                continue  # nothing may log in before TLS
            kept.append(line)
        if not self._tls_active:
            kept.append(STLS_CAPABILITY)
        return kept

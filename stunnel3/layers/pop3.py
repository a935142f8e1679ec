"""POP3 STLS proxy (-n pop3-, -n pop3): a sans-I/O state machine (SPEC section 6).

Bytes from the client and from the backend go in; actions come out (protocol.py).
The relay's calls, both buffers, the FIFO of responses, local answers, the STLS
decision and EOF are line_proxy.LineProxy's; this file is POP3's tables and rules,
each kept in one place (docs/imap-pop3.md has the reasons):

  greeting    the backend's greeting passes unchanged; no command is parsed before it.
  commands    a line ends at LF; verbs in any case; each forwarded command puts what
              its response looks like on a FIFO (RFC 2449 PIPELINING), so responses
              are framed right: RETR, TOP, CAPA, and LIST, UIDL, LANG, AUTH without
              an argument answer `+OK` with a multi-line body ended by `.`; a body
              passes uninterpreted (a mail line that reads `+OK` or `STLS` is data).
  Phase       AUTHORIZATION -> TRANSACTION (RFC 1939 section 3): a +OK to PASS,
              APOP, AUTH or a command the proxy does not know (it might log in).
  CAPA        the body is rewritten: + STLS before TLS (once), none after it; only
              capabilities whose commands the FIFO can frame are kept.
  stop points after AUTH (SASL lines follow `+ ` continuations), STLS, and a command
              the proxy does not know, nothing is parsed until the answer; a `+ `
              to such a command makes the next line a SASL line too (the backend
              decides), and its +OK counts as a login. Verbs end at any blank
              (lines.BLANKS): `PASS<TAB>x` is a PASS.
  logins      before TLS, unless plaintext_auth (and not require_tls): USER, PASS,
              APOP, AUTH -> -ERR [AUTH], never forwarded, nor lines pipelined behind
              AUTH that are not commands; the line a `+ ` to an unknown command asks
              for goes to the backend as `*`; CAPA offers no USER or SASL.
  STLS        not offered, TLS active, arguments, or after authentication -> -ERR; client bytes
              after it -> -ERR and the session ends (CVE-2011-0411); else
              `+OK Begin TLS negotiation`, StartTls. POP3 has nothing to reset: the
              backend is still in the AUTHORIZATION state and never learns of TLS.
  -n pop3     TLS required (3.22's -n pop3 made STLS the first command): before TLS
              only CAPA, STLS and QUIT; the rest -> -ERR; and TLS not offered: -ERR
              instead of the greeting, the end.
  bounds      MAX_LINE per client line (a longer one gets -ERR and is dropped),
              MAX_LINE per backend line outside a body, MAX_PENDING commands.
  log         Log(7) per line when log_dialogue (C: client, S: server, P: proxy);
              USER, PASS, APOP and AUTH arguments and SASL lines show as ***, a
              multi-line body and a command the proxy does not know only as their size.
"""

import enum
from collections.abc import Callable, Mapping
from typing import ClassVar

from stunnel3.layers import line_proxy
from stunnel3.layers.lines import first_word, log_text, loggable
from stunnel3.layers.protocol import ToBackend, ToClient
from stunnel3.layers.runs import Scan

# RFC 2595 section 4: the positive answer to STLS; refusals as its examples word them.
BEGIN_TLS = b"+OK Begin TLS negotiation\r\n"
STLS_TWICE = b"-ERR Command not permitted when TLS active\r\n"
STLS_ARGUMENTS = b"-ERR STLS takes no arguments\r\n"
STLS_AFTER_LOGIN = b"-ERR STLS is only allowed before authentication\r\n"
# STLS when TLS cannot be had here (the client's policy, or the certificate).
STLS_NOT_OFFERED = b"-ERR STLS is not available on this connection\r\n"
# CVE-2011-0411: bytes pipelined after STLS are never forwarded, and nothing the
# client sends in plaintext afterwards can be trusted to be its own.
STLS_INJECTION = b"-ERR Commands pipelined after STLS are refused, closing connection\r\n"
# -n pop3: RFC 2449's [AUTH] response code says "log in differently" (RFC 3206).
MUST_STLS = b"-ERR [AUTH] Must issue a STLS command first\r\n"
# USER, PASS, APOP, AUTH before TLS while credentials are refused in plaintext (the
# default): [AUTH], as above; also to what a client sent behind AUTH without waiting.
LOGIN_NEEDS_TLS = b"-ERR [AUTH] Login is only allowed over TLS (STLS)\r\n"
# TLS required and not available: instead of the greeting, then the end (RFC 3206).
TLS_REQUIRED_UNAVAILABLE = (
    b"-ERR [SYS/TEMP] TLS is required but not available here, closing connection\r\n"
)
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

LIMITS = line_proxy.Limits(
    MAX_LINE, MAX_PENDING, MAX_HELD, LINE_TOO_LONG, TOO_MUCH_PIPELINING, BACKEND_LINE_TOO_LONG
)
STARTTLS_REPLIES = line_proxy.StartTlsReplies(
    BEGIN_TLS,
    not_offered=STLS_NOT_OFFERED,
    twice=STLS_TWICE,
    arguments=STLS_ARGUMENTS,
    authenticated=STLS_AFTER_LOGIN,
    injection=STLS_INJECTION,
)

MULTILINE = frozenset({b"RETR", b"TOP", b"CAPA"})
MULTILINE_WITHOUT_ARGUMENT = frozenset({b"LIST", b"UIDL", b"LANG", b"AUTH"})
ALLOWED_BEFORE_TLS = frozenset({b"CAPA", b"STLS", b"QUIT"})
POLICY_REPLIES = line_proxy.PolicyReplies(
    ALLOWED_BEFORE_TLS,
    MUST_STLS,
    unavailable=TLS_REQUIRED_UNAVAILABLE,
    credentials=frozenset({b"USER", b"PASS", b"APOP", b"AUTH"}),
    sasl=frozenset({b"AUTH"}),
    encryption_required=LOGIN_NEEDS_TLS,
    sasl_data_refused=LOGIN_NEEDS_TLS,
)
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


class Pop3Error(line_proxy.ProxyError):
    """The POP3 layer's error family (line_proxy.ProxyError): the reply ends the session."""


class Phase(enum.Enum):
    """RFC 1939 section 3: what the backend's answers made of the session."""

    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"  # a +OK to a login: STLS no longer allowed


class Expect(enum.Enum):
    """What the response at the head of the FIFO looks like."""

    GREETING = "greeting"
    SINGLE = "single"  # one line
    MULTI = "multi"  # +OK starts a body ended by "."
    CAPA = "capa"  # a body, rewritten
    AUTH = "auth"  # `+ ` continuations until the final line
    AUTH_LIST = "auth list"  # AUTH without a mechanism: as AUTH, but +OK starts a body
    LOGIN = "login"  # PASS, APOP: +OK enters the TRANSACTION state
    UNKNOWN = "unknown"  # not in KNOWN: one line; `+ ` is SASL, +OK may be a login


STOP_POINTS = frozenset({Expect.GREETING, Expect.AUTH, Expect.AUTH_LIST, Expect.UNKNOWN})


def split_command(line: bytes) -> tuple[bytes, bytes]:
    verb, argument = first_word(line)
    return verb.upper(), argument


def shown(verb: bytes, argument: bytes, line: bytes) -> str:
    """The command as the debug log may show it: no user name, password or SASL data,
    and only the size of a line the proxy does not know (lines.loggable)."""
    return loggable(verb, argument, line, KNOWN, SECRET_ARGUMENTS, {b"AUTH"})


def capability_tag(line: bytes) -> bytes:
    return line.strip().split(b" ", 1)[0].upper()


def expectation(verb: bytes, argument: bytes) -> Expect:
    """What the response to a forwarded command looks like."""
    if verb == b"CAPA":
        return Expect.CAPA
    if verb == b"AUTH":
        return Expect.AUTH if argument else Expect.AUTH_LIST
    if verb in LOGIN_COMMANDS:
        return Expect.LOGIN
    if verb not in KNOWN:
        return Expect.UNKNOWN
    multi = verb in MULTILINE or (verb in MULTILINE_WITHOUT_ARGUMENT and not argument)
    return Expect.MULTI if multi else Expect.SINGLE


class Body(Scan):
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


class Pop3Proxy(line_proxy.LineProxy):
    """require_tls: -n pop3 (STLS first); False for -n pop3- (plaintext fallback).
    offer_tls, plaintext_auth, log_dialogue: line_proxy.LineProxy's (the client's policy)."""

    ClientError = BackendError = Pop3Error
    LIMITS, STARTTLS_REPLIES, POLICY_REPLIES = LIMITS, STARTTLS_REPLIES, POLICY_REPLIES
    STOP_POINTS = STOP_POINTS

    def __init__(self, **options: bool):
        super().__init__(**options)
        self.phase = Phase.AUTHORIZATION
        self._capabilities: list[bytes] | None = None  # a CAPA body being collected
        self._pending.append(line_proxy.Pending(Expect.GREETING))

    def _authenticated(self) -> bool:
        return self.phase is Phase.TRANSACTION

    # -- the client side --------------------------------------------------------

    def _command_line(self, line: bytes) -> None:
        verb, argument = split_command(line)
        self._log("C: " + shown(verb, argument, line))
        self._command(line_proxy.Command(verb, argument, line))

    def _forward(self, command: line_proxy.Command) -> None:
        self._emit(ToBackend(command.line))
        self._queue(line_proxy.Pending(expectation(command.verb, command.argument)))

    def _is_command(self, command: line_proxy.Command) -> bool:
        return command.verb in KNOWN

    def _stls_command(self, command: line_proxy.Command) -> None:
        self._queue(line_proxy.Pending(line_proxy.Local.STARTTLS, argument=command.argument))

    # -- the answers, in FIFO order -----------------------------------------------

    def _response_line(self, line: bytes) -> None:
        if self._capabilities is not None:
            self._capability_line(line)
            return
        self._log("S: " + log_text(line))
        if not self._pending:  # unsolicited (a -ERR before a shutdown): pass it on
            self._emit(ToClient(line))
            return
        self.REPLIES.get(self._pending[0].kind, Pop3Proxy._single)(self, line)

    def _single(self, line: bytes) -> None:
        self._emit(ToClient(line))
        self._done()

    def _multi(self, line: bytes) -> None:
        self._emit(ToClient(line))
        if line[:3] == b"+OK":
            self._server_run.start(Body(), self._body_end)
        else:
            self._done()

    def _capa(self, line: bytes) -> None:
        if line[:3] == b"+OK":
            self._capabilities = [line]
        else:
            self._single(line)

    def _login(self, line: bytes) -> None:
        if line[:3] == b"+OK":
            self.phase = Phase.TRANSACTION
        self._single(line)

    def _sasl(self, line: bytes) -> None:
        """AUTH, or a command the proxy does not know: the backend decides."""
        if line[:1] == b"+" and line[:3] != b"+OK":
            self._emit(ToClient(line))  # a SASL challenge: the client's next line answers it
            if self.state is line_proxy.State.COMMAND:
                self._move(line_proxy.Event.CHALLENGE)
        elif self._pending[0].kind is Expect.AUTH_LIST:
            self._multi(line)
        else:
            self._login(line)

    def _done(self) -> None:
        """A response is complete: answer what waited for it, parse what it held up."""
        self._pending.popleft()
        if self.state is line_proxy.State.CONTINUATION:
            self._move(line_proxy.Event.ANSWER)
        self._answer_local()
        self._pump()

    def _body_end(self, body) -> None:
        self._log(f"S: (multi-line response, {body.size} bytes)")
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
        for kept in lines:
            self._log("P: " + log_text(kept))
        self._emit(ToClient(b"".join(lines)))
        self._done()

    def rewrite_capabilities(self, lines: list[bytes]) -> list[bytes]:
        """The CAPA response (its +OK line first) as the client must see it."""
        kept = [lines[0]]
        for line in lines[1:]:
            tag = capability_tag(line)
            if tag not in KEPT_CAPABILITIES:
                continue
            if self._credentials_refused() and tag in (b"USER", b"SASL"):
                continue  # nothing may log in before TLS
            kept.append(line)
        if self.offer_tls and not self._tls_active:
            kept.append(STLS_CAPABILITY)
        return kept

    # -- the tables -------------------------------------------------------------

    # The commands the proxy answers itself (the rest: LineProxy._command).
    COMMANDS: ClassVar[Mapping[bytes, Callable[["Pop3Proxy", line_proxy.Command], None]]] = {
        b"STLS": _stls_command,
    }
    # What a response's first line does, by what it answers; else _single.
    REPLIES: ClassVar[Mapping[enum.Enum, Callable[["Pop3Proxy", bytes], None]]] = {
        Expect.MULTI: _multi,
        Expect.CAPA: _capa,
        Expect.LOGIN: _login,
        Expect.AUTH: _sasl,
        Expect.AUTH_LIST: _sasl,
        Expect.UNKNOWN: _sasl,
    }

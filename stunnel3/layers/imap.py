"""IMAP STARTTLS proxy (-n imap-, sg2): a sans-I/O state machine (SPEC section 6).

Bytes from the client and from the backend go in; actions come out (protocol.py).
The relay's calls, both buffers, the list of pending commands, local answers, the
STARTTLS decision and EOF are line_proxy.LineProxy's; this file is IMAP's tables and
rules, each kept in one place (docs/imap-pop3.md has the reasons):

  framing     a line ends at LF. A line ending in `{n}` or `{n+}` (also `~{n}`,
              RFC 3516) announces a literal: the next n bytes are passed on and never
              interpreted, then the line goes on. That holds both ways, so a mail
              that reads `a1 OK` or `* CAPABILITY` is data. A synchronising `{n}`
              from the client waits for the server's `+` (or the command's end).
  commands    each tagged command forwarded goes on the list (line_proxy.Pending, by
              tag); its tagged completion takes it off (REPLIES: what it does then).
              The greeting comes first: nothing is parsed before it.
  Phase       NOT_AUTHENTICATED -> AUTHENTICATED (RFC 9051 section 3): a PREAUTH
              greeting, or an OK to LOGIN, AUTHENTICATE or a command the proxy
              does not know (it might log in: it counts).
  stop points after STARTTLS, AUTHENTICATE and IDLE nothing is parsed until the
              answer; AUTHENTICATE and IDLE take one client line per `+` from the
              server (SASL data, DONE), and so does a command the proxy does not
              know (the server decides; that line is never logged). Words end at
              any blank (lines.BLANKS): `a LOGIN<TAB>...` is a LOGIN.
  CAPABILITY  in `* CAPABILITY` responses and `[CAPABILITY ...]` response codes:
              + STARTTLS before TLS (once, if offered), none after it; COMPRESS=*
              dropped (the stream could not be followed), and the COMPRESS command
              refused. Before TLS, while logins are refused: LOGINDISABLED, no AUTH=.
              Else the backend's LOGINDISABLED passes: it is the backend that refuses.
  logins      before TLS, unless plaintext_auth (and not require_tls): LOGIN and
              AUTHENTICATE -> `tag NO [PRIVACYREQUIRED]`, never forwarded, their
              literals dropped (a synchronising one is never sent); a bare line behind
              a refused AUTHENTICATE -> `* BAD` (maybe its SASL data); the line a `+`
              to an unknown command asks for goes to the backend as `*`.
  required    (the client's policy) before TLS only CAPABILITY NOOP LOGOUT ID
              STARTTLS; the rest -> `tag NO [PRIVACYREQUIRED]`; and TLS not offered
              -> a BYE greeting, the end.
  STARTTLS    decided when no earlier command is pending: not offered, after TLS, with
              arguments, or once authenticated (PREAUTH, or OK to LOGIN or
              AUTHENTICATE) -> `tag BAD`; client bytes after it -> `tag BAD`, `* BYE`
              and the session ends (CVE-2011-0411); else `tag OK Begin TLS
              negotiation now`, StartTls. IMAP has no reset: the backend stays as it
              was and never learns of TLS; clients ask CAPABILITY again.
  local       the proxy's own responses go out only between the server's
              responses, never inside one.
  bounds      MAX_LINE per line outside literals, both ways (the session ends:
              IMAP cannot resynchronise inside a command); MAX_PENDING commands.
  log         Log(7) per line when log_dialogue (C: client, S: server, P: proxy);
              LOGIN's arguments, AUTHENTICATE's data and the lines and literals
              that follow them show as ***, other literals only as their size, and
              a command the proxy does not know only by its size.
"""

import enum
import re
from collections.abc import Callable, Mapping
from typing import ClassVar

from stunnel3.layers import line_proxy
from stunnel3.layers.lines import first_word, log_text, loggable
from stunnel3.layers.protocol import ToBackend, ToClient
from stunnel3.layers.runs import Count

# RFC 2595 section 3.1 and RFC 9051 section 6.2.1 wording.
BEGIN_TLS = b"OK Begin TLS negotiation now\r\n"
STARTTLS_TWICE = b"BAD TLS already active\r\n"
STARTTLS_ARGUMENTS = b"BAD STARTTLS takes no arguments\r\n"
STARTTLS_AUTHENTICATED = b"BAD STARTTLS is only allowed before authentication\r\n"
# STARTTLS when TLS cannot be had here (the client's policy, or the certificate).
STARTTLS_NOT_OFFERED = b"BAD STARTTLS is not available on this connection\r\n"
# CVE-2011-0411: bytes pipelined after STARTTLS are never forwarded.
STARTTLS_INJECTION = b"BAD Commands pipelined after STARTTLS are refused\r\n"
CLOSING = b"* BYE Closing connection\r\n"
# RFC 4978: the proxy could not follow a compressed stream.
COMPRESS_REFUSED = b"NO [CANNOT] COMPRESS is not available through this proxy\r\n"
LINE_TOO_LONG = b"* BYE [TOOBIG] Line too long, closing connection\r\n"
TOO_MUCH_PIPELINING = b"* BYE Too many pipelined commands, closing connection\r\n"
BACKEND_LINE_TOO_LONG = b"* BYE Server response line too long, closing connection\r\n"
LOCAL_WITH_LITERAL = b"* BYE Literal after a command the proxy answers, closing connection\r\n"
# RFC 9051 section 6.2.3, RFC 5530: LOGIN and AUTHENTICATE before TLS while credentials
# are refused in plaintext (the default; the client was told LOGINDISABLED).
LOGIN_NEEDS_TLS = b"NO [PRIVACYREQUIRED] Login is only allowed over TLS (STARTTLS)\r\n"
# A bare line (no command) behind a refused AUTHENTICATE: maybe its SASL data.
SASL_DATA_REFUSED = b"* BAD [PRIVACYREQUIRED] Not forwarded: SASL data is only allowed over TLS\r\n"
# TLS required for this client (its policy): before STARTTLS only ALLOWED_BEFORE_TLS.
MUST_STARTTLS = b"NO [PRIVACYREQUIRED] TLS is required: issue STARTTLS first\r\n"
# RFC 9051 section 7.1.5: a BYE greeting; RFC 5530 UNAVAILABLE.
TLS_REQUIRED_UNAVAILABLE = (
    b"* BYE [UNAVAILABLE] TLS is required but not available here, closing connection\r\n"
)

# RFC 9051 section 4 sets no line length; RFC 7162 section 4 asks for 8192 octets
# at least. Long UID sets and SEARCH results come as one line, so 1 MiB per line.
MAX_LINE = 1 << 20
MAX_PENDING = 1000
MAX_HELD = 2 << 20

LIMITS = line_proxy.Limits(
    MAX_LINE, MAX_PENDING, MAX_HELD, LINE_TOO_LONG, TOO_MUCH_PIPELINING, BACKEND_LINE_TOO_LONG
)
STARTTLS_REPLIES = line_proxy.StartTlsReplies(
    BEGIN_TLS,
    not_offered=STARTTLS_NOT_OFFERED,
    twice=STARTTLS_TWICE,
    arguments=STARTTLS_ARGUMENTS,
    authenticated=STARTTLS_AUTHENTICATED,
    injection=CLOSING,
    injection_answer=STARTTLS_INJECTION,
)
ALLOWED_BEFORE_TLS = frozenset({b"CAPABILITY", b"NOOP", b"LOGOUT", b"STARTTLS", b"ID"})
POLICY_REPLIES = line_proxy.PolicyReplies(
    ALLOWED_BEFORE_TLS,
    MUST_STARTTLS,
    unavailable=TLS_REQUIRED_UNAVAILABLE,
    credentials=frozenset({b"LOGIN", b"AUTHENTICATE"}),
    sasl=frozenset({b"AUTHENTICATE"}),
    encryption_required=LOGIN_NEEDS_TLS,
    sasl_data_refused=SASL_DATA_REFUSED,
)

LITERAL = re.compile(rb"~?\{([0-9]{1,19})(\+?)\}\r?\n\Z")
OK = re.compile(rb"OK\b")
CAPABILITY_CODE = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)


class ImapError(line_proxy.ProxyError):
    """The IMAP layer's error family (line_proxy.ProxyError): the reply ends the session."""


class Phase(enum.Enum):
    """RFC 9051 section 3: what the backend's answers made of the session."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"  # PREAUTH, or an OK to a login


class Kind(enum.Enum):
    """What a pending command is, for what its responses do."""

    GREETING = "greeting"
    LOGIN = "login"  # OK: authenticated; arguments are secret
    AUTHENTICATE = "authenticate"  # SASL lines after each `+`
    IDLE = "idle"  # DONE after the `+`
    OTHER = "other"  # a command in KNOWN
    UNKNOWN = "unknown"  # any other: a `+` makes the next line its, and secret


STOP_POINTS = frozenset({Kind.GREETING, Kind.AUTHENTICATE, Kind.IDLE})
CONTINUED = frozenset({Kind.AUTHENTICATE, Kind.IDLE})
# After a `+` to one of these, the client's next line is the command's (not a command).
ASKS_A_LINE = CONTINUED | {Kind.UNKNOWN}
KINDS = {b"LOGIN": Kind.LOGIN, b"AUTHENTICATE": Kind.AUTHENTICATE, b"IDLE": Kind.IDLE}
# Whose continuation lines and literals the log shows only as ***.
SECRET_KINDS = frozenset({Kind.LOGIN, Kind.AUTHENTICATE, Kind.UNKNOWN})
# Commands the log shows as they came (RFC 9051 and the common extensions). Not a
# stop point: an unknown command is not one either (a server may answer a garbled
# one with `* BAD` and no tagged end, which a stop would wait for forever).
KNOWN = frozenset(
    b"CAPABILITY NOOP LOGOUT STARTTLS COMPRESS ENABLE SELECT EXAMINE CREATE DELETE RENAME"
    b" SUBSCRIBE UNSUBSCRIBE LIST LSUB XLIST NAMESPACE STATUS APPEND CHECK CLOSE UNSELECT"
    b" EXPUNGE SEARCH FETCH STORE COPY MOVE UID ID IDLE GETQUOTA GETQUOTAROOT SETQUOTA"
    b" GETACL SETACL DELETEACL LISTRIGHTS MYRIGHTS SORT THREAD ESEARCH NOTIFY GETMETADATA"
    b" SETMETADATA".split()
)


def literal(line: bytes) -> tuple[int, bool] | None:
    """(size, synchronising) of the literal a line announces, or None."""
    found = LITERAL.search(line)
    return (int(found.group(1)), not found.group(2)) if found else None


def _kept(word: bytes, login_disabled: bool) -> bool:
    upper = word.upper()
    if upper == b"STARTTLS" or upper.startswith(b"COMPRESS="):
        return False  # STARTTLS is the proxy's; a compressed stream could not be followed
    return not login_disabled or not (upper.startswith(b"AUTH=") or upper == b"LOGINDISABLED")


def rewrite_capabilities(words: bytes, offer_starttls: bool, login_disabled: bool = False) -> bytes:
    """A capability list as the client must see it through the proxy. login_disabled:
    no login may be made here (RFC 9051 6.2.3): LOGINDISABLED, and no AUTH= mechanism."""
    kept = [word for word in words.split(b" ") if word and _kept(word, login_disabled)]
    if offer_starttls:
        kept.append(b"STARTTLS")
    if login_disabled:
        kept.append(b"LOGINDISABLED")
    return b" ".join(kept)


def rewrite_line(line: bytes, offer_starttls: bool, login_disabled: bool = False) -> bytes:
    """A response line with its capability list (if any) rewritten; else unchanged."""
    if line[:13].upper() == b"* CAPABILITY ":
        body = line[13:].rstrip(b"\r\n")
        ending = line[len(line.rstrip(b"\r\n")) :]
        return line[:13] + rewrite_capabilities(body, offer_starttls, login_disabled) + ending
    return CAPABILITY_CODE.sub(
        lambda m: (
            b"[CAPABILITY "
            + rewrite_capabilities(m.group(1), offer_starttls, login_disabled)
            + b"]"
        ),
        line,
        count=1,
    )


class ImapProxy(line_proxy.LineProxy):
    ClientError = BackendError = ImapError
    LIMITS, STARTTLS_REPLIES, POLICY_REPLIES = LIMITS, STARTTLS_REPLIES, POLICY_REPLIES
    STOP_POINTS = STOP_POINTS

    """require_tls, offer_tls, plaintext_auth, log_dialogue: line_proxy.LineProxy's (the
    client's policy; sg2 had no -n imap, so TLS is required only by a policy)."""

    def __init__(self, **options: bool):
        super().__init__(**options)
        self.phase = Phase.NOT_AUTHENTICATED
        self._pending.append(line_proxy.Pending(Kind.GREETING, tag=b"*"))
        # A synchronising literal announced by the client, awaiting the server's `+`.
        self._literal_wait: tuple[line_proxy.Pending, int] | None = None
        self._continuing: line_proxy.Pending | None = None  # the command a next line continues
        self._in_response = False  # the server's next line continues a response

    def _authenticated(self) -> bool:
        return self.phase is Phase.AUTHENTICATED

    def _mid_response(self) -> bool:
        return self._in_response or self._server_run.run is not None

    # -- the client side --------------------------------------------------------

    def _stopped(self) -> bool:
        if self._literal_wait is not None:
            return True
        if self._pending and self._pending[-1].kind in CONTINUED:
            return self.state is not line_proxy.State.CONTINUATION
        if self._continuing is not None:
            return False  # the rest of a command already forwarded
        return super()._stopped()

    def _line_too_long(self) -> None:
        raise ImapError(LINE_TOO_LONG)  # IMAP cannot resynchronise inside a command

    def _continuation_shown(self) -> bool:
        return self._pending[-1].kind not in SECRET_KINDS

    def _command_line(self, line: bytes) -> None:
        command = self._continuing
        if command is not None:  # the rest of a command, after its literal
            refused = command.kind is line_proxy.Local.REPLY  # the proxy answered it: dropped
            secret = command.kind in SECRET_KINDS or refused
            self._log("C: " + ("***" if secret else log_text(line)))
            if not refused:
                self._emit(ToBackend(line))
            self._announce(command, literal(line))
            return
        tag, rest = first_word(line)
        verb, argument = first_word(rest)
        verb = verb.upper()
        self._log("C: " + loggable(verb, argument, line, KNOWN, {b"LOGIN"}, {b"AUTHENTICATE"}, tag))
        self._command(line_proxy.Command(verb, argument, line, tag))

    def _forward(self, command: line_proxy.Command) -> None:
        self._emit(ToBackend(command.line))
        verb = command.verb
        entry = line_proxy.Pending(
            KINDS.get(verb, Kind.OTHER if verb in KNOWN else Kind.UNKNOWN), command.tag
        )
        if command.tag and verb:  # else the backend answers `* BAD`: no completion to wait for
            self._pending.append(entry)
        self._announce(entry, literal(command.line))

    def _announce(self, command: line_proxy.Pending, announced: tuple[int, bool] | None) -> None:
        """What follows a line: a literal (now, or after `+`), or a new command. Of a
        command the proxy refused (Local.REPLY), a literal is dropped; a synchronising
        one is never sent (the client waits for `+` and gets the refusal)."""
        refused = command.kind is line_proxy.Local.REPLY
        if announced is None or (refused and announced[1]):
            self._continuing = None
            return
        size, synchronising = announced
        self._continuing = command
        secret = command.kind in SECRET_KINDS or refused
        self._log(f"C: ({'***' if secret else size} bytes of literal)")
        if synchronising:
            self._literal_wait = (command, size)
        elif size:
            self._client_run.start(Count(size, keep=not refused))

    def _refuse(self, command: line_proxy.Command, reply: bytes) -> None:
        super()._refuse(command, reply)
        self._announce(
            line_proxy.Pending(line_proxy.Local.REPLY, tag=command.tag), literal(command.line)
        )

    def _is_command(self, command: line_proxy.Command) -> bool:
        return bool(command.verb)  # a SASL response is one bare word

    def _starttls_command(self, command: line_proxy.Command) -> None:
        if literal(command.line) is not None:
            raise ImapError(LOCAL_WITH_LITERAL)
        self._queue(
            line_proxy.Pending(
                line_proxy.Local.STARTTLS, tag=command.tag, argument=command.argument
            )
        )

    def _compress(self, command: line_proxy.Command) -> None:
        if literal(command.line) is not None:
            raise ImapError(LOCAL_WITH_LITERAL)
        self._local(COMPRESS_REFUSED, tag=command.tag)

    # -- the server side --------------------------------------------------------

    def _response_line(self, line: bytes) -> None:
        continuing = self._in_response
        announced = literal(line)
        self._in_response = announced is not None
        if announced is not None and announced[0]:
            self._server_run.start(Count(announced[0]))
        if continuing:
            self._log("S: " + log_text(line))
            self._emit(ToClient(line))
        elif line[:1] == b"+":
            self._log("S: " + log_text(line))
            self._emit(ToClient(line))
            self._continuation()
        else:
            offer = self.offer_tls and not self._tls_active
            line = rewrite_line(line, offer, login_disabled=self._credentials_refused())
            self._log("S: " + log_text(line))
            self._emit(ToClient(line))
            self._response_start(line)
        if announced is not None:
            self._log(f"S: ({announced[0]} bytes of literal)")
        else:  # between responses: answer what waited, parse what was held up
            self._answer_local()
            self._pump()

    def _continuation(self) -> None:
        """A `+`: the client's literal may come, or its next line is the command's."""
        if self._literal_wait is not None:
            size = self._literal_wait[1]
            self._literal_wait = None
            if size:
                self._client_run.start(Count(size))
        elif self._pending and self._pending[-1].kind in ASKS_A_LINE:
            if self.state is line_proxy.State.COMMAND:  # the server decides: the next line is data
                self._move(line_proxy.Event.CHALLENGE)

    def _response_start(self, line: bytes) -> None:
        tag, _, rest = line.partition(b" ")
        status = rest[:7].upper()
        if tag == b"*":
            if self._pending and self._pending[0].kind is Kind.GREETING:
                self._greeting(self._pending.popleft(), status)
            return
        for index, entry in enumerate(self._pending):
            if entry.tag == tag and not isinstance(entry.kind, line_proxy.Local):
                del self._pending[index]
                self.REPLIES.get(entry.kind, ImapProxy._done)(self, entry, status)
                return

    def _greeting(self, entry: line_proxy.Pending, status: bytes) -> None:
        if status.startswith(b"PREAUTH"):
            self.phase = Phase.AUTHENTICATED

    def _login_done(self, entry: line_proxy.Pending, status: bytes) -> None:
        if OK.match(status):
            self.phase = Phase.AUTHENTICATED
        self._done(entry, status)

    def _done(self, entry: line_proxy.Pending, status: bytes) -> None:
        if entry.kind in ASKS_A_LINE and self.state is line_proxy.State.CONTINUATION:
            self._move(line_proxy.Event.ANSWER)
        if self._literal_wait is not None and self._literal_wait[0] is entry:
            # RFC 9051 section 7.5: a literal the server refused is not sent.
            self._literal_wait = None
            self._continuing = None

    # -- the tables -------------------------------------------------------------

    # The commands the proxy answers itself (the rest: LineProxy._command).
    COMMANDS: ClassVar[Mapping[bytes, Callable[["ImapProxy", line_proxy.Command], None]]] = {
        b"STARTTLS": _starttls_command,
        b"COMPRESS": _compress,
    }
    # What a tagged completion (or the greeting) does, by the command's Kind; else _done.
    REPLIES: ClassVar[
        Mapping[enum.Enum, Callable[["ImapProxy", line_proxy.Pending, bytes], None]]
    ] = {
        Kind.GREETING: _greeting,
        Kind.LOGIN: _login_done,
        Kind.AUTHENTICATE: _login_done,
        Kind.UNKNOWN: _login_done,  # what an OK can log the session in with
    }

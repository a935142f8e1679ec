"""IMAP STARTTLS proxy (-n imap-, sg2): a sans-I/O state machine (SPEC section 6).

Bytes from the client and from the backend go in; actions come out (protocol.py).
The relay's calls, client buffering, EOF and the error rule are layer.LineProxy's.
The rules, each kept in one place (docs/imap-pop3.md has the reasons):

  framing     a line ends at LF. A line ending in `{n}` or `{n+}` (also `~{n}`,
              RFC 3516) announces a literal: the next n bytes are passed on and never
              interpreted, then the line goes on. That holds both ways, so a mail
              that reads `a1 OK` or `* CAPABILITY` is data. A synchronising `{n}`
              from the client waits for the server's `+` (or the command's end).
  commands    each tagged command forwarded goes on a list; its tagged completion
              takes it off. The greeting comes first: nothing is parsed before it.
  stop points after STARTTLS, AUTHENTICATE and IDLE nothing is parsed until the
              answer; AUTHENTICATE and IDLE take one client line per `+` from the
              server (SASL data, DONE), and so does a command the proxy does not
              know (the server decides; that line is never logged). Words end at
              any blank (layer.BLANKS): `a LOGIN<TAB>...` is a LOGIN.
  CAPABILITY  in `* CAPABILITY` responses and `[CAPABILITY ...]` response codes:
              + STARTTLS before TLS (once), none after it; COMPRESS=* dropped (the
              stream could not be followed), and the COMPRESS command refused.
              The backend's LOGINDISABLED passes: it is the backend that refuses.
  STARTTLS    decided when no earlier command is pending: after TLS, with
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
from dataclasses import dataclass

from stunnel3.layer import LineProxy, ProxyError, first_word, loggable, next_line
from stunnel3.protocol import ToBackend, ToClient

# RFC 2595 section 3.1 and RFC 9051 section 6.2.1 wording.
BEGIN_TLS = b"OK Begin TLS negotiation now\r\n"
STARTTLS_TWICE = b"BAD TLS already active\r\n"
STARTTLS_ARGUMENTS = b"BAD STARTTLS takes no arguments\r\n"
STARTTLS_AUTHENTICATED = b"BAD STARTTLS is only allowed before authentication\r\n"
# CVE-2011-0411: bytes pipelined after STARTTLS are never forwarded.
STARTTLS_INJECTION = b"BAD Commands pipelined after STARTTLS are refused\r\n"
CLOSING = b"* BYE Closing connection\r\n"
# RFC 4978: the proxy could not follow a compressed stream.
COMPRESS_REFUSED = b"NO [CANNOT] COMPRESS is not available through this proxy\r\n"
LINE_TOO_LONG = b"* BYE [TOOBIG] Line too long, closing connection\r\n"
TOO_MUCH_PIPELINING = b"* BYE Too many pipelined commands, closing connection\r\n"
BACKEND_LINE_TOO_LONG = b"* BYE Server response line too long, closing connection\r\n"
LOCAL_WITH_LITERAL = b"* BYE Literal after a command the proxy answers, closing connection\r\n"

# RFC 9051 section 4 sets no line length; RFC 7162 section 4 asks for 8192 octets
# at least. Long UID sets and SEARCH results come as one line, so 1 MiB per line.
MAX_LINE = 1 << 20
MAX_PENDING = 1000
MAX_HELD = 2 << 20

LITERAL = re.compile(rb"~?\{([0-9]{1,19})(\+?)\}\r?\n\Z")
OK = re.compile(rb"OK\b")
CAPABILITY_CODE = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)


class ImapError(ProxyError):
    """The IMAP layer's error family (layer.ProxyError): the reply ends the session."""


class State(enum.Enum):
    COMMAND = "command"
    HANDSHAKE = "handshake"  # StartTls issued; tls_started next
    CLOSED = "closed"


class Kind(enum.Enum):
    GREETING = "greeting"
    LOGIN = "login"  # OK: authenticated; arguments are secret
    AUTHENTICATE = "authenticate"  # SASL lines after each `+`
    IDLE = "idle"  # DONE after the `+`
    OTHER = "other"  # a command in KNOWN
    UNKNOWN = "unknown"  # any other: a `+` makes the next line its, and secret
    STARTTLS = "starttls"  # local: decided at the head
    LOCAL = "local"  # local: a ready tagged response


STOP_POINTS = frozenset({Kind.GREETING, Kind.STARTTLS, Kind.AUTHENTICATE, Kind.IDLE})
CONTINUED = frozenset({Kind.AUTHENTICATE, Kind.IDLE})
KINDS = {b"LOGIN": Kind.LOGIN, b"AUTHENTICATE": Kind.AUTHENTICATE, b"IDLE": Kind.IDLE}
# What an OK can log the session in with (an unknown command might: it counts).
LOGIN_KINDS = frozenset({Kind.LOGIN, Kind.AUTHENTICATE, Kind.UNKNOWN})
# Whose continuation lines and literals the log shows only as ***.
SECRET_KINDS = LOGIN_KINDS
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


@dataclass
class Pending:
    tag: bytes
    kind: Kind
    reply: bytes = b""  # LOCAL: the response after the tag; STARTTLS: its arguments


def literal(line: bytes) -> tuple[int, bool] | None:
    """(size, synchronising) of the literal a line announces, or None."""
    found = LITERAL.search(line)
    return (int(found.group(1)), not found.group(2)) if found else None


def rewrite_capabilities(words: bytes, offer_starttls: bool) -> bytes:
    """A capability list as the client must see it through the proxy."""
    kept = [
        word
        for word in words.split(b" ")
        if word and word.upper() != b"STARTTLS" and not word.upper().startswith(b"COMPRESS=")
    ]
    if offer_starttls:
        kept.append(b"STARTTLS")
    return b" ".join(kept)


def rewrite_line(line: bytes, offer_starttls: bool) -> bytes:
    """A response line with its capability list (if any) rewritten; else unchanged."""
    if line[:13].upper() == b"* CAPABILITY ":
        body = line[13:].rstrip(b"\r\n")
        ending = line[len(line.rstrip(b"\r\n")) :]
        return line[:13] + rewrite_capabilities(body, offer_starttls) + ending
    return CAPABILITY_CODE.sub(
        lambda m: b"[CAPABILITY " + rewrite_capabilities(m.group(1), offer_starttls) + b"]",
        line,
        count=1,
    )


class ImapProxy(LineProxy):
    COMMAND, HANDSHAKE, CLOSED = State.COMMAND, State.HANDSHAKE, State.CLOSED

    def __init__(self, log_dialogue: bool = False):
        super().__init__(log_dialogue)
        self._authenticated = False
        self._pending: list[Pending] = [Pending(b"*", Kind.GREETING)]
        self._literal_left = 0  # client bytes still to pass as a literal
        self._literal_wait: tuple[Pending | None, int] | None = None  # {n}: awaiting `+`
        self._continuing: Pending | None = None  # the command a next line continues
        self._line_ready = False  # AUTHENTICATE/IDLE: a `+` allows one client line
        self._server = b""
        self._server_literal = 0  # server bytes still to pass as a literal
        self._in_response = False  # the server's next line continues a response

    # -- the backend's bytes (the rest of the relay's interface is LineProxy's) --

    def _backend_bytes(self, data: bytes) -> None:
        self._server += data
        self._guarded(self._responses)
        self._guarded(self._pump)

    def _unfinished_response(self) -> bytes:
        return self._server

    def _reply(self, tag: bytes, response: bytes) -> None:
        self._say(tag + b" " + response)

    # -- the client side --------------------------------------------------------

    def _stopped(self) -> bool:
        if self._literal_wait is not None:
            return True
        if self._pending and self._pending[-1].kind in CONTINUED:
            return not self._line_ready
        if self._continuing is not None:
            return False  # the rest of a command already forwarded
        return bool(self._pending) and (
            self._pending[-1].kind in STOP_POINTS or len(self._pending) >= MAX_PENDING
        )

    def _pump(self) -> None:
        while self.state is State.COMMAND and self._client:
            if self._literal_left:
                taken = bytes(self._client[: self._literal_left])
                del self._client[: len(taken)]
                self._literal_left -= len(taken)
                self._emit(ToBackend(taken))
                continue
            if self._stopped():
                break
            line = self._next_line()
            if line is None:
                break
            self._client_line(line)
        if len(self._client) > MAX_HELD:
            raise ImapError(TOO_MUCH_PIPELINING)
        if self._client_eof_due():
            self._end_backend_input()

    def _next_line(self) -> bytes | None:
        end = self._client.find(b"\n")
        if end >= MAX_LINE or (end < 0 and len(self._client) >= MAX_LINE):
            raise ImapError(LINE_TOO_LONG)
        if end < 0:
            if self._client_eof:
                self._client.clear()  # a command cut by EOF is not a command
            return None
        line = bytes(self._client[: end + 1])
        del self._client[: end + 1]
        return line

    def _client_line(self, line: bytes) -> None:
        if self._line_ready and self._pending:  # after a `+`: the command's next line
            self._line_ready = False
            secret = self._pending[-1].kind in SECRET_KINDS
            self._log("C: " + ("***" if secret else line.rstrip(b"\r\n").decode("latin-1")))
            self._emit(ToBackend(line))
            return
        command = self._continuing
        if command is None:
            command = self._command(line)
            if command is None:
                return
        else:
            secret = command.kind in SECRET_KINDS
            self._log("C: " + ("***" if secret else line.rstrip(b"\r\n").decode("latin-1")))
            self._emit(ToBackend(line))
        self._announce(command, literal(line))

    def _announce(self, command: Pending | None, announced: tuple[int, bool] | None) -> None:
        """What follows a forwarded line: a literal (now, or after `+`), or a new command."""
        if announced is None:
            self._continuing = None
            return
        size, synchronising = announced
        self._continuing = command
        secret = command is not None and command.kind in SECRET_KINDS
        self._log(f"C: ({'***' if secret else size} bytes of literal)")
        if synchronising:
            self._literal_wait = (command, size)
        else:
            self._literal_left = size

    def _command(self, line: bytes) -> Pending | None:
        """A new command line: forward it (and list it), or answer it here."""
        tag, rest = first_word(line)
        verb, argument = first_word(rest)
        verb = verb.upper()
        self._log("C: " + loggable(verb, argument, line, KNOWN, {b"LOGIN"}, {b"AUTHENTICATE"}, tag))
        if verb in (b"STARTTLS", b"COMPRESS"):
            if literal(line) is not None:
                raise ImapError(LOCAL_WITH_LITERAL)
            if verb == b"STARTTLS":
                self._queue(Pending(tag, Kind.STARTTLS, argument))
            else:
                self._queue(Pending(tag, Kind.LOCAL, COMPRESS_REFUSED))
            return None
        self._emit(ToBackend(line))
        command = Pending(tag, KINDS.get(verb, Kind.OTHER if verb in KNOWN else Kind.UNKNOWN))
        if tag and verb:  # else the backend answers `* BAD`: no completion to wait for
            self._pending.append(command)
        return command

    def _queue(self, entry: Pending) -> None:
        self._pending.append(entry)
        self._answer_local()

    # -- the answers ------------------------------------------------------------

    def _answer_local(self) -> None:
        """The proxy's own responses, when they reach the head and the server is
        between responses."""
        while self._pending and self._pending[0].kind in (Kind.LOCAL, Kind.STARTTLS):
            if self._in_response or self._server_literal:
                return
            entry = self._pending.pop(0)
            if entry.kind is Kind.LOCAL:
                self._reply(entry.tag, entry.reply)
            elif self._starttls(entry.tag, entry.reply):
                return

    def _starttls(self, tag: bytes, argument: bytes) -> bool:
        """Answer STARTTLS; True if TLS starts."""
        if self._tls_active:
            self._reply(tag, STARTTLS_TWICE)
        elif argument:
            self._reply(tag, STARTTLS_ARGUMENTS)
        elif self._authenticated:
            self._reply(tag, STARTTLS_AUTHENTICATED)
        elif self._client:
            self._reply(tag, STARTTLS_INJECTION)
            raise ImapError(CLOSING)
        else:
            self._reply(tag, BEGIN_TLS)
            self._start_tls()
            return True
        return False

    def _responses(self) -> None:
        while self._server and self.state is not State.CLOSED:
            if self._server_literal:
                taken = self._server[: self._server_literal]
                self._server = self._server[len(taken) :]
                self._server_literal -= len(taken)
                self._emit(ToClient(taken))
                continue
            line, self._server = next_line(self._server, MAX_LINE, BACKEND_LINE_TOO_LONG, ImapError)
            if line is None:
                return
            self._response_line(line)

    def _response_line(self, line: bytes) -> None:
        continuing = self._in_response
        announced = literal(line)
        self._in_response = announced is not None
        if announced is not None:
            self._server_literal = announced[0]
        shown = line.rstrip(b"\r\n").decode("latin-1")
        if continuing:
            self._log("S: " + shown)
            self._emit(ToClient(line))
        elif line[:1] == b"+":
            self._log("S: " + shown)
            self._emit(ToClient(line))
            self._continuation()
        else:
            line = rewrite_line(line, offer_starttls=not self._tls_active)
            self._log("S: " + line.rstrip(b"\r\n").decode("latin-1"))
            self._emit(ToClient(line))
            self._response_start(line)
        if announced is not None:
            self._log(f"S: ({announced[0]} bytes of literal)")
        else:  # between responses: answer what waited, parse what was held up
            self._answer_local()
            self._pump()

    def _continuation(self) -> None:
        if self._literal_wait is not None:
            self._literal_left = self._literal_wait[1]
            self._literal_wait = None
        elif self._pending and self._pending[-1].kind in CONTINUED | {Kind.UNKNOWN}:
            self._line_ready = True  # the server decides: the next client line is data

    def _response_start(self, line: bytes) -> None:
        tag, _, rest = line.partition(b" ")
        status = rest[:7].upper()
        if tag == b"*":
            if self._pending and self._pending[0].kind is Kind.GREETING:
                self._pending.pop(0)
                self._authenticated = status.startswith(b"PREAUTH")
            return
        for index, entry in enumerate(self._pending):
            if entry.tag == tag and entry.kind not in (Kind.LOCAL, Kind.STARTTLS):
                del self._pending[index]
                if entry.kind in LOGIN_KINDS and OK.match(status):
                    self._authenticated = True
                self._command_done(entry)
                return

    def _command_done(self, entry: Pending) -> None:
        if entry.kind in CONTINUED | {Kind.UNKNOWN}:
            self._line_ready = False
        if self._literal_wait is not None and self._literal_wait[0] is entry:
            # RFC 9051 section 7.5: a literal the server refused is not sent.
            self._literal_wait = None
            self._continuing = None

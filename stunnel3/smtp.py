"""SMTP STARTTLS proxy (-n smtp-, -n smtp): a sans-I/O state machine (SPEC section 6).

Bytes from the client and from the backend go in; actions come out (protocol.py).
The relay's calls, client buffering, EOF and the error rule are layer.LineProxy's.
No sockets, no TLS, no clock but the one passed in. The rules, each kept in one place:

  greeting    the backend's greeting passes unchanged; if client bytes are already
              waiting then and start with 0x16 (a TLS handshake record), TLS starts
              at once with them (implicit TLS, port 465) and the greeting goes
              through TLS. Nothing waits for this: no delay is added.
  commands    a line ends at LF (qmail-smtpd and fixcrio end lines there too, so the
              proxy and the backend always agree on where a command ends); verbs in
              any case; each forwarded command puts what its reply means on a FIFO
              (RFC 2920 pipelining); replies the proxy makes itself wait their turn
              in the same FIFO, so every reply reaches the client in command order.
  stop points after STARTTLS, and after every forwarded command not in
              smtp_command.FOLLOWED (DATA, AUTH, anything the proxy does not know),
              nothing more is parsed until the reply: what follows may be message
              data, a SASL line, or TLS.
  the backend decides  a 354 to any client command starts the DATA phase, a 334 makes
              the next line a SASL line, a 235 means authenticated, whatever the
              proxy made of the command; verbs end at any blank a backend ends them
              at (layer.BLANKS: `DATA<TAB>` is DATA).
  EHLO reply  rewritten (smtp_reply.rewrite_ehlo): + STARTTLS before TLS and AUTH,
              only extensions the FIFO can follow are kept.
  transaction opened by a positive reply to MAIL; closed by a positive reply to RSET,
              EHLO or HELO, and by any reply to the end of the data.
  STARTTLS    TLS active -> 503; parameters -> 501; after a successful AUTH -> 503
              (a plaintext login must not survive into TLS); not greeted -> 503; in a
              transaction -> 503; client bytes after it -> 421 and the session ends
              (CVE-2011-0411); else 220, StartTls, RSET to the backend (reply
              checked and swallowed), EHLO/HELO required again.
  -n smtp     before TLS, all but EHLO HELO NOOP RSET QUIT STARTTLS -> 530.
  DATA        after 354: smtp_data.MessageData, bytes uninterpreted until CRLF.CRLF,
              ambiguous dot lines stuffed; after TLS a Received: line goes first.
  BDAT        502 and the announced chunk is skipped unread (CHUNKING is not offered).
  bounds      smtp_text.MAX_LINE, MAX_PENDING, MAX_HELD.
  log         Log(7) per line when log_dialogue: C: client, S: server, P: proxy;
              never an AUTH argument or SASL line (***), never message content,
              a line it does not know only by its size.
"""

import enum
import time
from collections import deque
from dataclasses import dataclass

from stunnel3 import smtp_text as text
from stunnel3.layer import LineProxy, first_word
from stunnel3.protocol import ToBackend, ToClient
from stunnel3.smtp_command import (
    ALLOWED_BEFORE_HELO,
    ALLOWED_BEFORE_TLS,
    FOLLOWED,
    NOT_FOLLOWABLE,
    received_line,
    shown,
    split_command,
)
from stunnel3.smtp_data import MessageData
from stunnel3.smtp_reply import Reply, ReplyReader, ReplyTooLong, rewrite_ehlo
from stunnel3.smtp_text import BackendError, ClientError, SmtpError  # noqa: F401 (tests)

TLS_HANDSHAKE_RECORD = b"\x16"  # the first byte of a ClientHello (RFC 8446 section 5.1)


class State(enum.Enum):
    COMMAND = "command"  # command lines next (possibly held behind a stop point)
    DATA = "data"  # message bytes next, up to CRLF.CRLF
    HANDSHAKE = "handshake"  # StartTls issued; the relay reports tls_started next
    CLOSED = "closed"  # after Close: input is ignored


class Expect(enum.Enum):
    """What the reply at the head of the FIFO answers (or, local: what to answer)."""

    GREETING = "greeting"
    EHLO = "ehlo"
    HELO = "helo"
    MAIL = "mail"
    RSET = "rset"
    DATA = "data"
    MESSAGE = "message"  # the end of the data
    AUTH = "auth"
    OTHER = "other"  # a command in smtp_command.FOLLOWED
    UNKNOWN = "unknown"  # any other: its reply decides what follows
    RESET_AFTER_TLS = "reset after tls"  # the proxy's own RSET: reply swallowed
    STARTTLS = "starttls"  # local: decided when it reaches the head
    LOCAL = "local"  # local: a ready reply


STOP_POINTS = frozenset(
    {Expect.GREETING, Expect.DATA, Expect.AUTH, Expect.UNKNOWN, Expect.STARTTLS}
)
LOCAL_ENTRIES = frozenset({Expect.STARTTLS, Expect.LOCAL})
# Replies that answer no client command: the backend's greeting, its reply to our RSET.
OWN_REPLIES = frozenset({Expect.GREETING, Expect.RESET_AFTER_TLS})
# Replies after which the client's bytes are not commands, to whatever command.
PHASES = {b"354": Expect.DATA, b"334": Expect.AUTH}
FORWARDED = {
    verb.encode(): Expect[verb] for verb in ("EHLO", "HELO", "MAIL", "RSET", "DATA", "AUTH")
}


@dataclass
class Pending:
    expect: Expect
    reply: bytes = b""  # LOCAL: the reply; STARTTLS: its parameters


class SmtpProxy(LineProxy):
    """require_tls: -n smtp (530 until STARTTLS); False for -n smtp- (plaintext fallback).

    log_dialogue: Log(7, ...) for every line (the relay sets it at -D 7).
    received_header: after TLS, start each message with a Received: line naming
    the TLS version and cipher (on by default: it is how qmail-smtpd and the
    mailbox learn TLS was used, and a trace line is always safe to add).
    clock: seconds since the epoch, for that line's date.
    """

    COMMAND, HANDSHAKE, CLOSED = State.COMMAND, State.HANDSHAKE, State.CLOSED

    def __init__(
        self,
        require_tls: bool = False,
        log_dialogue: bool = False,
        received_header: bool = True,
        clock=time.time,
    ):
        super().__init__(log_dialogue)
        self.require_tls = require_tls
        self.received_header = received_header
        self.clock = clock
        self._greeted = False  # a positive reply to EHLO/HELO since the last reset
        self._must_greet = False  # after STARTTLS: EHLO/HELO before anything else
        self._transaction = False
        self._authenticated = False
        self._sasl = False  # the next client line answers a 334
        self._discarding = False  # the rest of a too-long line is being dropped
        self._skip = 0  # bytes of a refused BDAT chunk still to drop
        self._pending: deque[Pending] = deque([Pending(Expect.GREETING)])
        self._replies = ReplyReader()
        self._message: MessageData | None = None

    @property
    def client_paused(self) -> bool:
        """True while the proxy holds enough unparsed client bytes: the relay may
        stop reading the client until a later call makes it False again."""
        return len(self._client) > text.PAUSE_HELD

    @property
    def awaiting(self) -> bool:
        """True while a command/reply exchange is under way (protocol.py): part of a
        command has come (or the rest of a refused one is being dropped), or the
        backend owes a reply. Message data is no exchange; its end is."""
        if self.state is not State.COMMAND:
            return False
        return bool(self._client or self._pending or self._discarding or self._skip)

    # -- the backend's bytes (the rest of the relay's interface is LineProxy's) --

    def _backend_bytes(self, data: bytes) -> None:
        try:
            replies = self._replies.feed(data)
        except ReplyTooLong:
            self._fail(BackendError(text.BACKEND_LINE_TOO_LONG))
            return
        for reply in replies:
            if self.state is State.CLOSED:
                break
            self._guarded(lambda r=reply: self._on_reply(r))
            self._guarded(self._pump)

    def _unfinished_response(self) -> bytes:
        return self._replies.leftover()

    def _queue(self, entry: Pending) -> None:
        self._pending.append(entry)
        self._answer_local()

    def _local(self, reply: bytes) -> None:
        self._queue(Pending(Expect.LOCAL, reply))

    def _forward(self, line: bytes, expect: Expect) -> None:
        self._emit(ToBackend(line))
        self._queue(Pending(expect))

    # -- the client side --------------------------------------------------------

    def _stopped(self) -> bool:
        """Parse no further: a stop point awaits its reply, or the FIFO is full."""
        if not self._pending:
            return False
        return self._pending[-1].expect in STOP_POINTS or len(self._pending) >= text.MAX_PENDING

    def _pump(self) -> None:
        """Take what the client sent as far as the state allows."""
        while self.state in (State.COMMAND, State.DATA) and self._client:
            if self.state is State.DATA:
                self._message_bytes()
            elif self._skip or self._discarding:
                self._drop_bytes()
            elif self._stopped() or not self._next_line():
                break
        if len(self._client) > text.MAX_HELD:
            raise ClientError(text.TOO_MUCH_PIPELINING)
        if self._client_eof_due():
            if self._message is not None:
                self._emit(ToBackend(self._message.flush()))
            self._end_backend_input()
            self._client.clear()

    def _next_line(self) -> bool:
        """Handle one command line; False if none is complete yet (or must wait)."""
        end = self._client.find(b"\n")
        if end < 0:
            if len(self._client) >= text.MAX_LINE:
                self._client.clear()
                self._discarding = True
                self._log("C: (line too long)")
                self._local(text.LINE_TOO_LONG)
                return True
            if self._client_eof:
                self._client.clear()  # a command cut by EOF is not a command
            return False
        line = bytes(self._client[: end + 1])
        if len(line) > text.MAX_LINE:
            del self._client[: end + 1]
            self._log("C: (line too long)")
            self._local(text.LINE_TOO_LONG)
            return True
        if self._sasl:
            del self._client[: end + 1]
            self._sasl = False
            self._log("C: ***")
            self._forward(line, Expect.AUTH)
            return True
        verb, argument = split_command(line)
        if self._must_greet and verb not in ALLOWED_BEFORE_HELO and self._pending:
            return False  # an EHLO/HELO may still be answered: decide after it
        del self._client[: end + 1]
        self._command(verb, argument, line)
        return True

    def _drop_bytes(self) -> None:
        if self._skip:
            taken = min(self._skip, len(self._client))
            self._skip -= taken
            del self._client[:taken]
            return
        end = self._client.find(b"\n")
        del self._client[: end + 1 if end >= 0 else len(self._client)]
        self._discarding = end < 0

    def _command(self, verb: bytes, argument: bytes, line: bytes) -> None:
        self._log_lines("C: ", shown(verb, argument, line))
        if verb in NOT_FOLLOWABLE:
            self._local(text.NOT_IMPLEMENTED)
        elif verb == b"BDAT":
            self._bdat(argument)
        elif self.require_tls and not self._tls_active and verb not in ALLOWED_BEFORE_TLS:
            self._local(text.MUST_STARTTLS)
        elif self._must_greet and verb not in ALLOWED_BEFORE_HELO and verb != b"STARTTLS":
            self._local(text.HELO_AFTER_TLS)
        elif verb == b"STARTTLS":
            self._queue(Pending(Expect.STARTTLS, argument))
        else:
            expect = FORWARDED.get(verb, Expect.OTHER if verb in FOLLOWED else Expect.UNKNOWN)
            self._forward(line, expect)

    def _bdat(self, argument: bytes) -> None:
        size, _ = first_word(argument)
        if not size.isdigit() or len(size) > 18:
            raise ClientError(text.BDAT_BAD_SIZE)
        self._skip = int(size)
        self._local(text.BDAT_REFUSED)

    def _message_bytes(self) -> None:
        assert self._message is not None
        data, rest = self._message.feed(bytes(self._client))
        self._client.clear()
        if data:
            self._emit(ToBackend(data))
        if rest is not None:
            self._log(f"C: ({self._message.size} bytes of message data)")
            self._message = None
            self.state = State.COMMAND
            self._client += rest
            self._queue(Pending(Expect.MESSAGE))

    # -- replies, in FIFO order ---------------------------------------------------

    def _answer_local(self) -> None:
        """Replies the proxy makes itself go out as soon as they reach the head."""
        while self._pending and self._pending[0].expect in LOCAL_ENTRIES:
            entry = self._pending.popleft()
            if entry.expect is Expect.STARTTLS:
                self._starttls(entry.reply)
            else:
                self._say(entry.reply)

    def _starttls(self, argument: bytes) -> None:
        if self._tls_active:
            refusal = text.STARTTLS_TWICE
        elif argument:
            refusal = text.STARTTLS_PARAMETERS
        elif self._authenticated:
            refusal = text.STARTTLS_AFTER_AUTH
        elif not self._greeted:
            refusal = text.STARTTLS_BEFORE_HELO
        elif self._transaction:
            refusal = text.STARTTLS_IN_TRANSACTION
        elif self._client:
            raise ClientError(text.STARTTLS_INJECTION)
        else:
            self._say(text.READY_TO_START_TLS)
            self._begin_tls()
            # RFC 3207 section 4.2: the server must discard what it knew of the
            # client; RSET ends any state the backend keeps beyond a transaction.
            self._log("P: RSET (to the server; its reply is checked, not passed on)")
            self._emit(ToBackend(b"RSET\r\n"))
            self._pending.append(Pending(Expect.RESET_AFTER_TLS))
            self._must_greet = True
            return
        self._say(refusal)

    def _begin_tls(self, early: bytes = b"") -> None:
        self._start_tls(early)
        self._greeted = False
        self._transaction = False

    def _on_reply(self, reply: Reply) -> None:
        self._log_lines("S: ", reply.raw)
        if not self._pending:  # unsolicited (a 421 before a shutdown): pass it on
            self._emit(ToClient(reply.raw))
            return
        expect = self._pending.popleft().expect
        if expect not in OWN_REPLIES:
            # The backend decides what comes next, whatever the proxy made of the command.
            if reply.code in PHASES:
                expect = PHASES[reply.code]
                if self._pending:  # what followed went on as commands: out of step
                    raise BackendError(text.BACKEND_OUT_OF_STEP)
            self._authenticated = self._authenticated or reply.code == b"235"  # RFC 4954
        handler = getattr(self, "_reply_" + expect.name.lower(), None)
        if handler is None:
            self._emit(ToClient(reply.raw))
        else:
            handler(reply)
        self._answer_local()

    def _reply_greeting(self, reply: Reply) -> None:
        if self._client[:1] == TLS_HANDSHAKE_RECORD:
            self._log("P: implicit TLS: the client sent a TLS handshake first")
            early = bytes(self._client)
            self._client.clear()
            self._begin_tls(early)
        self._emit(ToClient(reply.raw))

    def _reply_ehlo(self, reply: Reply) -> None:
        if reply.positive:
            offer = not (self._tls_active or self._authenticated)
            reply = rewrite_ehlo(reply, offer_starttls=offer)
            self._greeted, self._must_greet, self._transaction = True, False, False
        self._emit(ToClient(reply.raw))

    def _reply_helo(self, reply: Reply) -> None:
        if reply.positive:
            self._greeted, self._must_greet, self._transaction = True, False, False
        self._emit(ToClient(reply.raw))

    def _reply_mail(self, reply: Reply) -> None:
        self._transaction = self._transaction or reply.positive
        self._emit(ToClient(reply.raw))

    def _reply_rset(self, reply: Reply) -> None:
        self._transaction = self._transaction and not reply.positive
        self._emit(ToClient(reply.raw))

    def _reply_data(self, reply: Reply) -> None:
        self._emit(ToClient(reply.raw))
        if reply.code == b"354":
            self.state = State.DATA
            self._message = MessageData()
            if self.tls is not None and self.received_header:
                self._emit(ToBackend(received_line(self.tls, self._authenticated, self.clock())))

    def _reply_message(self, reply: Reply) -> None:
        self._transaction = False
        self._emit(ToClient(reply.raw))

    def _reply_auth(self, reply: Reply) -> None:
        self._sasl = reply.code == b"334"
        self._authenticated = self._authenticated or reply.positive
        self._emit(ToClient(reply.raw))

    def _reply_reset_after_tls(self, reply: Reply) -> None:
        if not reply.positive:
            raise BackendError(text.BACKEND_RESET_FAILED)

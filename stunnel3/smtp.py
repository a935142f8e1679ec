"""SMTP STARTTLS proxy (-n smtp-, -n smtp): a sans-I/O state machine (SPEC section 6).

Bytes from the client and from the backend go in; actions come out (protocol.py).
The relay's calls, both buffers, the FIFO of replies, local answers, the STARTTLS
decision and EOF are line_proxy.LineProxy's; this file is SMTP's tables and rules.
No sockets, no TLS, no clock but the one passed in. The rules, each kept in one place:

  greeting    the backend's greeting passes unchanged; if client bytes are already
              waiting then and start with 0x16 (a TLS handshake record), TLS starts
              at once with them (implicit TLS, port 465) and the greeting goes
              through TLS. Nothing waits for this: no delay is added.
  commands    a line ends at LF (qmail-smtpd and fixcrio end lines there too, so the
              proxy and the backend always agree on where a command ends); verbs in
              any case; each forwarded command puts what its reply means (Expect) on
              the FIFO (RFC 2920 pipelining); COMMANDS: the verbs the proxy answers.
  stop points after STARTTLS, and after every forwarded command not in
              smtp_command.FOLLOWED (DATA, AUTH, anything the proxy does not know),
              nothing more is parsed until the reply: what follows may be message
              data, a SASL line, or TLS.
  the backend decides  a 354 to any client command starts the DATA phase, a 334 makes
              the next line a SASL line, a 235 means authenticated, whatever the
              proxy made of the command; verbs end at any blank a backend ends them
              at (lines.BLANKS: `DATA<TAB>` is DATA).
  EHLO reply  rewritten (smtp_reply.rewrite_ehlo): + STARTTLS before TLS and AUTH
              (if offered), only extensions the FIFO can follow are kept; AUTH only
              where it may be used (after TLS, or with plaintext_auth).
  AUTH        before TLS, unless plaintext_auth: 538 (RFC 4954 section 6) and never
              forwarded; a SASL line a 334 asked for goes to the backend as `*`;
              lines sent behind a refused AUTH that are not commands: 538 too.
  Phase       the session as the backend's replies made it, moved only by PHASE_MOVES:
              HELLO -> GREETED (a 2xx to EHLO/HELO) -> MAIL (a 2xx to MAIL) ->
              GREETED (a 2xx to RSET, any reply to the end of the data); STARTTLS
              -> RESET, where only EHLO HELO NOOP RSET QUIT pass until a 2xx to
              EHLO/HELO (RFC 3207 section 4.2).
  STARTTLS    not offered (policy, certificate) -> 454; TLS active -> 503;
              parameters -> 501; after a successful AUTH -> 503
              (a plaintext login must not survive into TLS); not greeted -> 503; in a
              transaction -> 503; client bytes after it -> 421 and the session ends
              (CVE-2011-0411); else 220, StartTls, RSET to the backend (reply
              checked and swallowed), phase RESET.
  -n smtp     before TLS, all but EHLO HELO NOOP RSET QUIT STARTTLS -> 530 (and
              TLS not available: 421 instead of the greeting, the end).
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
from collections.abc import Callable, Mapping
from typing import ClassVar

from stunnel3.layers import line_proxy
from stunnel3.layers import smtp_text as text
from stunnel3.layers.line_proxy import State  # the client's, smtp.State to its users
from stunnel3.layers.lines import first_word
from stunnel3.layers.protocol import ToBackend, ToClient
from stunnel3.layers.runs import Count
from stunnel3.layers.smtp_command import (
    ALLOWED_BEFORE_HELO,
    ALLOWED_BEFORE_TLS,
    FOLLOWED,
    KNOWN,
    NOT_FOLLOWABLE,
    SASL_COMMANDS,
    received_line,
    shown,
    split_command,
)
from stunnel3.layers.smtp_data import MessageData
from stunnel3.layers.smtp_reply import Reply, ReplyReader, rewrite_ehlo
from stunnel3.layers.smtp_text import BackendError, ClientError, SmtpError

__all__ = ["BackendError", "ClientError", "Expect", "Phase", "SmtpError", "SmtpProxy", "State"]

TLS_HANDSHAKE_RECORD = b"\x16"  # the first byte of a ClientHello (RFC 8446 section 5.1)


class Expect(enum.Enum):
    """What the reply at the head of the FIFO answers."""

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


STOP_POINTS = frozenset({Expect.GREETING, Expect.DATA, Expect.AUTH, Expect.UNKNOWN})
LIMITS = line_proxy.Limits(
    text.MAX_LINE,
    text.MAX_PENDING,
    text.MAX_HELD,
    text.LINE_TOO_LONG,
    text.TOO_MUCH_PIPELINING,
    text.BACKEND_LINE_TOO_LONG,
)
STARTTLS_REPLIES = line_proxy.StartTlsReplies(
    text.READY_TO_START_TLS,
    not_offered=text.TLS_NOT_AVAILABLE,
    twice=text.STARTTLS_TWICE,
    arguments=text.STARTTLS_PARAMETERS,
    authenticated=text.STARTTLS_AFTER_AUTH,
    injection=text.STARTTLS_INJECTION,
)
POLICY_REPLIES = line_proxy.PolicyReplies(
    ALLOWED_BEFORE_TLS,
    text.MUST_STARTTLS,
    unavailable=text.TLS_REQUIRED_UNAVAILABLE,
    credentials=SASL_COMMANDS,
    sasl=SASL_COMMANDS,
    encryption_required=text.ENCRYPTION_REQUIRED,
    sasl_data_refused=text.ENCRYPTION_REQUIRED,
)
# Replies that answer no client command: the backend's greeting, its reply to our RSET.
OWN_REPLIES = frozenset({Expect.GREETING, Expect.RESET_AFTER_TLS})
# Replies after which the client's bytes are not commands, to whatever command.
PHASES = {b"354": Expect.DATA, b"334": Expect.AUTH}
FORWARDED = {
    verb.encode(): Expect[verb] for verb in ("EHLO", "HELO", "MAIL", "RSET", "DATA", "AUTH")
}


class Phase(enum.Enum):
    """The SMTP session as the backend's replies made it (RFC 5321 section 3.3)."""

    HELLO = "hello"  # no accepted EHLO/HELO yet: commands pass, STARTTLS 503
    RESET = "reset"  # reset by STARTTLS: EHLO or HELO before anything else
    GREETED = "greeted"  # an accepted EHLO/HELO: STARTTLS allowed
    MAIL = "mail"  # a mail transaction (a 2xx to MAIL): STARTTLS 503


# Every move of Phase, by what makes it: a 2xx to EHLO, HELO, MAIL or RSET (AFTER_2XX:
# the Expect it answers), any reply to the end of the data (Expect.MESSAGE), STARTTLS
# accepted (the client's Event.STARTTLS). A phase a row does not name stays as it is (a
# 2xx to MAIL before EHLO opens nothing STARTTLS could see: it is refused there already).
PHASE_MOVES: Mapping[Expect | line_proxy.Event, Mapping[Phase, Phase]] = {
    Expect.EHLO: {phase: Phase.GREETED for phase in Phase},
    Expect.HELO: {phase: Phase.GREETED for phase in Phase},
    Expect.MAIL: {Phase.GREETED: Phase.MAIL},
    Expect.RSET: {Phase.MAIL: Phase.GREETED},
    Expect.MESSAGE: {Phase.MAIL: Phase.GREETED},
    line_proxy.Event.STARTTLS: {Phase.GREETED: Phase.RESET},
}
# The replies that move it only when positive (STARTTLS is the proxy's own).
AFTER_2XX = frozenset({Expect.EHLO, Expect.HELO, Expect.MAIL, Expect.RSET})


class SmtpProxy(line_proxy.LineProxy):
    """require_tls: -n smtp (530 until STARTTLS); False for -n smtp- (plaintext fallback).
    offer_tls, plaintext_auth: the client's policy (line_proxy.LineProxy).

    log_dialogue: Log(7, ...) for every line (the relay sets it at -D 7).
    received_header: after TLS, start each message with a Received: line naming
    the TLS version and cipher (on by default: it is how qmail-smtpd and the
    mailbox learn TLS was used, and a trace line is always safe to add).
    clock: seconds since the epoch, for that line's date.
    """

    ClientError, BackendError, STOP_POINTS = ClientError, BackendError, STOP_POINTS
    LIMITS, STARTTLS_REPLIES, POLICY_REPLIES = LIMITS, STARTTLS_REPLIES, POLICY_REPLIES

    def __init__(self, *, received_header: bool = True, clock=time.time, **options: bool):
        super().__init__(**options)  # the client's policy: line_proxy.LineProxy's
        self.received_header = received_header
        self.clock = clock
        self.phase = Phase.HELLO
        self.authenticated = False  # a 235 (RFC 4954): for the rest of the session
        self._replies = ReplyReader()
        self._pending.append(line_proxy.Pending(Expect.GREETING))

    @property
    def client_paused(self) -> bool:
        """True while the proxy holds enough unparsed client bytes: the relay may
        stop reading the client until a later call makes it False again."""
        return len(self._client) > text.PAUSE_HELD

    def _phase_move(self, cause: Expect | line_proxy.Event) -> None:
        self.phase = PHASE_MOVES[cause].get(self.phase, self.phase)

    @property
    def awaiting(self) -> bool:
        """True while a command/reply exchange is under way (protocol.py): part of a
        command has come (or the rest of a refused one is being dropped), or the
        backend owes a reply. Message data is no exchange; its end is."""
        if self.state is not State.COMMAND:
            return False
        return bool(self._client or self._pending or self._client_run.run is not None)

    # -- the client side --------------------------------------------------------

    def _stopped(self) -> bool:
        """Also: after STARTTLS, a command that must wait for the new EHLO/HELO waits
        while any reply is due (it may be that EHLO's: decide after it)."""
        if super()._stopped():
            return True
        if self.phase is not Phase.RESET or self.state is not State.COMMAND:
            return False
        end = self._client.find(b"\n")
        if not self._pending or not 0 <= end < text.MAX_LINE:
            return False
        verb, _ = split_command(bytes(self._client[: end + 1]))
        return verb not in ALLOWED_BEFORE_HELO

    def _command_line(self, line: bytes) -> None:
        verb, argument = split_command(line)
        self._log_lines("C: ", shown(verb, argument, line))
        self._command(line_proxy.Command(verb, argument, line))

    def _is_command(self, command: line_proxy.Command) -> bool:
        return command.verb in KNOWN or command.verb in SASL_COMMANDS

    def _refused_here(self, verb: bytes) -> bytes | None:
        if self.phase is Phase.RESET and verb not in ALLOWED_BEFORE_HELO:
            return text.HELO_AFTER_TLS
        return None

    def _forward(self, command: line_proxy.Command) -> None:
        verb = command.verb
        self._emit(ToBackend(command.line))
        self._queue(
            line_proxy.Pending(
                FORWARDED.get(verb, Expect.OTHER if verb in FOLLOWED else Expect.UNKNOWN)
            )
        )

    def _continuation_line(self, line: bytes) -> None:
        super()._continuation_line(line)
        self._queue(line_proxy.Pending(Expect.AUTH))

    def _starttls_command(self, command: line_proxy.Command) -> None:
        self._queue(line_proxy.Pending(line_proxy.Local.STARTTLS, argument=command.argument))

    def _not_followable(self, command: line_proxy.Command) -> None:
        self._local(text.NOT_IMPLEMENTED)

    def _bdat(self, command: line_proxy.Command) -> None:
        size, _ = first_word(command.argument)
        if not size.isdigit() or len(size) > 18:
            raise ClientError(text.BDAT_BAD_SIZE)
        if int(size):
            self._client_run.start(Count(int(size), keep=False))
        self._local(text.BDAT_REFUSED)

    def _message_end(self, message) -> None:
        self._log(f"C: ({message.size} bytes of message data)")
        self._move(line_proxy.Event.MESSAGE_END)
        self._queue(line_proxy.Pending(Expect.MESSAGE))

    # -- STARTTLS (decided by LineProxy._starttls when it reaches the head) -------

    def _authenticated(self) -> bool:
        return self.authenticated

    def _starttls_refusals(self) -> list[tuple[bool, bytes]]:
        return [
            (self.phase in (Phase.HELLO, Phase.RESET), text.STARTTLS_BEFORE_HELO),
            (self.phase is Phase.MAIL, text.STARTTLS_IN_TRANSACTION),
        ]

    def _tls_accepted(self) -> None:
        # RFC 3207 section 4.2: the server must discard what it knew of the
        # client; RSET ends any state the backend keeps beyond a transaction.
        self._log("P: RSET (to the server; its reply is checked, not passed on)")
        self._emit(ToBackend(b"RSET\r\n"))
        self._pending.append(line_proxy.Pending(Expect.RESET_AFTER_TLS))
        self._phase_move(line_proxy.Event.STARTTLS)

    # -- replies, in FIFO order ---------------------------------------------------

    def _response_line(self, line: bytes) -> None:
        reply = self._replies.add(line)
        if reply is not None:
            self._on_reply(reply)
            self._pump()

    def _unfinished_response(self) -> bytes:
        return self._replies.leftover()

    def _on_reply(self, reply: Reply) -> None:
        self._log_lines("S: ", reply.raw)
        if not self._pending:  # unsolicited (a 421 before a shutdown): pass it on
            self._emit(ToClient(reply.raw))
            return
        expect = self._pending.popleft().kind
        if expect not in OWN_REPLIES:
            # The backend decides what comes next, whatever the proxy made of the command.
            if reply.code in PHASES:
                expect = PHASES[reply.code]
                if self._pending:  # what followed went on as commands: out of step
                    raise BackendError(text.BACKEND_OUT_OF_STEP)
            self.authenticated = self.authenticated or reply.code == b"235"  # RFC 4954
        if reply.positive and expect in AFTER_2XX:
            self._phase_move(expect)
        self.REPLIES.get(expect, SmtpProxy._pass)(self, reply)
        self._answer_local()

    def _pass(self, reply: Reply) -> None:
        self._emit(ToClient(reply.raw))

    def _greeting(self, reply: Reply) -> None:
        if self.offer_tls and self._client[:1] == TLS_HANDSHAKE_RECORD:
            self._log("P: implicit TLS: the client sent a TLS handshake first")
            early = bytes(self._client)
            self._client.clear()
            self._start_tls(early)
        self._emit(ToClient(reply.raw))

    def _ehlo(self, reply: Reply) -> None:
        if reply.positive:
            offer = self.offer_tls and not (self._tls_active or self.authenticated)
            reply = rewrite_ehlo(reply, offer, offer_auth=not self._credentials_refused())
        self._emit(ToClient(reply.raw))

    def _data(self, reply: Reply) -> None:
        self._emit(ToClient(reply.raw))
        if reply.code == b"354":
            self._move(line_proxy.Event.MESSAGE)
            self._client_run.start(MessageData(), self._message_end)
            if self.tls is not None and self.received_header:
                self._emit(ToBackend(received_line(self.tls, self.authenticated, self.clock())))

    def _message(self, reply: Reply) -> None:
        self._phase_move(Expect.MESSAGE)
        self._emit(ToClient(reply.raw))

    def _auth(self, reply: Reply) -> None:
        if reply.code == b"334":
            self._move(line_proxy.Event.CHALLENGE)
        self.authenticated = self.authenticated or reply.positive
        self._emit(ToClient(reply.raw))

    def _reset_after_tls(self, reply: Reply) -> None:
        if not reply.positive:
            raise BackendError(text.BACKEND_RESET_FAILED)

    # -- the tables -------------------------------------------------------------

    # The verbs the proxy handles itself, whatever the state (the rest: LineProxy._command).
    COMMANDS: ClassVar[Mapping[bytes, Callable[["SmtpProxy", line_proxy.Command], None]]] = {
        b"STARTTLS": _starttls_command,
        b"BDAT": _bdat,
        **dict.fromkeys(NOT_FOLLOWABLE, _not_followable),
    }
    # What a reply does, by what it answers (and AFTER_2XX); any other passes on as it came.
    REPLIES: ClassVar[Mapping[enum.Enum, Callable[["SmtpProxy", Reply], None]]] = {
        Expect.GREETING: _greeting,
        Expect.EHLO: _ehlo,
        Expect.DATA: _data,
        Expect.MESSAGE: _message,
        Expect.AUTH: _auth,
        Expect.RESET_AFTER_TLS: _reset_after_tls,
    }

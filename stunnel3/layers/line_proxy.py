"""The part of a STARTTLS layer that is not the protocol: smtp.py, imap.py and pop3.py share it.

A layer is sans-I/O (protocol.py): bytes in, actions out. `LineProxy` answers the
relay, buffers both sides, keeps the FIFO of what each awaited reply means, and
holds every rule the three protocols have in common. A protocol supplies tables
a reader can grep, and a few hooks:

  COMMANDS     verb -> handler, for the verbs the proxy handles itself (STARTTLS,
               ...); every other verb passes the gates below and is forwarded
  REPLIES      what an awaited reply means (its Expect) -> handler
  STOP_POINTS  the Expects after which nothing more is parsed until the reply
  LIMITS       the bounds, and what the client hears past each
  texts        STARTTLS_REPLIES, POLICY_REPLIES

State, the client's side: what its next bytes are. Every move is a row of MOVES
(h11's _state.py is the model):

  COMMAND      -> CONTINUATION  a continuation request (SMTP 334, IMAP and POP3 `+`)
  CONTINUATION -> COMMAND       the one line it asked for is taken, or the final reply came
  COMMAND      -> DATA          SMTP: a 354; DATA -> COMMAND at the end of the data
  COMMAND      -> HANDSHAKE     StartTls; HANDSHAKE -> COMMAND when tls_started
  any          -> CLOSED        Close: later input is ignored

The rules kept here, once for all layers:

  FIFO         each forwarded command appends what its reply means (Pending); a reply
               the proxy makes itself is an entry too (Local.REPLY), answered when it
               reaches the head, so replies reach the client in command order.
  stop points  after a command in STOP_POINTS, and after STARTTLS, nothing more is
               parsed until the reply: what follows may be data, SASL, or TLS.
  STARTTLS     an entry (Local.STARTTLS) decided at the head, in this order: not
               offered, TLS already active, arguments, authenticated, the protocol's
               own (SMTP: not greeted, in a transaction); any client byte behind it
               ends the session (CVE-2011-0411); else the ready reply, StartTls.
  before TLS   require_tls: only POLICY_REPLIES.allowed_before_tls pass, the rest is
               refused here; not offered as well: the session ends at once. Unless
               plaintext_auth (and not require_tls), credentials never reach the
               backend in plaintext: their verbs (POLICY_REPLIES.credentials) are
               refused here, the line a continuation request asks for goes to the
               backend as `*` (SASL's cancel), and what a client sends behind a
               refused SASL command without waiting is refused until a command.
  lines        a line ends at LF; a line over LIMITS.max_line is dropped as it comes and
               `_line_too_long` answers it (a reply, or the end of the session).
  runs         bytes that are not lines (message data, a literal, a BDAT chunk, the
               rest of a long line; from the backend a literal or a POP3 body) go to
               a Run first, which passes them on or drops them, up to its end.
  EOF          client EOF stops client input; the backend gets EOF only once nothing
               the client sent is still waiting. Backend EOF passes what is left of a
               response, then EOF, then the session ends.
  errors       one family (h11's rule): a ProxyError carries the reply the client
               gets; the session then ends and all later input is ignored.
  log          Log(7) per line only when log_dialogue; C: client, S: server, P: the
               proxy's own. Dialogue bytes become log text in one place (log_text).
               The proxy's idea of a command is the backend's (first_word, loggable):
               a verb ends at any blank some backend ends it at; what the proxy does
               not know it waits on (the backend's reply decides what follows) and
               never logs; a credential or SASL data never reaches the log (lines.py).
"""

import enum
from collections import deque
from collections.abc import Callable, Mapping
from typing import ClassVar

from stunnel3.layers.lines import log_text
from stunnel3.layers.protocol import Action, Close, Log, StartTls, TlsInfo, ToBackend, ToClient
from stunnel3.layers.runs import RestOfLine, RunSlot
from stunnel3.support.record import record, replace


class ProxyError(Exception):
    """An error the session cannot go on from: `reply` goes to the client, then the
    session ends and input is refused (h11's rule). Errors a session survives (a
    line too long, a refused STARTTLS) are plain replies queued in turn, not these."""

    def __init__(self, reply: bytes):
        super().__init__(reply.decode("ascii").strip())
        self.reply = reply


# -- the client's side: states and their moves ------------------------------------------


class State(enum.Enum):
    """What the client's next bytes are."""

    COMMAND = "command"  # command lines (possibly held behind a stop point)
    CONTINUATION = "continuation"  # the one line a continuation request asked for
    DATA = "data"  # SMTP: message bytes, up to CRLF.CRLF
    HANDSHAKE = "handshake"  # StartTls issued; the relay reports tls_started next
    CLOSED = "closed"  # after Close: input is ignored


class Event(enum.Enum):
    CHALLENGE = "a continuation request"
    ANSWER = "the line it asked for, or the final reply"
    MESSAGE = "a 354"
    MESSAGE_END = "the end of the data"
    STARTTLS = "StartTls"
    TLS_STARTED = "the handshake is done"
    CLOSE = "Close"


# Every move of State; an event in a state its row does not name is a bug of ours.
MOVES: Mapping[Event, Mapping[State, State]] = {
    Event.CHALLENGE: {State.COMMAND: State.CONTINUATION},
    Event.ANSWER: {State.CONTINUATION: State.COMMAND},
    Event.MESSAGE: {State.COMMAND: State.DATA},
    Event.MESSAGE_END: {State.DATA: State.COMMAND},
    Event.STARTTLS: {State.COMMAND: State.HANDSHAKE},
    Event.TLS_STARTED: {State.HANDSHAKE: State.COMMAND},
    Event.CLOSE: {state: State.CLOSED for state in State},
}
READING = frozenset({State.COMMAND, State.CONTINUATION, State.DATA})


# -- the FIFO -----------------------------------------------------------------------------


class Local(enum.Enum):
    """FIFO entries the proxy answers itself, when they reach the head."""

    REPLY = "reply"  # a ready reply
    STARTTLS = "starttls"  # decided at the head: refused, or TLS starts


@record
class Pending:
    """One entry of the FIFO: what an awaited reply means, or a reply the proxy owes."""

    kind: enum.Enum  # the protocol's Expect, or Local
    tag: bytes = b""  # IMAP: the tag of the command (its completion carries it)
    reply: bytes = b""  # Local.REPLY: the reply it stands for (after the tag, in IMAP)
    argument: bytes = b""  # Local.STARTTLS: the command's arguments, judged at the head


@record(frozen=True)
class Command:
    """A client's command line as the protocol parsed it."""

    verb: bytes  # upper-cased
    argument: bytes  # what follows the verb, without the blanks around it or the line end
    line: bytes  # as it came, line end included
    tag: bytes = b""  # IMAP's


@record(frozen=True)
class Limits:
    """A protocol's bounds, and what the client hears past each."""

    max_line: int  # a line, LF included, from either side
    max_pending: int  # unanswered commands, then parsing waits
    max_held: int  # unparsed client bytes, then the session ends
    line_too_long: bytes  # a client line over max_line (LineProxy._line_too_long)
    too_much_pipelining: bytes  # over max_held
    backend_line_too_long: bytes  # a backend line over max_line: the session ends


@record(frozen=True)
class StartTlsReplies:
    """What a protocol answers to STARTTLS (STLS), in the order the refusals are tried."""

    ready: bytes
    not_offered: bytes  # STARTTLS is not offered to this client (offer_tls False)
    twice: bytes
    arguments: bytes
    authenticated: bytes
    injection: bytes  # bytes behind it (CVE-2011-0411): the session ends with this
    injection_answer: bytes | None = None  # IMAP: the command's own answer first


@record(frozen=True)
class PolicyReplies:
    """What a protocol refuses before TLS, and what it answers then."""

    allowed_before_tls: frozenset[bytes]  # require_tls: the verbs that pass before TLS
    must_starttls: bytes  # require_tls: to the others
    unavailable: bytes  # TLS required and not offered: said instead of the greeting, the end
    credentials: frozenset[bytes]  # verbs that carry a login (USER, LOGIN, AUTH, ...)
    sasl: frozenset[bytes]  # those of them that start a SASL exchange
    encryption_required: bytes  # to credentials while they are refused
    sasl_data_refused: bytes  # to a line sent behind a refused SASL command (_is_command)


# -- the skeleton -------------------------------------------------------------------------


class LineProxy:
    """The relay's interface (protocol.py) and the rules every layer shares (module doc).

    require_tls: before TLS only POLICY_REPLIES.allowed_before_tls pass (-n smtp,
    -n pop3, or this client's policy). offer_tls: STARTTLS is offered (False: the
    policy says no, or the certificate cannot be used; with require_tls too the
    session ends at once). plaintext_auth: credentials may cross before TLS (3.22
    let them; else, the default, they never reach the backend in plaintext).
    log_dialogue: Log(7, ...) for every line (the relay's -D 7)."""

    # -- what each protocol supplies --------------------------------------------------
    ClientError: ClassVar[type[ProxyError]]
    BackendError: ClassVar[type[ProxyError]]
    LIMITS: ClassVar[Limits]
    STARTTLS_REPLIES: ClassVar[StartTlsReplies]
    POLICY_REPLIES: ClassVar[PolicyReplies]
    STOP_POINTS: ClassVar[frozenset[enum.Enum]]
    COMMANDS: ClassVar[Mapping[bytes, Callable[..., None]]]  # verb -> handler(self, command)
    # and REPLIES: the protocol's own table, Expect -> handler (its replies differ)

    def __init__(
        self,
        *,
        require_tls: bool = False,
        offer_tls: bool = True,
        plaintext_auth: bool = False,
        log_dialogue: bool = False,
    ):
        self.require_tls = require_tls
        self.offer_tls = offer_tls
        self.plaintext_auth = plaintext_auth
        self.log_dialogue = log_dialogue
        self.state = State.COMMAND
        self.tls: TlsInfo | None = None
        self._tls_active = False  # StartTls issued (the handshake may be under way)
        self._pending: deque[Pending] = deque()
        # Bytes not yet parsed. Bytearrays: `del buffer[:n]` is O(1) in CPython, so
        # taking pipelined lines off the front costs no copy of the rest.
        self._client = bytearray()
        self._server = bytearray()
        self._client_run = RunSlot()  # the client's bytes that are not lines
        self._server_run = RunSlot()  # the backend's
        self._client_eof = False
        self._backend_eof_sent = False
        self._sasl_refused = False  # lines behind a refused SASL command may be its data
        self._out: list[Action] = []

    # -- the interface the relay drives (protocol.py) -----------------------------------

    def start(self) -> list[Action]:
        if self.require_tls and not self.offer_tls:
            self._fail(self.ClientError(self.POLICY_REPLIES.unavailable))
        return self._take()

    def feed_client(self, data: bytes) -> list[Action]:
        if self.state is State.CLOSED or self._client_eof:
            return []
        if data:
            self._client += data
        else:
            self._client_eof = True
        self._guarded(self._pump)
        return self._take()

    def feed_backend(self, data: bytes) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        if not data:
            leftover = self._unfinished_response() + bytes(self._server)
            if leftover:  # an unfinished response still reaches the client
                self._emit(ToClient(leftover))
            self._emit(ToClient(b""))
            self._close("server closed the connection")
            return self._take()
        self._server += data
        self._guarded(self._responses)
        self._guarded(self._pump)
        return self._take()

    def tls_started(self, info: TlsInfo) -> list[Action]:
        self.tls = info
        self._log(f"P: TLS started: {info.version} {info.cipher} {info.bits} bits")
        if self.state is State.HANDSHAKE:
            self._move(Event.TLS_STARTED)
            self._guarded(self._pump)
        return self._take()

    # -- the client's bytes -------------------------------------------------------------

    def _pump(self) -> None:
        """Take what the client sent as far as the state allows."""
        while self._client and self.state in READING:
            if self._client_run.run is not None:
                self._client_run.step(self._client, lambda out: self._emit(ToBackend(out)))
            elif self._stopped():
                break
            elif self._next_line_too_long():
                self._line_too_long()
            else:
                line = self._next_line()
                if line is None:
                    break
                self._client_line(line)
        if len(self._client) > self.LIMITS.max_held:
            raise self.ClientError(self.LIMITS.too_much_pipelining)
        if self._client_eof_due():
            held = self._client_run.run.flush() if self._client_run.run is not None else b""
            if held:
                self._emit(ToBackend(held))
            self._emit(ToBackend(b""))
            self._backend_eof_sent = True

    def _stopped(self) -> bool:
        """Parse no further: a stop point awaits its reply, or the FIFO is full. The
        line a continuation request asked for is always due."""
        if self.state is State.CONTINUATION or not self._pending:
            return False
        last = self._pending[-1].kind
        stop = last in self.STOP_POINTS or last is Local.STARTTLS
        return stop or len(self._pending) >= self.LIMITS.max_pending

    def _next_line_too_long(self) -> bool:
        end, limit = self._client.find(b"\n"), self.LIMITS.max_line
        return end >= limit or (end < 0 and len(self._client) >= limit)

    def _next_line(self) -> bytes | None:
        """The client's next whole line (LF included), or None while it has not all come."""
        end = self._client.find(b"\n")
        if end < 0:
            if self._client_eof:
                self._client.clear()  # a command cut by EOF is not a command
            return None
        line = bytes(self._client[: end + 1])
        del self._client[: end + 1]
        return line

    def _line_too_long(self) -> None:
        """A line too long: dropped as it comes, answered in turn, the session goes on."""
        self._log("C: (line too long)")
        self._client_run.start(RestOfLine())
        self._local(self.LIMITS.line_too_long)

    def _client_line(self, line: bytes) -> None:
        if self.state is State.CONTINUATION:
            self._move(Event.ANSWER)
            self._continuation_line(line)
        else:
            self._command_line(line)

    def _continuation_line(self, line: bytes) -> None:
        """The line a continuation request asked for (SASL data, IMAP's DONE). Before
        TLS, while credentials are refused, SASL data never reaches the backend: it
        gets `*` instead, SASL's cancel (RFC 4954 section 4, RFC 9051 6.2.2, RFC 5034),
        and the client the backend's answer to that."""
        if self._continuation_shown():
            self._log("C: " + log_text(line))
        elif self._credentials_refused():
            self._log("C: *** (not forwarded before TLS: `*` instead, SASL's cancel)")
            line = b"*\r\n"
        else:
            self._log("C: ***")
        self._emit(ToBackend(line))

    def _continuation_shown(self) -> bool:
        return False  # SASL data; IMAP shows IDLE's DONE

    def _credentials_refused(self) -> bool:
        return not self._tls_active and (self.require_tls or not self.plaintext_auth)

    def _command_line(self, line: bytes) -> None:
        raise NotImplementedError

    def _command(self, command: Command) -> None:
        """The proxy's own handler for the verb (COMMANDS), or the gates before TLS,
        or forwarded."""
        policy, verb = self.POLICY_REPLIES, command.verb
        if self._sasl_refused:
            if not self._is_command(command):
                # sent behind a refused AUTH without waiting: it may be its SASL data
                self._refuse(replace(command, tag=b""), policy.sasl_data_refused)
                return
            self._sasl_refused = False
        handler = self.COMMANDS.get(verb)
        if handler is not None:
            handler(self, command)
        elif not self._tls_active and self.require_tls and verb not in policy.allowed_before_tls:
            self._refuse(command, policy.must_starttls)
        elif self._credentials_refused() and verb in policy.credentials:
            self._sasl_refused = verb in policy.sasl
            self._refuse(command, policy.encryption_required)
        elif (refusal := self._refused_here(verb)) is not None:
            self._refuse(command, refusal)
        else:
            self._forward(command)

    def _is_command(self, command: Command) -> bool:
        """Whether a line is a command the protocol knows (not, say, SASL data)."""
        raise NotImplementedError

    def _refused_here(self, verb: bytes) -> bytes | None:
        """The protocol's own refusal of a verb, after the shared gates (SMTP's)."""
        return None

    def _refuse(self, command: Command, reply: bytes) -> None:
        self._local(reply, tag=command.tag)

    def _forward(self, command: Command) -> None:
        raise NotImplementedError

    # -- the backend's bytes ------------------------------------------------------------

    def _responses(self) -> None:
        """Take the backend's bytes as far as whole lines (and runs) go."""
        while self._server and self.state is not State.CLOSED:
            if self._server_run.run is not None:
                self._server_run.step(self._server, lambda out: self._emit(ToClient(out)))
                continue
            lf, limit = self._server.find(b"\n"), self.LIMITS.max_line
            # the bound holds however the bytes were split, whole line or partial
            if lf > limit or (lf < 0 and len(self._server) > limit):
                raise self.BackendError(self.LIMITS.backend_line_too_long)
            if lf < 0:
                return
            line = bytes(self._server[: lf + 1])
            del self._server[: lf + 1]
            self._response_line(line)

    def _response_line(self, line: bytes) -> None:
        raise NotImplementedError

    def _unfinished_response(self) -> bytes:
        """What a protocol holds of a response that an EOF cut (before _server's bytes)."""
        return b""

    # -- the FIFO -----------------------------------------------------------------------

    def _queue(self, entry: Pending) -> None:
        self._pending.append(entry)
        self._answer_local()

    def _local(self, reply: bytes, tag: bytes = b"") -> None:
        self._queue(Pending(Local.REPLY, tag=tag, reply=reply))

    def _mid_response(self) -> bool:
        """IMAP: the backend is inside a response; the proxy's own wait for its end."""
        return False

    def _answer_local(self) -> None:
        """Replies the proxy makes itself go out as soon as they reach the head."""
        while self._pending and isinstance(self._pending[0].kind, Local):
            if self._mid_response():
                return
            entry = self._pending.popleft()
            if entry.kind is Local.REPLY:
                self._answer(entry, entry.reply)
            elif self._starttls(entry):
                return

    def _answer(self, entry: Pending, reply: bytes) -> None:
        """The proxy's reply to one command (IMAP puts the command's tag first)."""
        self._say(entry.tag + b" " + reply if entry.tag else reply)

    def _starttls(self, entry: Pending) -> bool:
        """Decide a STARTTLS that reached the head of the FIFO; True if TLS starts."""
        replies = self.STARTTLS_REPLIES
        refusals = [
            (not self.offer_tls, replies.not_offered),
            (self._tls_active, replies.twice),
            (bool(entry.argument), replies.arguments),
            (self._authenticated(), replies.authenticated),
            *self._starttls_refusals(),
        ]
        refusal = next((reply for refused, reply in refusals if refused), None)
        if refusal is not None:
            self._answer(entry, refusal)
            return False
        if self._client:
            if replies.injection_answer is not None:
                self._answer(entry, replies.injection_answer)
            raise self.ClientError(replies.injection)
        self._answer(entry, replies.ready)
        self._start_tls()
        self._tls_accepted()
        return True

    def _authenticated(self) -> bool:
        raise NotImplementedError

    def _starttls_refusals(self) -> list[tuple[bool, bytes]]:
        """The protocol's own refusals, after the shared ones (SMTP's)."""
        return []

    def _tls_accepted(self) -> None:
        """After the ready reply and StartTls (SMTP resets the backend)."""

    # -- plumbing -----------------------------------------------------------------------

    def _move(self, event: Event) -> None:
        try:
            self.state = MOVES[event][self.state]
        except KeyError:
            raise RuntimeError(f"{event.value} in state {self.state.name}") from None

    def _start_tls(self, early: bytes = b"") -> None:
        """Ask the relay for the handshake; parsing waits in HANDSHAKE until it is done."""
        self._emit(StartTls(early=early))
        self._tls_active = True
        self._move(Event.STARTTLS)

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
                self._log(prefix + log_text(line))

    def _say(self, reply: bytes) -> None:
        """A reply the proxy makes itself goes to the client (logged as P:)."""
        self._log_lines("P: ", reply)
        self._emit(ToClient(reply))

    def _close(self, reason: str) -> None:
        self._emit(Close(reason))
        self._move(Event.CLOSE)

    def _guarded(self, step) -> None:
        if self.state is State.CLOSED:
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
        for EOF (once)."""
        waiting = self._client and self.state is not State.CLOSED
        return self._client_eof and not waiting and not self._backend_eof_sent

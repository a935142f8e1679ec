"""The one relay loop of every mode: two endpoints, a protocol layer, TLS.

    client (TLS side)  <->  [TlsSession]  <->  protocol layer  <->  backend (plaintext)

The two sides have the layers' names (protocol.py): "client" is the side TLS
faces (fds 0/1 or an accepted socket in server mode, the -r connection or the
-l program with -c, where the "client" is the remote server); "backend" the
plaintext side (-F, -l, -L, -r, or fds 0/1 with -c). Before the layer asks for
TLS (StartTls) the client's bytes reach it raw; after, they pass through the
TlsSession first. The layer sees every
plaintext byte and decides what goes where (see protocol.py).

Each pass of the loop first settles: it moves everything that can move without
waiting (handshake steps, TLS records in, the layer's answers to what they
decrypted, queued plaintext encrypted, queued bytes written as far as each
descriptor takes them, EOFs turned into close_notify and shutdowns), round after
round, until a whole round moves nothing. One step can
enable another (decrypted client bytes make the layer queue a reply, which must
be encrypted before anything waits), so stopping earlier would leave bytes that
no descriptor will ever wake the loop for. Only then is the poll set derived
from the state; then the loop waits and reads (a descriptor that became
writable is written to when the next pass settles).

Three byte queues (ByteQueue: chunks as they came, never copied together)
hold what waits for a writable fd or for TLS:

    client_out ciphertext (or raw bytes before TLS) for the client
    plain_out  plaintext for TLS: held during the handshake, or back-pressured
    back_out   bytes for the backend

A side is read only while the queue its bytes end up in is below BUFFER: that
is the back-pressure, and it bounds memory whatever the peers do.

Bounds (bounds.py, STUNNEL3_..._TIMEOUT, checked at start-up): the handshake,
from StartTls to an established session; idle time, no byte moving either way;
3.22's 10 s wait for the peer's last bytes once the backend has closed its
output. A layer with command/reply exchanges (its `awaiting`: the SMTP proxy)
adds bounds.Exchanges: the whole session, and each exchange, timed from when
the layer starts to await (after settling) and restarted only by the backend's
bytes, so that neither a command sent a byte a second nor NOOPs pipelined at a
backend that hangs outlive it (message data is no exchange); and once its
client has ended and is owed nothing, the 10 s wait applies too. A bound that
has passed ends the session before the next wait, ready bytes or not.

The layer's debug Log lines are the dialogue: a log.DialogueCap caps them.
"""

import select
import time
from typing import TYPE_CHECKING

from stunnel3.engine.bounds import Bounds, Exchanges
from stunnel3.engine.endpoints import ByteQueue, Endpoint, PeerError
from stunnel3.layers.protocol import Action, Close, Log, StartTls, ToBackend, ToClient
from stunnel3.log import LOG_DEBUG, DialogueCap
from stunnel3.tls import TlsError, TlsSession

if TYPE_CHECKING:  # only makesock's hand-over loads it (stunnel._line_ends)
    from stunnel3.engine.line_ends import FixcrioRule

BUFFER = 256 * 1024
READ_SIZE = 128 * 1024
CLOSE_WAIT = 10.0
ALERT_WAIT = 2.0  # for the alert of a failed TLS session to leave


class Relay:
    """Run one session: `run()` returns True if it ended cleanly, False on a reset."""

    def __init__(
        self,
        client: Endpoint,
        backend: Endpoint | None,
        layer,
        new_tls,
        log,
        open_backend=None,
        bounds: Bounds | None = None,
        line_ends: "FixcrioRule | None" = None,
    ):
        """line_ends: what to do with the backend's line ends (line_ends.py); None: nothing."""
        self.client = client
        self.backend = backend
        self.open_backend = open_backend  # -l without -n: started after the handshake
        self.layer = layer
        self.new_tls = new_tls  # () -> TlsSession
        self.log = log
        self.tls: TlsSession | None = None
        self.client_out = ByteQueue()
        self.plain_out = ByteQueue()
        self.back_out = ByteQueue()
        self.client_reading = self.back_reading = True
        self.client_writing = self.back_writing = True
        self.client_eof_queued = self.back_eof_queued = False  # ToClient(b"") / ToBackend(b"")
        self.closing = False
        self.ssl_bytes = self.sock_bytes = 0
        self.bounds = bounds or Bounds()
        self.handshake_timeout = self.bounds.handshake
        self.idle_timeout = self.bounds.idle
        self.handshake_deadline: float | None = None
        self.last_activity = time.monotonic()
        self.exchanges: Exchanges | None = None  # a layer of commands and replies
        if hasattr(layer, "awaiting"):
            self.exchanges = Exchanges(self.bounds, self.last_activity)
        self.dialogue = DialogueCap(log, self.bounds.lines, self.bounds.rate)
        self._poller = select.poll()
        self._watched: dict[int, int] = {}
        # A backend whose fixcrio makesock left out: its rule, one state each way,
        # on the bytes that cross the backend's descriptor (what fixcrio would see).
        self._cr_out = line_ends.outgoing if line_ends is not None else None
        self._cr_in = line_ends.incoming if line_ends is not None else None

    # -- the layer's actions -------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ToClient):
                if self.client_eof_queued:
                    continue  # nothing goes out after our EOF
                if not action.data:
                    self.client_eof_queued = True
                elif self.tls is not None:
                    self.plain_out += action.data
                else:
                    self.client_out += action.data
                    self.ssl_bytes += len(action.data)
            elif isinstance(action, ToBackend):
                if self.back_eof_queued:
                    continue
                if action.data:
                    fix = self._cr_out
                    self.back_out += fix(action.data) if fix is not None else action.data
                else:
                    self.back_eof_queued = True
            elif isinstance(action, StartTls):
                self.tls = self.new_tls()
                self.handshake_deadline = time.monotonic() + self.handshake_timeout
                if action.early:
                    self.tls.receive(action.early)
            elif isinstance(action, Close):
                # Rule: Close is EOF both ways (close_notify, shutdowns) once what is
                # queued has been written; the session then ends.
                self.log.debug(f"Closing: {action.reason}")
                self.closing = True
                self.client_eof_queued = self.back_eof_queued = True
            elif isinstance(action, Log):
                if action.level >= LOG_DEBUG:
                    self.dialogue.line(action.text)
                else:
                    self.log.log(action.level, action.text)

    # -- moving bytes without waiting ----------------------------------------

    def _settle(self) -> None:
        """Move everything that can move without waiting, until nothing does."""
        while True:
            moved = self._pump_tls()
            moved |= self._write_ready()
            moved |= self._flush_closes()
            if not moved:
                return

    def _write_ready(self) -> bool:
        """Write what is queued for either side now, as far as its socket takes it: a
        descriptor that has room (the common case) is not first polled for it."""
        moved = False
        if self.client_out:
            moved = self._write(self.client, self.client_out) > 0
        back = self.backend
        if back is not None and self.back_out:
            sent = self._write(back, self.back_out)
            self.sock_bytes += sent
            moved |= sent > 0
        return moved

    def _pump_tls(self) -> bool:
        """One round of TLS work; True if anything moved (the next round may move more)."""
        tls = self.tls
        if tls is None:
            return False
        if not tls.established:
            done = tls.handshake()
            self.client_out += tls.outgoing()
            if not done:
                return False
            self.handshake_deadline = None
            info = tls.info()
            self.log.info(f"Negotiated ciphers: {info.cipher} {info.version} ({info.bits} bits)")
            if self.backend is None and self.open_backend is not None:
                self.backend = self.open_backend(tls)
            self._apply(self.layer.tls_started(info))
            return True
        moved = False
        while self.plain_out and len(self.client_out) < BUFFER and self.client_writing:
            self.ssl_bytes += self._encrypt(tls)
            moved = True
        # Rule: EOF from the layer towards the client becomes close_notify once
        # every queued plaintext byte is encrypted.
        if self.client_eof_queued and not self.plain_out and self.client_writing:
            tls.close()
            self.client_out += tls.outgoing()
            self.client_writing = False
            moved = True
        while self.client_reading and len(self.back_out) < BUFFER and not self._layer_paused():
            plain = tls.read_many(READ_SIZE)
            if plain is None:
                break
            if not plain:
                self.client_reading = False
                self.log.debug("SSL closed on SSL_read")
            self._apply(self.layer.feed_client(plain))
            moved = True
        # Reading may have produced records of its own (a key update's answer, or
        # the refusal of a renegotiation).
        self.client_out += tls.outgoing()
        self._note_renegotiation(tls)
        return moved

    def _note_renegotiation(self, tls: TlsSession) -> None:
        if tls.renegotiations_refused and not self._renegotiation_logged:
            self._renegotiation_logged = True
            self.log.notice("SSL renegotiation refused: the session goes on as it was")

    _renegotiation_logged = False

    def _encrypt(self, tls: TlsSession) -> int:
        """Move about BUFFER bytes of plain_out through TLS into client_out."""
        chunks = self.plain_out.front(BUFFER)
        moved = 0
        for chunk in chunks:
            tls.write(chunk)
            moved += len(chunk)
        self.plain_out.consume(moved)
        self.client_out += tls.outgoing()
        return moved

    def _flush_closes(self) -> bool:
        """The half-close rules; True if a side was closed just now."""
        moved = False
        # Rule: once the client's EOF is queued and nothing is left to send,
        # our write side closes (after close_notify if TLS is on; a pipe closes).
        if self.client_eof_queued and not self.client_out and not self.plain_out:
            if self.client_writing and self.tls is None:
                self.client_writing = False
            if not self.client_writing and self.client.wfd >= 0 and not self._client_shut:
                self.client.shut_write()
                self._client_shut = moved = True
        # Rule: EOF towards the backend (close_notify or TCP EOF from the client)
        # becomes shutdown(SHUT_WR) on it, or close for a pipe, once back_out is empty.
        if self.back_eof_queued and not self.back_out and self.back_writing:
            self.back_writing = False
            moved = True
            if self.backend is not None:
                self.backend.shut_write()
        return moved

    _client_shut = False

    def _finished(self) -> bool:
        queues_empty = not (self.client_out or self.plain_out or self.back_out)
        if self.closing and queues_empty:
            return True
        if not self.client_writing and not self.back_writing and queues_empty:
            return True
        return not self.client_reading and not self.back_reading and queues_empty

    def _layer_paused(self) -> bool:
        return getattr(self.layer, "client_paused", False)

    # -- waiting -------------------------------------------------------------

    def _poll_set(self) -> dict[int, int]:
        wanted: dict[int, int] = {}

        def want(fd: int, event: int) -> None:
            wanted[fd] = wanted.get(fd, 0) | event

        client, back = self.client, self.backend
        # The client is read even while client_out is full (a client may send without
        # reading), but not without limit: TLS answers some records by itself.
        if (
            self.client_reading
            and len(self.back_out) < BUFFER
            and len(self.client_out) < 4 * BUFFER
            and not self._layer_paused()
        ):
            want(client.rfd, select.POLLIN)
        if self.client_out:
            want(client.wfd, select.POLLOUT)
        if back is not None:
            toward_client = len(self.plain_out) + len(self.client_out)
            if self.back_reading and toward_client < BUFFER and not self.closing:
                want(back.rfd, select.POLLIN)
            if self.back_out:
                want(back.wfd, select.POLLOUT)
        return wanted

    def _deadline(self) -> tuple[float, str]:
        """The nearest bound, and what to log when it passes ("": a close's wait ended)."""
        if self.handshake_deadline is not None:
            nearest = self.handshake_deadline, "SSL handshake timed out"
        elif not self.back_reading or self.closing or self._client_done():
            nearest = self.last_activity + CLOSE_WAIT, ""
        else:
            nearest = self.last_activity + self.idle_timeout, "Connection idle timeout"
        return nearest if self.exchanges is None else self.exchanges.nearest(nearest)

    def _client_done(self) -> bool:
        """The client has ended and is owed nothing: what the backend still says is
        awaited as long as 3.22 awaited a closing peer (a layer with exchanges)."""
        return self.exchanges is not None and not self.client_reading and not self.layer.awaiting

    # -- reading and writing ---------------------------------------------------

    def _read_client(self) -> None:
        try:
            data = self.client.read(READ_SIZE)
        except PeerError:
            if self.tls is None or self.tls.established:
                raise
            data = b""  # a reset during the handshake: the handshake says it (as 3.22's did)
        if data is None:
            return
        self.last_activity = time.monotonic()
        if self.tls is not None:
            # An EOF goes in too: the handshake or read() below reports it.
            self.tls.receive(data)
            return
        if not data:
            self.client_reading = False
            self.log.debug("Socket closed on read (network)")
        self._apply(self.layer.feed_client(data))

    def _read_backend(self) -> None:
        assert self.backend is not None
        data = self.backend.read(READ_SIZE)
        if data is None:
            return
        self.last_activity = time.monotonic()
        if self.exchanges is not None:
            self.exchanges.moved()  # the backend's bytes: the exchange moved on
        if not data:
            self.back_reading = False
            self.log.debug("Socket closed on read (backend)")
        elif self._cr_in is not None:
            data = self._cr_in(data)
        self._apply(self.layer.feed_backend(data))

    def _write(self, endpoint: Endpoint, queue: ByteQueue) -> int:
        sent = endpoint.write_from(queue, BUFFER)
        if sent:
            self.last_activity = time.monotonic()
        return sent

    def _pass(self) -> bool:
        """One turn of the loop; False when the session is over."""
        self._settle()
        if self._finished():
            return False
        if self.exchanges is not None:  # an exchange starts when the layer begins to await
            self.exchanges.track(self.layer.awaiting, time.monotonic())
        wanted = self._poll_set()
        deadline, why = self._deadline()
        wait = deadline - time.monotonic()
        # Rule: a bound that has passed ends the session before any wait, even with
        # bytes ready on every pass (a client that never stops sending).
        if wait <= 0:
            return self._bound_passed(why)
        self._watch(wanted)
        ready = dict(self._poller.poll(wait * 1000)) if wanted or wait else {}
        if not ready:
            if time.monotonic() >= deadline:
                return self._bound_passed(why)
            return True
        self._serve(ready)
        return True

    def _bound_passed(self, why: str) -> bool:
        if not why:
            self.log.debug("Timeout waiting for the peer to close")
            return False
        raise PeerError(why)

    def _watch(self, wanted: dict[int, int]) -> None:
        """Make the poll set `wanted`, touching only what changed since the last pass."""
        if wanted == self._watched:
            return
        for fd in self._watched.keys() - wanted.keys():
            self._poller.unregister(fd)
        for fd, events in wanted.items():
            if self._watched.get(fd) != events:
                self._poller.register(fd, events)
        self._watched = wanted

    def _serve(self, ready: dict[int, int]) -> None:
        """Read what is ready; what became writable is written when the next pass settles."""
        client, back = self.client, self.backend
        readable = select.POLLIN | select.POLLHUP | select.POLLERR
        if self.client_reading and ready.get(client.rfd, 0) & readable:
            self._read_client()
        if back is not None and self.back_reading and ready.get(back.rfd, 0) & readable:
            self._read_backend()

    def run(self) -> bool:
        try:
            return self._run()
        finally:
            self.dialogue.close()

    def _run(self) -> bool:
        self._apply(self.layer.start())
        try:
            while self._pass():
                pass
        except TlsError as error:
            self.log.err(str(error))
            self._send_alert()
            self._reset(client=False)
            return False
        except PeerError as error:
            self.log.err(str(error))
            self._reset()
            return False
        return True

    def _send_alert(self) -> None:
        """After a TLS failure: the alert OpenSSL wrote (and what was queued before
        it) goes out within ALERT_WAIT, then our side of the connection closes."""
        if self.tls is not None:
            self.client_out += self.tls.outgoing()
        poller = select.poll()
        poller.register(self.client.wfd, select.POLLOUT)
        deadline = time.monotonic() + ALERT_WAIT
        try:
            while self.client_out and time.monotonic() < deadline:
                if not self._write(self.client, self.client_out):
                    poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
        except PeerError:
            return  # the peer is gone: nothing more to tell it
        self.client.shut_write()

    def _reset(self, client: bool = True) -> None:
        if client:
            self.client.reset()
        if self.backend is not None:
            self.backend.reset()

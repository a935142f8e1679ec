"""relay.py's bounds (issue #18): an exchange, a session, a client that is gone, the
dialogue's caps. A Relay in a thread between two socketpairs, with a plaintext layer
whose `awaiting` the test sets (protocol.py); the test holds the far ends."""

import contextlib
import os
import socket
import threading
import time

import pytest
from conftest import RecordingLog

from stunnel3 import relay as relay_module
from stunnel3.engine.bounds import Bounds
from stunnel3.engine.endpoints import Endpoint
from stunnel3.layers.protocol import Log, ToBackend, ToClient
from stunnel3.relay import Relay

EXCHANGE = "Command/reply exchange timed out (0.6 s, STUNNEL3_EXCHANGE_TIMEOUT)"
SESSION = "Session time limit reached (0.8 s, STUNNEL3_SESSION_TIMEOUT)"


class Lines(RecordingLog):
    def texts(self) -> list[str]:
        return [text for _, text in self.lines]


class Plain:
    """Every byte straight across, no TLS; a command/reply layer when `awaiting` is set."""

    def __init__(self, dialogue: bool = False):
        self.dialogue = dialogue

    def start(self):
        return []

    def feed_client(self, data):
        said = [Log(7, f"C: {line!r}") for line in data.splitlines()] if self.dialogue else []
        return [*said, ToBackend(data)]

    def feed_backend(self, data):
        return [ToClient(data)]

    def tls_started(self, info):
        return []


class Exchanges(Plain):
    awaiting = False


class Harness:
    def __init__(self, layer, **settings: str):
        self.client, net = socket.socketpair()
        self.backend, back = socket.socketpair()
        for sock in (self.client, self.backend):
            sock.settimeout(10)
        net_fd, back_fd = net.detach(), back.detach()
        self.log = Lines()
        bounds = Bounds({f"STUNNEL3_{name.upper()}": text for name, text in settings.items()})
        self.relay = Relay(
            Endpoint(net_fd, net_fd, "network"),
            Endpoint(back_fd, back_fd, "backend"),
            layer,
            None,
            self.log,
            bounds=bounds,
        )
        self.result: bool | None = None
        self.started = time.monotonic()
        self.ended: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.result = self.relay.run()
        self.ended = time.monotonic()

    def running_after(self, seconds: float, trickle=None) -> bool:
        """Whether the relay still runs `seconds` from now; trickle() every 0.1 s meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.thread.is_alive():
            if trickle is not None:
                trickle()
            time.sleep(0.1)
        return self.thread.is_alive()

    def finish(self) -> bool | None:
        self.thread.join(15)
        assert not self.thread.is_alive()
        for end in (self.relay.client, self.relay.backend):
            end.close()
        self.client.close()
        self.backend.close()
        return self.result

    def took(self) -> float:
        assert self.ended is not None
        return self.ended - self.started


def test_an_exchange_ends_however_slowly_the_client_sends():
    """A byte every 0.1 s keeps the idle timer young; the exchange's bound still holds."""
    layer = Exchanges()
    layer.awaiting = True  # a command has begun
    h = Harness(layer, exchange_timeout="0.6", idle_timeout="5")
    assert not h.running_after(3, lambda: h.client.send(b"N"))
    assert h.finish() is False
    assert EXCHANGE in h.log.texts()
    assert 0.5 < h.took() < 2.5


def test_the_backends_bytes_move_an_exchange_on():
    layer = Exchanges()
    layer.awaiting = True
    h = Harness(layer, exchange_timeout="0.6", idle_timeout="5")
    assert h.running_after(1.5, lambda: h.backend.send(b"2"))  # a reply, a byte at a time
    layer.awaiting = False
    h.client.shutdown(socket.SHUT_WR)
    h.backend.shutdown(socket.SHUT_WR)
    assert h.finish() is True
    assert EXCHANGE not in h.log.texts()


def test_no_exchange_while_the_layer_awaits_nothing():
    h = Harness(Exchanges(), exchange_timeout="0.5", idle_timeout="5")
    assert h.running_after(1.5, lambda: h.client.send(b"m"))  # message data: no exchange
    h.client.shutdown(socket.SHUT_WR)
    h.backend.shutdown(socket.SHUT_WR)
    assert h.finish() is True


def test_the_whole_session_is_bounded():
    h = Harness(Exchanges(), session_timeout="0.8", idle_timeout="5")

    def both_ways():
        h.client.send(b"c")
        h.backend.send(b"b")

    assert not h.running_after(4, both_ways)
    assert h.finish() is False
    assert SESSION in h.log.texts()
    assert 0.7 < h.took() < 2.5


def test_plain_tls_has_neither_bound():
    """No `awaiting`: a tunnel, bounded only by idle time, as under 3.22."""
    h = Harness(Plain(), session_timeout="0.5", exchange_timeout="0.5", idle_timeout="5")
    assert h.running_after(1.5, lambda: h.client.send(b"x"))
    h.client.shutdown(socket.SHUT_WR)
    h.backend.shutdown(socket.SHUT_WR)
    assert h.finish() is True


def test_a_client_that_ended_and_is_owed_nothing_waits_only_the_close_wait(monkeypatch):
    monkeypatch.setattr(relay_module, "CLOSE_WAIT", 0.5)
    h = Harness(Exchanges(), idle_timeout="30")
    h.client.shutdown(socket.SHUT_WR)  # gone; the backend ignores its EOF and says nothing
    assert not h.running_after(5)
    assert h.finish() is True  # a close, not a reset: nothing was owed
    assert h.took() < 3


def test_a_client_that_ended_but_is_owed_a_reply_gets_the_exchange(monkeypatch):
    monkeypatch.setattr(relay_module, "CLOSE_WAIT", 0.2)
    layer = Exchanges()
    layer.awaiting = True  # QUIT, then the client's EOF: its reply is owed
    h = Harness(layer, exchange_timeout="0.6", idle_timeout="30")
    h.client.shutdown(socket.SHUT_WR)
    assert h.running_after(0.4)  # longer than the close wait
    assert h.finish() is False
    assert EXCHANGE in h.log.texts()


@pytest.mark.parametrize(("sent", "logged"), [(50, 50), (51, 50), (500, 50)])
def test_dialogue_lines_are_capped_per_session_and_the_rest_said_once(sent, logged):
    h = Harness(Plain(dialogue=True), dialogue_lines="50", dialogue_rate="100000")
    h.client.sendall(b"".join(b"NOOP %d\n" % n for n in range(sent)))
    h.client.shutdown(socket.SHUT_WR)
    received = b""
    while len(received) < sum(len(b"NOOP %d\n" % n) for n in range(sent)):
        data = h.backend.recv(65536)
        assert data, received  # EOF: fail, never spin
        received += data
    h.backend.shutdown(socket.SHUT_WR)
    h.finish()
    dialogue = [text for level, text in h.log.lines if text.startswith("C: ")]
    assert len(dialogue) == logged
    summaries = [(level, text) for level, text in h.log.lines if text.startswith("Dialogue log")]
    if sent == logged:
        assert summaries == []
    else:
        assert summaries == [
            (
                5,
                f"Dialogue log: {sent - logged} lines left out (STUNNEL3_DIALOGUE_LINES a "
                "session, STUNNEL3_DIALOGUE_RATE a second)",
            )
        ]


def test_a_bound_holds_while_bytes_are_always_ready():
    """A client that never stops sending keeps a descriptor ready on every pass (here
    /dev/zero, relayed to /dev/null): the bound is checked before each wait all the
    same, not only when a wait comes back empty."""
    layer = Exchanges()
    layer.awaiting = True  # the rest of a refused line, say, that never ends
    zero = os.open("/dev/zero", os.O_RDONLY)
    sinks = [os.open("/dev/null", os.O_WRONLY) for _ in range(2)]
    quiet, quiet_w = os.pipe()  # a backend that says nothing
    log = Lines()
    bounds = Bounds({"STUNNEL3_EXCHANGE_TIMEOUT": "0.5", "STUNNEL3_IDLE_TIMEOUT": "30"})
    relay = Relay(
        Endpoint(zero, sinks[0], "network"), Endpoint(quiet, sinks[1], "backend"), layer, None,
        log, bounds=bounds,
    )  # fmt: skip
    done: list[bool] = []
    thread = threading.Thread(target=lambda: done.append(relay.run()), daemon=True)
    began = time.monotonic()
    thread.start()
    thread.join(5)
    try:
        assert not thread.is_alive(), "the bound never held"
        assert done == [False] and time.monotonic() - began < 3
        assert "Command/reply exchange timed out (0.5 s, STUNNEL3_EXCHANGE_TIMEOUT)" in log.texts()
    finally:
        for fd in (zero, *sinks, quiet, quiet_w):
            with contextlib.suppress(OSError):
                os.close(fd)

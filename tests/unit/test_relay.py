"""relay.py in-process: a Relay in a thread between two socketpairs.

The test holds the far ends: a Python ssl client (or our own TlsSession when a
test must put plaintext and a ClientHello in one segment) on the network side,
a plain socket on the backend side.
"""

import socket
import ssl
import threading
import time

import pytest
import trustme

from stunnel3.engine.endpoints import ByteQueue, Endpoint
from stunnel3.layers.protocol import Close, Passthrough, StartTls, ToBackend, ToClient
from stunnel3.options import Options
from stunnel3.relay import BUFFER, READ_SIZE, Relay
from stunnel3.tls import TlsSession, make_context


class Lines:
    level = 7

    def __init__(self):
        self.lines = []

    def log(self, level, text):
        self.lines.append(text)

    err = warning = notice = info = debug = lambda self, text: self.log(0, text)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    pem = tmp_path_factory.mktemp("relay") / "server.pem"
    trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    return make_context(Options(pem=str(pem)), Lines())


class Harness:
    def __init__(self, ctx, layer=None, backend_pipes=False):
        self.net_ours, net_theirs = socket.socketpair()
        if backend_pipes:  # -F on two pipes: EOF is a close, not a shutdown
            to_relay_r, self.to_relay_w = _pipe()
            self.from_relay_r, from_relay_w = _pipe()
            backend = Endpoint(to_relay_r, from_relay_w, "pipes")
        else:
            self.back_ours, back_theirs = socket.socketpair()
            back_fd = back_theirs.detach()
            backend = Endpoint(back_fd, back_fd, "backend")
        fd = net_theirs.detach()
        self.log = Lines()
        self.relay = Relay(
            Endpoint(fd, fd, "network"),
            backend,
            layer or Passthrough(),
            lambda: TlsSession(ctx, server=True),
            self.log,
        )
        self.result = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.result = self.relay.run()

    def tls_client(self):
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
        self.net_ours.settimeout(10)
        return client_ctx.wrap_socket(self.net_ours)

    def finish(self):
        self.thread.join(15)
        assert not self.thread.is_alive()
        self.relay.client.close()
        self.relay.backend.close()
        return self.result


def _pipe():
    import os

    return os.pipe()


class Peer:
    """A TLS client made of our TlsSession and a blocking socket: full control of close."""

    def __init__(self, sock):
        self.sock = sock
        sock.settimeout(10)
        self.tls = TlsSession(make_context(Options(client=True), Lines()), server=False)
        while not self.tls.handshake():
            self.sock.sendall(self.tls.outgoing())
            self.tls.receive(self.sock.recv(65536))
        self.sock.sendall(self.tls.outgoing())

    def send(self, data):
        self.tls.write(data)
        self.sock.sendall(self.tls.outgoing())

    def close_notify(self):
        self.tls.close()
        self.sock.sendall(self.tls.outgoing())

    def read_to_eof(self) -> bytes:
        got = b""
        while True:
            plain = self.tls.read()
            if plain == b"":
                return got
            if plain is None:
                self.tls.receive(self.sock.recv(65536))
            else:
                got += plain


def recv_all(sock) -> bytes:
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def test_both_ways_and_half_close_each_way(ctx):
    h = Harness(ctx)
    client = Peer(h.net_ours)
    h.back_ours.settimeout(10)
    client.send(b"EHLO x\r\n")
    assert h.back_ours.recv(100) == b"EHLO x\r\n"
    # Rule 1: close_notify from the client -> the backend reads EOF ...
    client.send(b"QUIT\r\n")
    client.close_notify()
    assert recv_all(h.back_ours) == b"QUIT\r\n"
    # ... and the backend can still answer; its EOF becomes our close_notify.
    h.back_ours.sendall(b"221 bye\r\n\n\r\r")
    h.back_ours.shutdown(socket.SHUT_WR)
    assert client.read_to_eof() == b"221 bye\r\n\n\r\r"
    assert h.finish() is True
    assert "Negotiated ciphers: " in " ".join(h.log.lines)
    assert h.relay.sock_bytes == 14 and h.relay.ssl_bytes == 12


def test_pipes_backend_gets_eof_by_close(ctx):
    import os

    h = Harness(ctx, backend_pipes=True)
    client = Peer(h.net_ours)
    client.send(b"data\n")
    client.close_notify()
    got = b""
    while chunk := os.read(h.from_relay_r, 100):  # EOF: the relay closed its write pipe
        got += chunk
    assert got == b"data\n"
    os.write(h.to_relay_w, b"reply")
    os.close(h.to_relay_w)
    assert client.read_to_eof() == b"reply"
    assert h.finish() is True
    os.close(h.from_relay_r)


class Greeter:
    """A layer that talks plaintext first, then switches to TLS on GO."""

    def __init__(self):
        self.buffer = b""
        self.tls = False

    def start(self):
        return [ToClient(b"READY\r\n")]

    def feed_client(self, data):
        if self.tls:
            return [ToBackend(data)]
        self.buffer += data
        if b"GO\r\n" not in self.buffer:
            return []
        self.tls = True
        _, _, early = self.buffer.partition(b"GO\r\n")
        return [ToClient(b"OK\r\n"), StartTls(early=early)]

    def feed_backend(self, data):
        return [ToClient(data)]

    def tls_started(self, info):
        return [ToBackend(f"tls {info.version}\n".encode())]


def test_start_tls_mid_stream_with_early_bytes(ctx):
    h = Harness(ctx, layer=Greeter())
    sock = h.net_ours
    sock.settimeout(10)
    assert sock.recv(100) == b"READY\r\n"
    client = TlsSession(make_context(Options(client=True), Lines()), server=False)
    client.handshake()
    sock.sendall(b"GO\r\n" + client.outgoing())  # the ClientHello rides with GO
    reply = b""
    while not reply.startswith(b"OK\r\n"):
        data = sock.recv(65536)
        assert data, reply  # EOF: fail, never spin
        reply += data
    pending = reply[4:]
    while not client.established:
        if pending:
            client.receive(pending)
        client.handshake()
        if out := client.outgoing():
            sock.sendall(out)
        pending = b"" if client.established else sock.recv(65536)
    client.write(b"after\r\n")
    sock.sendall(client.outgoing())
    h.back_ours.settimeout(10)
    got = b""
    while not got.endswith(b"after\r\n"):
        data = h.back_ours.recv(100)
        assert data, got  # EOF: fail, never spin
        got += data
    assert got.startswith(b"tls TLSv1.") and got.endswith(b"\nafter\r\n")
    sock.shutdown(socket.SHUT_WR)
    h.back_ours.close()
    h.finish()


class Answerer:
    """After TLS, answers each client line itself (a local reply) and ends at BYE."""

    def start(self):
        return [StartTls()]

    def feed_client(self, data):
        if data.startswith(b"BYE"):
            return [ToClient(b"bye\r\n"), Close("client said BYE")]
        return [ToClient(b"local " + data)] if data else []

    def feed_backend(self, data):
        return [ToClient(data)]

    def tls_started(self, info):
        return []


def test_a_local_reply_to_decrypted_bytes_leaves_without_more_input(ctx):
    # The relay settles before it waits: what the layer says to bytes TLS just
    # decrypted is encrypted and sent, though no descriptor would wake it for that.
    h = Harness(ctx, layer=Answerer())
    client = h.tls_client()
    for line in (b"one\r\n", b"two\r\n"):
        client.sendall(line)
        assert client.recv(100) == b"local " + line  # the socket times out at 10 s
    client.close()
    h.back_ours.close()
    h.finish()


def test_close_ends_the_session_with_close_notify_and_a_backend_eof(ctx):
    h = Harness(ctx, layer=Answerer())
    client = Peer(h.net_ours)
    client.send(b"BYE\r\n")
    assert client.read_to_eof() == b"bye\r\n"  # b"" from read(): a close_notify came
    h.back_ours.settimeout(10)
    assert recv_all(h.back_ours) == b""  # the backend's input ended too
    assert h.finish() is True


def test_a_failed_handshake_sends_its_alert_before_closing(ctx):
    from OpenSSL import SSL

    h = Harness(ctx)
    old = SSL.Context(SSL.TLS_METHOD)
    old.set_max_proto_version(SSL.TLS1_1_VERSION)
    old.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    client = TlsSession(old, server=False)
    client.handshake()
    h.net_ours.sendall(client.outgoing())
    h.net_ours.settimeout(10)
    # protocol_version (70) in a fatal alert record, then our side closes
    assert recv_all(h.net_ours) == b"\x15\x03\x02\x00\x02\x02\x46"
    assert h.finish() is False
    assert any(line.startswith("SSL_accept: ") for line in h.log.lines)


def test_the_relay_never_waits_with_bytes_a_descriptor_would_take(ctx, monkeypatch):
    """Settling writes what is queued as far as each socket takes it: at every wait, a
    queue that still holds bytes belongs to a descriptor that is full (both ways, in bulk
    and for the handshake's flights)."""
    import select

    from stunnel3 import relay as relay_module

    waits: list[tuple[int, int]] = []  # (bytes queued for a writable client, ... backend)
    real_poll = select.poll

    class Watched:
        def __init__(self):
            self.poller = real_poll()

        def register(self, *args):
            self.poller.register(*args)

        def unregister(self, fd):
            self.poller.unregister(fd)

        def poll(self, timeout):
            relay = h.relay

            def writable(fd):
                return bool(select.select([], [fd], [], 0)[1])

            waits.append((
                len(relay.client_out) if writable(relay.client.wfd) else 0,
                len(relay.back_out) if writable(relay.backend.wfd) else 0,
            ))  # fmt: skip
            return self.poller.poll(timeout)

    monkeypatch.setattr(relay_module.select, "poll", Watched)
    h = Harness(ctx)
    client = Peer(h.net_ours)
    h.back_ours.settimeout(10)
    client.send(b"x" * 300_000)
    got = 0
    while got < 300_000:
        data = h.back_ours.recv(1 << 20)
        assert data, got
        got += len(data)
    h.back_ours.sendall(b"y" * 300_000)
    h.back_ours.shutdown(socket.SHUT_WR)
    assert len(client.read_to_eof()) == 300_000
    client.close_notify()
    assert h.finish() is True
    assert len(waits) > 3 and set(waits) == {(0, 0)}


def test_back_pressure_bounds_the_queues(ctx):
    h = Harness(ctx)
    client = h.tls_client()
    block = bytes(range(256)) * 4096  # 1 MiB
    sender = threading.Thread(target=lambda: [client.sendall(block) for _ in range(8)])
    sender.start()
    sender.join(1.5)  # the backend reads nothing: the client must get stuck
    assert sender.is_alive()
    assert len(h.relay.back_out) <= BUFFER + READ_SIZE
    h.back_ours.settimeout(10)
    got = 0
    while got < 8 * len(block):
        data = h.back_ours.recv(1 << 20)
        assert data, got  # EOF: fail, never spin
        got += len(data)
    sender.join(10)
    client.close()
    h.back_ours.close()
    h.finish()


def test_idle_timeout_resets(ctx, monkeypatch):
    monkeypatch.setenv("STUNNEL3_IDLE_TIMEOUT", "0.3")
    h = Harness(ctx)
    client = h.tls_client()
    assert h.finish() is False
    client.close()
    assert "Connection idle timeout" in h.log.lines


def test_handshake_timeout(ctx, monkeypatch):
    monkeypatch.setenv("STUNNEL3_HANDSHAKE_TIMEOUT", "0.3")
    h = Harness(ctx)  # the client connects and says nothing
    assert h.finish() is False
    assert "SSL handshake timed out" in h.log.lines
    h.net_ours.close()


class Holder:
    """A plaintext layer that holds client bytes and says it is paused above LIMIT."""

    LIMIT = 4096

    def __init__(self):
        self.held = bytearray()

    @property
    def client_paused(self):
        return len(self.held) > self.LIMIT

    def start(self):
        return []

    def feed_client(self, data):
        self.held += data
        return []

    def feed_backend(self, data):
        if not data:
            return [ToClient(b"")]
        released, self.held = bytes(self.held), bytearray()
        return [ToBackend(released)]

    def tls_started(self, info):
        return []


def test_a_paused_layer_is_not_fed(ctx):
    layer = Holder()
    h = Harness(ctx, layer=layer)
    h.net_ours.setblocking(False)
    sent = 0
    try:
        for _ in range(4096):  # up to 16 MiB, far more than the socket buffers hold
            sent += h.net_ours.send(b"x" * 4096)
    except BlockingIOError:
        pass
    # The relay stops reading once the layer pauses: the rest waits in the
    # kernel, and the layer holds one read's worth over its limit at most.
    deadline = time.monotonic() + 10
    while len(layer.held) <= Holder.LIMIT and time.monotonic() < deadline:
        time.sleep(0.01)
    held = len(layer.held)
    time.sleep(0.3)
    assert Holder.LIMIT < held == len(layer.held) <= Holder.LIMIT + READ_SIZE
    assert sent < 4096 * 4096
    h.net_ours.setblocking(True)
    h.back_ours.settimeout(10)
    h.back_ours.sendall(b"go")  # the backend answers: the layer lets go and reads on
    got = 0
    while got < Holder.LIMIT:
        data = h.back_ours.recv(1 << 20)
        assert data, got  # EOF: fail, never spin
        got += len(data)
    h.net_ours.close()
    h.back_ours.close()
    h.finish()


def test_byte_queue_keeps_order_across_partial_writes():
    queue = ByteQueue()
    reused = bytearray(b"cd")
    queue += b"ab"
    queue += reused
    queue += b""
    reused[:] = b"XX"  # a caller's buffer may change after it queued it
    queue += b"efgh"
    assert len(queue) == 8
    assert [bytes(c) for c in queue.front(3)] == [b"ab"]  # at least one chunk, then the limit
    assert [bytes(c) for c in queue.front(4)] == [b"ab", b"cd"]
    queue.consume(3)  # a write that ended inside the second chunk
    assert len(queue) == 5
    assert b"".join(bytes(c) for c in queue.front(100)) == b"defgh"
    queue.consume(5)
    assert not queue and len(queue) == 0


def test_write_from_sends_several_chunks_in_one_call():
    ours, theirs = socket.socketpair()
    fd = theirs.detach()
    end = Endpoint(fd, fd, "pair")
    queue = ByteQueue()
    for n in range(5):
        queue += bytes([n]) * 1000
    assert end.write_from(queue, 3000) == 3000  # chunks up to the limit, one writev
    assert end.write_from(queue, 1 << 20) == 2000
    assert not queue
    ours.settimeout(5)
    got = b""
    while len(got) < 5000:
        data = ours.recv(65536)
        assert data, got  # EOF: fail, never spin
        got += data
    assert got == b"".join(bytes([n]) * 1000 for n in range(5))
    end.close()
    ours.close()

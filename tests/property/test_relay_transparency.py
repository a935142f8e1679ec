"""Random binary data in random chunks crosses the relay unchanged, both ways at once.

The relay runs in-process in a thread between two socketpairs: Python's ssl on
the network side, a plain socket on the backend side. No CR/LF is ever touched.
"""

import contextlib
import select
import socket
import ssl
import threading
import time

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from stunnel3.engine.endpoints import Endpoint
from stunnel3.layers.protocol import Passthrough
from stunnel3.options import Options
from stunnel3.relay import Relay
from stunnel3.tls import TlsSession, make_context


class Quiet:
    level = 0

    def log(self, level, text):
        pass

    err = warning = notice = info = debug = lambda self, text: None


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    pem = tmp_path_factory.mktemp("transparency") / "server.pem"
    trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    return make_context(Options(pem=str(pem)), Quiet())


CLIENT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
CLIENT.check_hostname = False
CLIENT.verify_mode = ssl.CERT_NONE

# Bytes that a CR/LF "fix" would change are made likely on purpose.
chunk = st.one_of(
    st.binary(min_size=1, max_size=3000),
    st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"\x00", b"\xff"]), min_size=1).map(
        b"".join
    ),
    # big chunks (several TLS records, past socket buffers) from a short pattern:
    # drawing 70 kB byte by byte would exhaust hypothesis's entropy budget
    st.tuples(st.binary(min_size=1, max_size=64), st.integers(20000, 70000)).map(
        lambda spec: (spec[0] * (spec[1] // len(spec[0]) + 1))[: spec[1]]
    ),
)
chunks = st.lists(chunk, max_size=8)


def exchange(client, backend, up: bytes, down: bytes) -> tuple[bytes, bytes]:
    """Both directions at once in one thread: non-blocking sends and receives.

    (One SSLSocket must not be used from two threads at once.)
    """
    got_up, got_down = bytearray(), bytearray()
    up_view, down_view = memoryview(up), memoryview(down)
    deadline = time.monotonic() + 30
    while len(got_up) < len(up) or len(got_down) < len(down):
        assert time.monotonic() < deadline, (
            f"stuck: {len(got_up)}/{len(up)} up, {len(got_down)}/{len(down)} down"
        )
        moved = 0
        if up_view:
            with contextlib.suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = client.send(up_view[:16384])
                up_view, moved = up_view[sent:], moved + sent
        if down_view:
            with contextlib.suppress(BlockingIOError):
                sent = backend.send(down_view[:65536])
                down_view, moved = down_view[sent:], moved + sent
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
            data = client.recv(65536)
            assert data, "EOF from the relay"
            got_down += data
            moved += len(data)
        with contextlib.suppress(BlockingIOError):
            data = backend.recv(65536)
            assert data, "EOF from the relay"
            got_up += data
            moved += len(data)
        if not moved:
            select.select([client, backend], [], [], 0.01)
    return bytes(got_up), bytes(got_down)


@settings(max_examples=25, deadline=None)
@given(up=chunks, down=chunks)
def test_bytes_cross_unchanged_both_ways(ctx, up, down):
    net_ours, net_theirs = socket.socketpair()
    back_ours, back_theirs = socket.socketpair()
    net_fd, back_fd = net_theirs.detach(), back_theirs.detach()
    relay = Relay(
        Endpoint(net_fd, net_fd, "network"),
        Endpoint(back_fd, back_fd, "backend"),
        Passthrough(),
        lambda: TlsSession(ctx, server=True),
        Quiet(),
    )
    worker = threading.Thread(target=relay.run, daemon=True)
    worker.start()
    client = CLIENT.wrap_socket(net_ours)  # blocking for the handshake
    client.setblocking(False)
    back_ours.setblocking(False)
    got_up, got_down = exchange(client, back_ours, b"".join(up), b"".join(down))
    assert got_up == b"".join(up)
    assert got_down == b"".join(down)
    back_ours.close()
    client.close()
    worker.join(20)
    assert not worker.is_alive()
    relay.client.close()
    relay.backend.close()

"""Random binary data in random chunks crosses the relay unchanged, both ways at once.

The relay runs in-process in a thread between two socketpairs: Python's ssl on
the network side, a plain socket on the backend side. No CR/LF is ever touched.
"""

import socket
import ssl
import threading

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from stunnel3.endpoints import Endpoint
from stunnel3.options import Options
from stunnel3.protocol import Passthrough
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


def receive_exactly(sock, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        data = sock.recv(65536)
        assert data, f"EOF after {len(got)} of {size} bytes"
        got += data
    return bytes(got)


@settings(max_examples=25, deadline=None)
@given(up=chunks, down=chunks)
def test_bytes_cross_unchanged_both_ways(ctx, up, down):
    net_ours, net_theirs = socket.socketpair()
    back_ours, back_theirs = socket.socketpair()
    net_fd, back_fd = net_theirs.detach(), back_theirs.detach()
    relay = Relay(Endpoint(net_fd, net_fd, "network"), Endpoint(back_fd, back_fd, "backend"),
                  Passthrough(), lambda: TlsSession(ctx, server=True), Quiet())  # fmt: skip
    worker = threading.Thread(target=relay.run, daemon=True)
    worker.start()
    client = CLIENT.wrap_socket(net_ours)
    client.settimeout(20)
    back_ours.settimeout(20)
    # the client writes in its own thread while this one answers from the backend
    writer = threading.Thread(target=lambda: [client.sendall(c) for c in up], daemon=True)
    writer.start()
    for c in down:
        back_ours.sendall(c)
    got_down = receive_exactly(client, sum(map(len, down)))
    got_up = receive_exactly(back_ours, sum(map(len, up)))
    writer.join(20)
    assert got_up == b"".join(up)
    assert got_down == b"".join(down)
    back_ours.close()
    client.close()
    worker.join(20)
    assert not worker.is_alive()
    relay.network.close()
    relay.backend.close()

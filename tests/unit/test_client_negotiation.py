"""client_negotiation.py (-c -n smtp|pop3|nntp) fed whole, byte by byte, with trailing data."""

import pytest

from stunnel3.layers.client_negotiation import client_layer
from stunnel3.layers.protocol import Close, StartTls, ToBackend, ToClient

SMTP_SERVER = [b"220-hi\r\n220 ready\r\n", b"250-x\r\n250 STARTTLS\r\n", b"220 go\r\n"]


def run(protocol: str, server_turns: list[bytes], split: bool, trailing: bytes = b""):
    """Feed the server's turns; once StartTls is out, the rest is TLS's (the relay's rule).

    Returns the layer, its actions, and the bytes that were left for TLS unfed.
    """
    layer = client_layer(protocol)
    actions = layer.start()
    stream = b"".join(server_turns) + trailing
    step = 1 if split else len(stream)
    for at in range(0, len(stream), step):
        actions += layer.feed_client(stream[at : at + step])
        if any(isinstance(a, StartTls) for a in actions):
            return layer, actions, stream[at + step :]
    return layer, actions, b""


@pytest.mark.parametrize("split", [False, True])
def test_smtp_greeting_ehlo_starttls_then_tls(split):
    layer, actions, unfed = run("smtp", SMTP_SERVER, split, trailing=b"\x16\x03\x01")
    sent = b"".join(a.data for a in actions if isinstance(a, ToClient))
    assert sent == b"EHLO localhost\r\nSTARTTLS\r\n"
    to_local = b"".join(a.data for a in actions if isinstance(a, ToBackend))
    assert to_local == b"220-hi\r\n220 ready\r\n"  # only the greeting reaches the local client
    starts = [a for a in actions if isinstance(a, StartTls)]
    assert len(starts) == 1 and starts[0].early + unfed == b"\x16\x03\x01"
    assert layer.feed_client(b"after") == [ToBackend(b"after")]


def test_local_bytes_wait_for_tls():
    layer = client_layer("smtp")
    layer.start()
    assert layer.feed_backend(b"EHLO me\r\n") == []  # never in plaintext
    assert layer.feed_backend(b"") == []
    for turn in SMTP_SERVER:
        layer.feed_client(turn)
    assert layer.tls_started(None) == [ToClient(b"EHLO me\r\n"), ToClient(b"")]


@pytest.mark.parametrize(
    "protocol, turns",
    [
        ("smtp", [b"554 go away\r\n"]),
        ("smtp", [b"220 hi\r\n", b"250 x\r\n", b"454 no\r\n"]),
        ("pop3", [b"+OK hi\r\n", b"-ERR no\r\n"]),
        ("nntp", [b"400 busy\r\n"]),
    ],
)
def test_refusals_close_with_3_22s_words(protocol, turns):
    layer, actions, _ = run(protocol, turns, split=False)
    assert any(isinstance(a, Close) for a in actions)
    assert not any(isinstance(a, StartTls) for a in actions)


@pytest.mark.parametrize(
    "protocol, turns, command",
    [
        ("pop3", [b"+OK hi\r\n", b"+OK begin\r\n"], b"STLS\r\n"),
        ("nntp", [b"201 hi\r\n", b"382 go\r\n"], b"STARTTLS\r\n"),
    ],
)
def test_pop3_and_nntp(protocol, turns, command):
    layer, actions, _ = run(protocol, turns, split=True)
    assert [a.data for a in actions if isinstance(a, ToClient)] == [command]
    assert actions[-1] == StartTls(early=b"")


def test_eof_and_overlong_lines_fail():
    layer = client_layer("smtp")
    assert any(isinstance(a, Close) for a in layer.feed_client(b""))
    layer = client_layer("smtp")
    assert any(isinstance(a, Close) for a in layer.feed_client(b"2" * 9000))

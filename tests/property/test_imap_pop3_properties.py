"""Properties of ImapProxy and Pop3Proxy that no list of examples can show (STYLE item 8).

- split invariance: a dialogue fed in any chunks gives the same bytes per side and
  the same StartTls/Close/Log actions as fed whole;
- CVE-2011-0411: after an accepted STARTTLS/STLS, no byte the client sent behind
  it reaches the backend before the handshake; with bytes behind it, the session
  ends and none of them ever does.
"""

from itertools import pairwise

from dialogues import replay
from hypothesis import given, settings
from hypothesis import strategies as st

from stunnel3.layers.imap import ImapProxy
from stunnel3.layers.pop3 import Pop3Proxy
from stunnel3.layers.protocol import Close, StartTls, ToBackend

# (side, bytes): "C" client, "B" backend, "T" the handshake is done.
IMAP_DIALOGUE = [
    ("B", b"* OK [CAPABILITY IMAP4rev1 STARTTLS COMPRESS=DEFLATE] ready\r\n"),
    ("C", b"a0 CAPABILITY\r\na1 APPEND INBOX {13}\r\n"),
    ("B", b"* CAPABILITY IMAP4rev1 LITERAL+\r\na0 OK done\r\n+ go\r\n"),
    ("C", b"a2 STARTTLS\r\n {3+}\r\nabc\r\na3 NOOP\r\na4 FETCH 1 BODY[]\r\n"),
    ("B", b"a1 OK appended\r\na3 OK\r\n* 1 FETCH (BODY[] {16}\r\na4 OK\r\n* BYE x\r\n)\r\n"),
    ("C", b"a5 STARTTLS now\r\na6 COMPRESS DEFLATE\r\n"),
    ("B", b"a4 OK fetched\r\n"),
    ("C", b"a7 STARTTLS\r\n"),
    ("T", b""),
    ("C", b"a8 CAPABILITY\r\na9 AUTHENTICATE PLAIN\r\n"),
    ("B", b"* CAPABILITY IMAP4rev1 STARTTLS\r\na8 OK\r\n+ \r\n"),
    ("C", b"AGFsaWNlAHNlY3JldA==\r\nb1 IDLE\r\n"),
    ("B", b"b0 junk\r\na9 OK [CAPABILITY IMAP4rev1] in\r\n+ idling\r\n"),
    ("C", b"DONE\r\nb2 STARTTLS\r\nb3 LOGOUT\r\n"),
    ("B", b"* 2 EXISTS\r\nb1 OK\r\n* BYE\r\nb3 OK bye\r\n"),
    ("C", b""),
    ("B", b""),
]
POP3_DIALOGUE = [
    ("B", b"+OK ready <1@x>\r\n"),
    ("C", b"CAPA\r\nLIST\r\nSTLS x\r\n"),
    ("B", b"+OK\r\nTOP\r\nSTLS\r\nSASL PLAIN\r\nX-ODD\r\n.\r\n+OK 1 msg\r\n1 20\r\n.\r\n"),
    ("C", b"RETR 1\r\nSTLS\r\n"),
    ("B", b"+OK 20 octets\r\n+OK fake\r\n..\r\n.\r\n"),
    ("T", b""),
    ("C", b"CAPA\r\nAUTH PLAIN\r\n"),
    ("B", b"+OK\r\nUSER\r\nSTLS\r\n.\r\n+ \r\n"),
    ("C", b"AGFsaWNlAHNlY3JldA==\r\nSTLS\r\nTOP 1 0\r\nQUIT\r\n"),
    ("B", b"+OK in\r\n+OK\r\nSubject: x\r\n.\r\n+OK bye\r\n"),
    ("C", b""),
    ("B", b""),
]


def cut_lists(dialogue):
    return st.lists(
        st.lists(st.integers(min_value=0, max_value=200), max_size=6),
        min_size=len(dialogue),
        max_size=len(dialogue),
    )


@settings(max_examples=200)
@given(cut_lists(IMAP_DIALOGUE))
def test_imap_split_invariance(cuts):
    whole = replay(ImapProxy(log_dialogue=True), IMAP_DIALOGUE, [[]] * len(IMAP_DIALOGUE))
    assert whole[0][1:] and b"a7 OK Begin TLS" in whole[0][0]  # the dialogue reaches TLS
    assert replay(ImapProxy(log_dialogue=True), IMAP_DIALOGUE, cuts) == whole


@settings(max_examples=200)
@given(cut_lists(POP3_DIALOGUE))
def test_pop3_split_invariance(cuts):
    whole = replay(Pop3Proxy(log_dialogue=True), POP3_DIALOGUE, [[]] * len(POP3_DIALOGUE))
    assert whole[0][1:] and b"+OK Begin TLS" in whole[0][0]
    assert replay(Pop3Proxy(log_dialogue=True), POP3_DIALOGUE, cuts) == whole


TRAILERS = st.binary(max_size=40).filter(bool)
SPLITS = st.lists(st.integers(min_value=0, max_value=80), max_size=4)


def feed_split(proxy, data: bytes, cuts) -> list:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    actions = []
    for start, end in pairwise(points):
        actions += proxy.feed_client(data[start:end])
    return actions


def check_no_injection(proxy, command: bytes, trailer: bytes, cuts) -> None:
    """Whatever follows the STARTTLS line, in whatever chunks: either TLS starts and
    no trailer byte has crossed before it, or the session ends with none crossed."""
    actions = feed_split(proxy, command + trailer, cuts)
    backend = b"".join(a.data for a in actions if isinstance(a, ToBackend))
    started = any(isinstance(a, StartTls) for a in actions)
    closed = any(isinstance(a, Close) for a in actions)
    assert backend == b""
    assert started != closed
    if started:  # the trailer came in a later chunk: it is TLS bytes, after the handshake
        assert proxy.feed_client(b"more") == []


@settings(max_examples=200)
@given(TRAILERS, SPLITS)
def test_imap_nothing_after_starttls_is_forwarded(trailer, cuts):
    proxy = ImapProxy()
    proxy.feed_backend(b"* OK ready\r\n")
    check_no_injection(proxy, b"a1 STARTTLS\r\n", trailer, cuts)


@settings(max_examples=200)
@given(TRAILERS, SPLITS)
def test_pop3_nothing_after_stls_is_forwarded(trailer, cuts):
    proxy = Pop3Proxy()
    proxy.feed_backend(b"+OK ready\r\n")
    check_no_injection(proxy, b"STLS\r\n", trailer, cuts)

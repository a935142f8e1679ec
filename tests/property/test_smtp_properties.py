"""Properties of SmtpProxy that no list of examples can show (STYLE item 8).

- split invariance: a dialogue fed in any chunks gives the same bytes per side and
  the same StartTls/Close/Log actions as fed whole;
- CVE-2011-0411: no byte that followed an accepted STARTTLS in the client's stream
  before the handshake ever reaches the backend;
- smuggling: a random message body (STARTTLS, EHLO, dots, bare LFs, CRs), dot-stuffed
  as an RFC 5321 client does, reaches the backend so that after fixcrio's
  transformation it ends exactly once, where the client ended it.
"""

from dialogues import TLS, replay
from hypothesis import given, settings
from hypothesis import strategies as st

from stunnel3.layers.protocol import Log, StartTls, ToBackend
from stunnel3.smtp import SmtpProxy

# (side, bytes): "C" client, "B" backend, "T" the handshake is done.
DIALOGUE = [
    ("B", b"220-vm ESMTP\r\n220 ready\r\n"),
    ("C", b"ehlo x\r\n"),
    ("B", b"250-vm\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-STARTTLS\r\n250 HELP\r\n"),
    ("C", b"MAIL FROM:<a@x>\r\nSTARTTLS\r\nRSET\r\n"),
    ("B", b"250 OK\r\n250 OK\r\n"),
    ("C", b"STARTTLS now\r\nSTARTTLS\r\n"),
    ("B", b"250 reset\r\n"),
    ("T", b""),
    ("C", b"MAIL FROM:<a@x>\r\nEHLO x\r\nAUTH PLAIN c2VjcmV0\r\n"),
    ("B", b"250-vm\r\n250 PIPELINING\r\n535 no\r\n"),
    ("C", b"AUTH LOGIN\r\n"),
    ("B", b"334 VXNlcm5hbWU6\r\n"),
    ("C", b"YWxpY2U=\r\n"),
    ("B", b"235 ok\r\n"),
    ("C", b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n"),
    ("B", b"250 OK\r\n250 OK\r\n354 go\r\n"),
    ("C", b"Subject: x\r\n\r\n.\nEHLO y\r\nSTARTTLS\r\na\n.\r\n\r\n..\r\n.\r\nNOOP "),
    ("C", b"x" * 20000 + b"\r\nBDAT 5 LAST\r\n12345QUIT\r\n"),
    ("B", b"250 queued\r\n"),
    ("B", b"221 bye\r\n"),
    ("C", b""),
    ("B", b""),
]


def play(dialogue, cuts):
    return replay(SmtpProxy(log_dialogue=True, clock=lambda: 0), dialogue, cuts)


@settings(max_examples=60)
@given(st.lists(st.lists(st.integers(0, 30000), max_size=6), min_size=len(DIALOGUE)))
def test_split_invariance(cuts):
    whole = play(DIALOGUE, [[] for _ in DIALOGUE])
    assert play(DIALOGUE, cuts) == whole


def test_the_dialogue_means_what_it_says():
    client, backend, control = play(DIALOGUE, [[] for _ in DIALOGUE])
    assert len(client) == 2 and client[0].endswith(b"220 2.0.0 Ready to start TLS\r\n")
    assert b"503 5.5.1 STARTTLS not allowed during a mail transaction" in client[0]
    assert b"501 5.5.4" in client[0] and b"CHUNKING" not in client[0]
    assert b"500 5.5.2 Line too long" in client[1] and b"502 5.5.1 BDAT" in client[1]
    assert b"\r\n..\nEHLO y\r\nSTARTTLS\r\na\n..\r\n\r\n..\r\n.\r\nQUIT\r\n<EOF>" in backend
    assert not any(b"c2VjcmV0" in a.text.encode() for a in control if isinstance(a, Log))


# -- CVE-2011-0411 ----------------------------------------------------------------------

COMMANDS = [
    b"EHLO x",
    b"HELO x",
    b"MAIL FROM:<a@x>",
    b"RSET",
    b"NOOP",
    b"STARTTLS",
    b"starttls",
    b"STARTTLS x",
    b"RCPT TO:<b@x>",
    b"QUIT",
]


def fake_backend(line: bytes) -> bytes:
    verb = line.split(b" ")[0].upper().strip()
    return {b"DATA": b"354 go\r\n", b"QUIT": b"221 bye\r\n"}.get(verb, b"250 ok\r\n")


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.lists(st.sampled_from(COMMANDS), min_size=1, max_size=4), st.booleans()),
        min_size=1,
        max_size=8,
    )
)
def test_no_byte_after_starttls_reaches_the_backend_before_the_handshake(writes):
    proxy = SmtpProxy()
    to_backend = b""

    def run(actions):
        nonlocal to_backend
        started = False
        for action in actions:
            if isinstance(action, ToBackend):
                to_backend += action.data
                replies = b"".join(fake_backend(x) for x in action.data.splitlines() if x)
                if replies and action.data != b"RSET\r\n":
                    run(proxy.feed_backend(replies))
                elif action.data == b"RSET\r\n":
                    run(proxy.feed_backend(b"250 reset\r\n"))
            started = started or isinstance(action, StartTls)
        return started

    run(proxy.feed_backend(b"220 vm\r\n"))
    for number, (commands, inject) in enumerate(writes):
        data = b"".join(c + b"\r\n" for c in commands)
        marker = b"MAIL FROM:<INJECTED-%d>\r\n" % number
        if run(proxy.feed_client(data + marker if inject else data)):
            run(proxy.tls_started(TLS))
            assert marker not in to_backend  # accepted STARTTLS: what followed never runs
        if inject and b"INJECTED-%d" % number in to_backend:
            # it went on only as a plaintext command after a refused STARTTLS (or none)
            assert proxy.state.value != "handshake"


# -- smuggling -------------------------------------------------------------------------

FRAGMENTS = [
    b"STARTTLS",
    b"EHLO x",
    b"MAIL FROM:<e@x>",
    b"DATA",
    b".",
    b"..",
    b"\n",
    b"\r\n",
    b"\r",
    b"a",
    b" ",
    b"QUIT",
]


def fixcrio(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def rfc_stuff(body: bytes) -> bytes:
    """What an RFC 5321 client sends: a "." added to each CRLF line starting with "."."""
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


@settings(max_examples=300)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40), st.lists(st.integers(0, 400)))
def test_a_body_ends_once_after_fixcrio(fragments, cuts):
    body = b"".join(fragments)
    body += b"" if body.endswith(b"\r\n") or not body else b"\r\n"
    sent = rfc_stuff(body) + b".\r\nQUIT\r\n"
    proxy = SmtpProxy()
    proxy.feed_backend(b"220 vm\r\n")
    proxy.feed_client(b"DATA\r\n")
    proxy.feed_backend(b"354 go\r\n")
    points = sorted({c % len(sent) for c in cuts} | {0, len(sent)})
    backend = b"".join(
        a.data
        for start, end in zip(points, points[1:], strict=False)
        for a in proxy.feed_client(sent[start:end])
        if isinstance(a, ToBackend)
    )
    seen = b"\r\n" + fixcrio(backend)  # the data starts a line
    first_end = seen.find(b"\r\n.\r\n")
    assert seen[first_end + 5 :] == b"QUIT\r\n"  # one end, the client's, then commands

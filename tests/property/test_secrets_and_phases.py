"""Two rules over all inputs: no secret reaches the log, and the backend decides the phase.

Both for a client that may log in before TLS (STUNNEL3_AUTH=plaintext, 3.22's rule):
there every credential reaches the backend and only the log must hide it. Under
the default policy no credential crosses before TLS at all:
test_credentials_before_tls.py.

- For random AUTH-like lines (any case, runs of SP and TAB anywhere a blank may be,
  initial responses raw or base64, pipelined or not, before or after TLS) and SASL
  exchanges of any length, no 4 bytes in a row of a secret, raw or base64, reach the
  debug log; and the log is the same whatever the secrets were. The same for IMAP
  (LOGIN, AUTHENTICATE and its `+` lines) and POP3 (USER, PASS, APOP, AUTH).
- For random verbs with blank variants, what the proxy makes of the client's next
  line is what the backend's reply to the command says: after 354 message data,
  after 334 a SASL line, after anything else a command.
"""

import base64

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from secret_slots import BLANKS, MAYBE_BLANKS, cases, play, secret_slot

from stunnel3.layers.imap import ImapProxy
from stunnel3.layers.pop3 import Pop3Proxy
from stunnel3.layers.protocol import Log, StartTls, TlsInfo, ToBackend
from stunnel3.smtp import SmtpProxy, State

TLS = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)


def log_of(proxy, dialogue, secrets) -> bytes:
    """Play (side, parts) steps ("C" client, "B" backend, "T" TLS done); the log's bytes."""
    return play(proxy, dialogue, secrets)[2]


def assert_no_secret_in_the_log(make_proxy, dialogue, secrets):
    log = log_of(make_proxy(), dialogue, secrets)
    public = log_of(make_proxy(), dialogue, [b"#" * len(s) for s in secrets])
    assert log == public  # the log does not depend on the secrets at all
    for secret in secrets:
        for form in (secret, base64.b64encode(secret)):
            for start in range(len(form) - 3):
                gram = form[start : start + 4]
                assert gram not in log or gram in public, (gram, log)


# -- SMTP -----------------------------------------------------------------------------

SMTP_START = [("B", [b"220 vm ESMTP\r\n"]), ("C", [b"EHLO x\r\n"])]
SMTP_EHLO = ("B", [b"250-vm\r\n250 AUTH PLAIN LOGIN CRAM-MD5\r\n"])
SMTP_TLS = [("C", [b"STARTTLS\r\n"]), ("B", [b"250 reset\r\n"]), ("T", []), ("C", [b"EHLO x\r\n"])]
MECHANISMS = cases(b"PLAIN", b"LOGIN", b"CRAM-MD5", b"XOAUTH2", b"X-UNKNOWN")
SMTP_ENDS = st.sampled_from([b"235 2.7.0 ok\r\n", b"535 5.7.8 no\r\n", b"501 5.5.2 cancelled\r\n"])


@st.composite
def smtp_auth(draw, secrets):
    """(client writes, backend replies) of one AUTH exchange: the command, then one
    SASL line per 334."""
    line = [draw(MAYBE_BLANKS), draw(cases(b"AUTH")), draw(BLANKS), draw(MECHANISMS)]
    if draw(st.booleans()):
        line += [draw(BLANKS), draw(secret_slot(secrets))]
    writes = [[*line, draw(MAYBE_BLANKS), b"\r\n"]]
    replies = []
    for _ in range(draw(st.integers(0, 3))):
        replies.append([b"334 ", base64.b64encode(draw(st.binary(max_size=12))), b"\r\n"])
        writes.append([draw(secret_slot(secrets)), b"\r\n"])
    return writes, [*replies, [draw(SMTP_ENDS)]]


@settings(max_examples=300)
@given(st.data())
def test_smtp_never_logs_an_auth_argument_or_a_sasl_line(data):
    secrets: list[bytes] = []
    dialogue = [*SMTP_START, SMTP_EHLO]
    if data.draw(st.booleans()):
        dialogue += [*SMTP_TLS, SMTP_EHLO]
    for _ in range(data.draw(st.integers(1, 3))):
        writes, replies = data.draw(smtp_auth(secrets))
        if data.draw(st.booleans()):  # pipelined: every line before any reply
            dialogue += [("C", sum(writes, [])), *(("B", r) for r in replies)]
        else:
            dialogue += [
                step
                for pair in zip(writes, replies, strict=True)
                for step in (("C", pair[0]), ("B", pair[1]))
            ]
    dialogue.append(("C", [b"QUIT\r\n"]))
    assert_no_secret_in_the_log(
        lambda: SmtpProxy(log_dialogue=True, plaintext_auth=True), dialogue, secrets
    )


VERBS = cases(b"DATA", b"AUTH", b"MAIL", b"RCPT", b"NOOP", b"VRFY", b"XYZZY") | st.just(b"")
ARGUMENTS = st.sampled_from([b"", b"x", b"PLAIN", b"FROM:<a@x>"])
REPLIES = st.sampled_from([b"354 go", b"334 VXNlcm5hbWU6", b"250 ok", b"235 ok", b"500 what"])


@settings(max_examples=300)
@given(st.booleans(), MAYBE_BLANKS, VERBS, BLANKS, ARGUMENTS, MAYBE_BLANKS, REPLIES)
def test_smtp_phase_after_a_reply_is_what_the_reply_says(
    tls, lead, verb, gap, argument, tail, reply
):
    proxy = SmtpProxy(log_dialogue=True, plaintext_auth=True)
    proxy.feed_backend(b"220 vm ESMTP\r\n")
    proxy.feed_client(b"EHLO x\r\n")
    proxy.feed_backend(b"250 vm\r\n")
    if tls:
        assert StartTls() in proxy.feed_client(b"STARTTLS\r\n")
        proxy.feed_backend(b"250 reset\r\n")
        proxy.tls_started(TLS)
        proxy.feed_client(b"EHLO x\r\n")
        proxy.feed_backend(b"250 vm\r\n")
    line = lead + verb + (gap + argument if argument else b"") + tail + b"\r\n"
    forwarded = b"".join(a.data for a in proxy.feed_client(line) if isinstance(a, ToBackend))
    assume(forwarded == line)  # the proxy does not answer this line itself
    proxy.feed_backend(reply + b"\r\n")
    actions = proxy.feed_client(b"NOOP\r\n")
    sent = b"".join(a.data for a in actions if isinstance(a, ToBackend))
    logged = [a.text for a in actions if isinstance(a, Log)]
    assert sent.endswith(b"NOOP\r\n")  # whatever it is, the backend gets it
    assert (proxy.state is State.DATA) == reply.startswith(b"354")
    if reply.startswith(b"354"):
        assert logged == []  # message data: never logged
    elif reply.startswith(b"334"):
        assert logged == ["C: ***"]  # a SASL line
    else:
        assert logged == ["C: NOOP"]  # a command


# -- IMAP and POP3 ----------------------------------------------------------------------


@st.composite
def imap_logins(draw, secrets):
    steps = [("B", [b"* OK ready\r\n"])]
    for number in range(draw(st.integers(1, 3))):
        tag = b"a%d" % number
        if draw(st.booleans()):
            user, password = draw(secret_slot(secrets)), draw(secret_slot(secrets))
            gaps = [draw(BLANKS) for _ in range(3)]
            line = [tag, gaps[0], draw(cases(b"LOGIN")), gaps[1], user, gaps[2], password]
            steps += [("C", [*line, b"\r\n"]), ("B", [tag, b" NO [AUTHENTICATIONFAILED] no\r\n"])]
            continue
        line = [tag, draw(BLANKS), draw(cases(b"AUTHENTICATE")), draw(BLANKS), draw(MECHANISMS)]
        if draw(st.booleans()):
            line += [draw(BLANKS), draw(secret_slot(secrets))]
        steps.append(("C", [*line, b"\r\n"]))
        for _ in range(draw(st.integers(0, 2))):
            steps += [("B", [b"+ \r\n"]), ("C", [draw(secret_slot(secrets)), b"\r\n"])]
        steps.append(("B", [tag, b" NO no\r\n"]))
    return [*steps, ("C", [b"z LOGOUT\r\n"])]


@st.composite
def pop3_logins(draw, secrets):
    steps = [("B", [b"+OK ready\r\n"])]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["USER/PASS", "APOP", "AUTH"]))
        if kind == "USER/PASS":
            for verb in (b"USER", b"PASS"):
                line = [draw(cases(verb)), draw(BLANKS), draw(secret_slot(secrets))]
                steps += [("C", [*line, draw(MAYBE_BLANKS), b"\r\n"]), ("B", [b"-ERR no\r\n"])]
        elif kind == "APOP":
            line = [draw(cases(b"APOP")), draw(BLANKS), draw(secret_slot(secrets)), draw(BLANKS)]
            steps += [("C", [*line, b"0123456789abcdef\r\n"]), ("B", [b"-ERR no\r\n"])]
        else:
            line = [draw(cases(b"AUTH")), draw(BLANKS), draw(MECHANISMS)]
            if draw(st.booleans()):
                line += [draw(BLANKS), draw(secret_slot(secrets))]
            steps.append(("C", [*line, b"\r\n"]))
            for _ in range(draw(st.integers(0, 2))):
                steps += [("B", [b"+ \r\n"]), ("C", [draw(secret_slot(secrets)), b"\r\n"])]
            steps.append(("B", [b"-ERR no\r\n"]))
    return [*steps, ("C", [b"QUIT\r\n"])]


@settings(max_examples=200)
@given(st.data())
def test_imap_never_logs_a_login_or_sasl_secret(data):
    secrets: list[bytes] = []
    dialogue = data.draw(imap_logins(secrets))
    assert_no_secret_in_the_log(
        lambda: ImapProxy(log_dialogue=True, plaintext_auth=True), dialogue, secrets
    )


@settings(max_examples=200)
@given(st.data())
def test_pop3_never_logs_a_login_or_sasl_secret(data):
    secrets: list[bytes] = []
    dialogue = data.draw(pop3_logins(secrets))
    assert_no_secret_in_the_log(
        lambda: Pop3Proxy(log_dialogue=True, plaintext_auth=True), dialogue, secrets
    )

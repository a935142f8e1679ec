"""No credential reaches the backend before TLS under the default policy (issue #15).

For random logins before TLS in every form a client may send them (any case, any
blanks, initial responses raw or base64, IMAP literals, SASL lines pipelined
without waiting for a challenge, and SASL exchanges the backend starts for a
command the proxy does not know), with or without a TLS session after them: what
the backend receives before the handshake, and the whole debug log, are the same
whatever the secrets were (a run with every secret replaced by #s gives the same
bytes), and no four bytes in a row of a secret, raw or base64, are among them.
After TLS a login does reach the backend: the rule is "not before TLS".

SASL lines sent without waiting are base64, as RFC 4954, RFC 9051 and RFC 5034
have them: a raw one may read as a command (`NOOP x`), and a command is what it is.
"""

import base64

from hypothesis import given, settings
from hypothesis import strategies as st
from secret_slots import BLANKS, MAYBE_BLANKS, Secret, Size, cases, play, secret_slot

from stunnel3.layers.imap import ImapProxy
from stunnel3.layers.pop3 import Pop3Proxy
from stunnel3.smtp import SmtpProxy

MECHANISMS = cases(b"PLAIN", b"LOGIN", b"CRAM-MD5", b"X-UNKNOWN")


def assert_no_credential_before_tls(make_proxy, dialogue, secrets, login_after_tls):
    before, after, log = play(make_proxy(), dialogue, secrets)
    public = [b"#" * len(secret) for secret in secrets]
    public_before, _, public_log = play(make_proxy(), dialogue, public)
    assert before == public_before  # the backend's bytes do not depend on the secrets
    assert log == public_log
    for secret in secrets:
        for form in (secret, base64.b64encode(secret)):
            for start in range(len(form) - 3):
                gram = form[start : start + 4]
                assert gram not in before or gram in public_before, (gram, before)
    if login_after_tls is not None:
        assert after.endswith(login_after_tls)  # after TLS the login goes through


def sasl_lines(draw, secrets) -> list:
    """0-3 base64 SASL lines, as a client that does not wait for challenges sends them."""
    lines: list = []
    for _ in range(draw(st.integers(0, 3))):
        lines += [draw(secret_slot(secrets, encoded=True)), b"\r\n"]
    return lines


def challenged(draw, secrets, command: list, challenge: bytes, final: list) -> list:
    """A command the proxy does not know, each backend challenge answered with a secret,
    in base64 as SASL has it: behind a refused SASL command the proxy refuses the command
    too (it may be a SASL line) and the backend's challenge comes unasked, so the answer
    is a line outside any exchange, where a raw one may read as a command (`STARTTLS`)."""
    steps = [("C", command)]
    for _ in range(draw(st.integers(1, 3))):
        steps += [("B", [challenge]), ("C", [draw(secret_slot(secrets, encoded=True)), b"\r\n"])]
    return [*steps, ("B", final)]


# -- SMTP -------------------------------------------------------------------------------

SMTP_EHLO = ("B", [b"250-vm\r\n250 AUTH PLAIN LOGIN\r\n"])
SMTP_LOGIN = b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"


@st.composite
def smtp_logins(draw, secrets):
    steps: list = [("B", [b"220 vm\r\n"]), ("C", [b"EHLO x\r\n"]), SMTP_EHLO]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["auth", "pipelined", "challenged"]))
        auth = [draw(MAYBE_BLANKS), draw(cases(b"AUTH")), draw(BLANKS), draw(MECHANISMS)]
        if kind == "auth":
            if draw(st.booleans()):
                auth += [draw(BLANKS), draw(secret_slot(secrets))]
            steps.append(("C", [*auth, draw(MAYBE_BLANKS), b"\r\n"]))
        elif kind == "pipelined":
            line = [*auth, b"\r\n", *sasl_lines(draw, secrets), b"NOOP\r\n"]
            steps += [("C", line), ("B", [b"250 ok\r\n"])]
        else:
            command = [b"XAUTH ", draw(MECHANISMS), b"\r\n"]
            final = [b"501 5.7.0 cancelled\r\n"]
            steps += challenged(draw, secrets, command, b"334 VXNlcm5hbWU6\r\n", final)
    return steps


@settings(max_examples=300)
@given(st.data())
def test_smtp_no_credential_reaches_the_backend_before_tls(data):
    secrets: list[bytes] = []
    dialogue = data.draw(smtp_logins(secrets))
    tls = data.draw(st.booleans())
    if tls:
        dialogue += [("C", [b"STARTTLS\r\n"]), ("B", [b"250 reset\r\n"]), ("T", [])]
        dialogue += [("C", [b"EHLO x\r\n"]), SMTP_EHLO, ("C", [SMTP_LOGIN])]
    login = SMTP_LOGIN if tls else None
    assert_no_credential_before_tls(lambda: SmtpProxy(log_dialogue=True), dialogue, secrets, login)


def test_a_raw_answer_to_a_challenge_the_backend_started_is_cancelled_whatever_it_reads():
    """In an exchange the backend started (334 to a command the proxy forwarded) the
    client's next line is SASL's, even when it reads as a command."""
    dialogue = [("B", [b"220 vm\r\n"]), ("C", [b"EHLO x\r\n"]), SMTP_EHLO,
                ("C", [b"XAUTH CRAM-MD5\r\n"]), ("B", [b"334 VXNlcm5hbWU6\r\n"]),
                ("C", [Secret(0, encoded=False), b"\r\n"]),
                ("B", [b"501 5.7.0 cancelled\r\n"])]  # fmt: skip
    for secret in (b"STARTTLS", b"NOOP x", b"QUIT", b"AUTH PLAIN AGFsaWNl", b"RSET  "):
        before, _, _ = play(SmtpProxy(log_dialogue=True), dialogue, [secret])
        assert before == b"EHLO x\r\nXAUTH CRAM-MD5\r\n*\r\n", secret
        assert_no_credential_before_tls(
            lambda: SmtpProxy(log_dialogue=True), dialogue, [secret], None
        )


# -- IMAP -------------------------------------------------------------------------------

IMAP_LOGIN = b"z2 LOGIN alice secret\r\n"


@st.composite
def imap_logins(draw, secrets):
    steps: list = [("B", [b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n"])]
    for number in range(draw(st.integers(1, 3))):
        tag = b"a%d" % number
        kind = draw(st.sampled_from(["login", "literals", "authenticate", "pipelined", "+"]))
        if kind == "login":
            user, password = draw(secret_slot(secrets)), draw(secret_slot(secrets))
            line = [tag, draw(BLANKS), draw(cases(b"LOGIN")), draw(BLANKS), user]
            steps.append(("C", [*line, draw(BLANKS), password, b"\r\n"]))
        elif kind == "literals":  # non-synchronising: they follow without a wait
            user = draw(secret_slot(secrets, encoded=False))
            password = draw(secret_slot(secrets, encoded=False))
            line = [tag, b" ", draw(cases(b"LOGIN")), b" {", Size(user), b"+}\r\n", user]
            steps.append(("C", [*line, b" {", Size(password), b"+}\r\n", password, b"\r\n"]))
        elif kind == "authenticate":
            line = [tag, draw(BLANKS), draw(cases(b"AUTHENTICATE")), draw(BLANKS)]
            line += [draw(MECHANISMS), draw(BLANKS), draw(secret_slot(secrets))]
            steps.append(("C", [*line, b"\r\n"]))
        elif kind == "pipelined":
            line = [tag, b" ", draw(cases(b"AUTHENTICATE")), b" ", draw(MECHANISMS), b"\r\n"]
            line += [*sasl_lines(draw, secrets), tag, b"n NOOP\r\n"]
            steps += [("C", line), ("B", [tag, b"n OK done\r\n"])]
        else:
            command = [tag, b" XAUTH ", draw(MECHANISMS), b"\r\n"]
            steps += challenged(draw, secrets, command, b"+ \r\n", [tag, b" NO cancelled\r\n"])
    return steps


@settings(max_examples=300)
@given(st.data())
def test_imap_no_credential_reaches_the_backend_before_tls(data):
    secrets: list[bytes] = []
    dialogue = data.draw(imap_logins(secrets))
    tls = data.draw(st.booleans())
    if tls:
        dialogue += [("C", [b"z1 STARTTLS\r\n"]), ("T", []), ("C", [IMAP_LOGIN])]
    login = IMAP_LOGIN if tls else None
    assert_no_credential_before_tls(lambda: ImapProxy(log_dialogue=True), dialogue, secrets, login)


# -- POP3 -------------------------------------------------------------------------------

POP3_LOGIN = b"USER alice\r\n"


@st.composite
def pop3_logins(draw, secrets):
    steps: list = [("B", [b"+OK ready <1.2@x>\r\n"])]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["user/pass", "apop", "auth", "pipelined", "+"]))
        if kind == "user/pass":
            for verb in (b"USER", b"PASS"):
                line = [draw(cases(verb)), draw(BLANKS), draw(secret_slot(secrets))]
                steps.append(("C", [*line, draw(MAYBE_BLANKS), b"\r\n"]))
        elif kind == "apop":
            line = [draw(cases(b"APOP")), draw(BLANKS), draw(secret_slot(secrets))]
            steps.append(("C", [*line, draw(BLANKS), b"0123456789abcdef\r\n"]))
        elif kind == "auth":
            line = [draw(cases(b"AUTH")), draw(BLANKS), draw(MECHANISMS)]
            if draw(st.booleans()):
                line += [draw(BLANKS), draw(secret_slot(secrets))]
            steps.append(("C", [*line, b"\r\n"]))
        elif kind == "pipelined":
            line = [draw(cases(b"AUTH")), b" ", draw(MECHANISMS), b"\r\n"]
            steps += [("C", [*line, *sasl_lines(draw, secrets), b"NOOP\r\n"]), ("B", [b"+OK\r\n"])]
        else:
            command = [b"XAUTH ", draw(MECHANISMS), b"\r\n"]
            steps += challenged(draw, secrets, command, b"+ \r\n", [b"-ERR cancelled\r\n"])
    return steps


@settings(max_examples=300)
@given(st.data())
def test_pop3_no_credential_reaches_the_backend_before_tls(data):
    secrets: list[bytes] = []
    dialogue = data.draw(pop3_logins(secrets))
    tls = data.draw(st.booleans())
    if tls:
        dialogue += [("C", [b"STLS\r\n"]), ("T", []), ("C", [POP3_LOGIN])]
    login = POP3_LOGIN if tls else None
    assert_no_credential_before_tls(lambda: Pop3Proxy(log_dialogue=True), dialogue, secrets, login)

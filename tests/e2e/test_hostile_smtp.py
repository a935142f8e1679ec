"""Hostile SMTP clients through the users' chain, for real (docs/smtp.md, the rules).

    tcpserver ... makesock stunnel -f -D 7 -p PEM -n smtp- -F 3 -makesock_connect_to
        fixcrio setuidgid Debian-exim recordio exim4 -bs -N
    ... -makesock_connect_to recordio mailfront smtp echo cvm-authenticate accept

Two real backends that read a command differently from qmail-smtpd (which splits at
SP only): Debian's exim4 strips trailing blanks (`DATA<TAB>` is DATA to it), and
mailfront's smtpfront splits every command at TAB as at SP and offers AUTH PLAIN and
LOGIN, checked by cvm-pwfile. The client is Python's smtplib. Each test is a rule:

- after STARTTLS, every reply the proxy makes itself reaches the client at once
  (the client sends nothing more), and a session the proxy ends does end;
- a plaintext AUTH does not survive STARTTLS (for a client allowed one:
  STUNNEL3_AUTH=plaintext);
- the backend decides DATA and SASL, whatever the proxy made of the verb, and the
  -D 7 log never shows a credential or the message.
"""

import base64
import os
import smtplib
import ssl

import pytest
from conftest import free_port
from helpers import start_chain, stop_chain
from test_smtp_chain import Chain, message, start_exim_chain

BOUND = 5  # seconds a reply may take (the stall these tests guard against was 600 s)
USER, PASSWORD = "alice", "s3cret-pw-4242"


@pytest.fixture(scope="module")
def exim(tmp_path_factory, pki, stunnel_bin, makesock_bin, fixcrio_bin):
    server, chain = start_exim_chain(
        tmp_path_factory, pki, stunnel_bin, makesock_bin, fixcrio_bin, "smtp-"
    )
    yield chain
    stop_chain(server)


@pytest.fixture(scope="module")
def mailfront(tmp_path_factory, pki, stunnel_bin, makesock_bin):
    workdir = tmp_path_factory.mktemp("mailfront")
    (workdir / "passwd").write_text(f"{USER}:{PASSWORD}:65534:65534:A:/tmp:/bin/sh\n")
    port = free_port()
    chain = Chain(workdir, port, pki["ca"])
    argv = ["tcpserver", "-H", "-R", "-c", "8", "127.0.0.1", str(port), makesock_bin]
    argv += [stunnel_bin, "-f", "-D", "7", "-p", str(pki["server"]), "-n", "smtp-", "-F", "3"]
    argv += ["-makesock_connect_to", "recordio", "/usr/sbin/mailfront", "smtp", "echo"]
    argv += ["cvm-authenticate", "accept"]
    sasl = {"CVM_SASL_PLAIN": "/usr/bin/cvm-pwfile", "CVM_SASL_LOGIN": "/usr/bin/cvm-pwfile"}
    env = {**os.environ, "CVM_PWFILE_PATH": str(workdir / "passwd"), **sasl}
    # A client that may log in before TLS, as 3.22 let every client: the rule that such
    # a login does not survive STARTTLS needs one (the default: test_client_policy.py).
    env["STUNNEL3_AUTH"] = "plaintext"
    server = start_chain(argv, chain.log, port, env)
    yield chain
    stop_chain(server)


def connect(chain, tls: bool) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", chain.port, local_hostname="client.example", timeout=BOUND)
    if tls:
        smtp.starttls(context=ssl.create_default_context(cafile=str(chain.ca)))
    return smtp


def assert_never_logged(log, *secrets: bytes):
    text = "\n".join(log)
    assert text, "stunnel logged nothing at -D 7"
    for secret in secrets:
        assert secret.decode() not in text, f"{secret!r} in the log"


# -- every reply the proxy makes itself, at once, after STARTTLS ----------------------


def test_local_replies_after_starttls_arrive_at_once_and_an_ended_session_ends(exim):
    def client():
        with connect(exim, tls=True) as smtp:
            replies = [smtp.docmd("MAIL", "FROM:<a@example.org>")]  # no EHLO since TLS
            replies.append(smtp.docmd("STARTTLS"))
            smtp.ehlo()
            replies += [smtp.docmd("STARTTLS"), smtp.docmd("STARTTLS", "now")]
            replies += [smtp.docmd("TURN"), smtp.docmd("ATRN")]
            smtp.send(b"BDAT 4 LAST\r\nabcd")
            replies.append(smtp.getreply())
            replies.append(smtp.docmd("BDAT"))  # no size: 501, and the proxy hangs up
            with pytest.raises(smtplib.SMTPServerDisconnected):
                smtp.noop()
            return [code for code, _ in replies]

    codes, received, sent, log = exim.session(client)
    assert codes == [503, 503, 503, 503, 502, 502, 502, 501]
    assert not any(line.upper().startswith(("MAIL", "TURN", "ATRN", "BDAT")) for line in received)


# -- AUTH then STARTTLS -------------------------------------------------------------


def test_a_plaintext_auth_does_not_survive_starttls(mailfront):
    def client():
        with connect(mailfront, tls=False) as smtp:
            smtp.ehlo()
            assert smtp.login(USER, PASSWORD)[0] == 235  # in the clear: the backend agrees
            with pytest.raises(smtplib.SMTPResponseException) as refused:
                smtp.starttls(context=ssl.create_default_context(cafile=str(mailfront.ca)))
            return refused.value

    refused, received, sent, log = mailfront.session(client)
    assert refused.smtp_code == 503
    assert b"only allowed before authentication" in refused.smtp_error
    assert "RSET" not in received  # no TLS started, nothing reset behind the client's back
    assert not any("Negotiated ciphers" in line for line in log)


# -- the backend decides DATA and SASL ------------------------------------------------


def test_data_with_a_tab_is_data_because_the_backend_says_354(exim):
    def client():
        with connect(exim, tls=True) as smtp:
            smtp.ehlo()
            smtp.mail("a@example.org")
            smtp.rcpt("root@localhost")
            go = smtp.docmd("DATA\t")  # exim strips the TAB: 354
            smtp.send(message("tab-data") + b".\r\n")
            return go, smtp.getreply()

    (go, done), received, sent, log = exim.session(client)
    assert go[0] == 354 and done[0] == 250, (go, done)
    # The proxy knew it was message data: its Received: line went first, and the
    # body never reached the log.
    first = received.index(next(line for line in received if line.upper().startswith("DATA")))
    assert received[first + 1].startswith("Received: (stunnel3 STARTTLS proxy) with ESMTPS")
    assert_never_logged(log, b"tab-data")
    assert any("bytes of message data)" in line for line in log)


def test_auth_with_a_tab_and_its_sasl_lines_never_reach_the_log(mailfront):
    plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    user, password = base64.b64encode(USER.encode()), base64.b64encode(PASSWORD.encode())

    def initial_response():
        with connect(mailfront, tls=True) as smtp:
            smtp.ehlo()
            return smtp.docmd("AUTH\tPLAIN", plain.decode())  # mailfront: AUTH, 235

    def sasl_exchange():
        with connect(mailfront, tls=True) as smtp:
            smtp.ehlo()
            replies = [smtp.docmd("AUTH\tLOGIN")]  # 334: the next lines are SASL
            replies += [smtp.docmd(user.decode()), smtp.docmd(password.decode())]
            return [code for code, _ in replies]

    reply, _, _, log = mailfront.session(initial_response)
    assert reply[0] == 235, reply
    assert_never_logged(log, plain, PASSWORD.encode())
    assert any(line.endswith("C: AUTH PLAIN ***") for line in log)
    codes, received, _, log = mailfront.session(sasl_exchange)
    assert codes == [334, 334, 235]
    assert user.decode() in received and password.decode() in received
    assert_never_logged(log, user, password, PASSWORD.encode())
    assert sum(line.endswith("C: ***") for line in log) == 2

"""TLS policy per client from tcprules, end to end (issue #15; docs/migration.md).

    tcpserver -x rules.cdb -H -R 127.0.0.1 PORT makesock stunnel -f -D 7 -n smtp- -F 3
        -makesock_connect_to recordio mailfront smtp echo cvm-authenticate accept
    ... -n imap- ... recordio imapfront-auth /usr/lib/dovecot/imap -c CONF
    ... -n pop3- ... recordio pop3front-auth cvm-pwfile pop3front-maildir Maildir

The rules file is compiled by Debian's tcprules, and tcpserver sets each client's
variables from it by address; every client here connects from its own loopback
address (127.0.0.1 has no rule of its own, 127.0.0.2 may log in before TLS, ...).
The backends offer logins (mailfront's AUTH PLAIN LOGIN, imapfront-auth's LOGIN and
AUTH=PLAIN, pop3front-auth's USER/PASS), checked by cvm-pwfile; recordio writes what
each received. Clients nobody here wrote: swaks --auth, curl, Python's smtplib.
Each test checks what the client got, what the backend got, and stunnel's log.
"""

import os
import smtplib
import subprocess
from pathlib import Path

import pytest
from conftest import free_port
from helpers import start_chain, stop_chain
from test_imap_pop3_chain import MESSAGE, POP3_BODY, mailhome  # noqa: F401 (a fixture)
from test_smtp_chain import Chain

TIMEOUT = 20
USER, PASSWORD = "alice", "hunter2-secret"  # mailhome's
RULES = """\
127.0.0.2:allow,STUNNEL3_AUTH="plaintext"
127.0.0.3:allow,STUNNEL3_STARTTLS="required"
127.0.0.4:allow,STUNNEL3_STARTTLS="off"
127.0.0.5:allow,STUNNEL3_AUTH="maybe"
:allow
"""
DEFAULT, PLAINTEXT, REQUIRED, OFF, UNKNOWN = (f"127.0.0.{n}" for n in range(1, 6))


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> Path:
    """/etc/tcp.smtp as an administrator writes it, compiled by tcprules."""
    workdir = tmp_path_factory.mktemp("rules")
    cdb = workdir / "rules.cdb"
    done = subprocess.run(
        ["tcprules", str(cdb), str(workdir / "rules.tmp")],
        input=RULES.encode(), capture_output=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0 and cdb.exists(), done.stderr
    return cdb


@pytest.fixture(scope="module")
def start(tmp_path_factory, pki, stunnel_bin, makesock_bin, rules, mailhome):  # noqa: F811
    """start(mode, backend): a chain behind tcpserver -x rules.cdb; all stopped at the end."""
    servers = []
    env = {
        **os.environ,
        "CVM_PWFILE_PATH": str(mailhome / "passwd"),
        "CVM_SASL_PLAIN": "/usr/bin/cvm-pwfile",
        "CVM_SASL_LOGIN": "/usr/bin/cvm-pwfile",
        # imapfront-auth offers AUTH=PLAIN after TLS: curl logs in with it (it keeps
        # the LOGINDISABLED it saw before STARTTLS, so LOGIN is not for it)
        "IMAP_CAPABILITY": "AUTH=PLAIN",
    }

    def chain(mode: str, backend: list[str]) -> Chain:
        workdir = tmp_path_factory.mktemp(f"policy{mode}")
        port = free_port()
        argv = ["tcpserver", "-x", str(rules), "-H", "-R", "-c", "8", "127.0.0.1", str(port)]
        argv += [makesock_bin, stunnel_bin, "-f", "-D", "7", "-p", str(pki["server"])]
        argv += ["-N", mode.rstrip("-"), "-n", mode, "-F", "3", "-makesock_connect_to"]
        chain = Chain(workdir, port, pki["ca"])
        servers.append(start_chain([*argv, "recordio", *backend], chain.log, port, env))
        return chain

    yield chain
    for server in servers:
        stop_chain(server)


@pytest.fixture(scope="module")
def smtp(start):
    return start("smtp-", ["/usr/sbin/mailfront", "smtp", "echo", "cvm-authenticate", "accept"])


@pytest.fixture(scope="module")
def imap(start, mailhome):  # noqa: F811
    conf = str(mailhome / "dovecot.conf")
    return start("imap-", ["/usr/sbin/imapfront-auth", "/usr/lib/dovecot/imap", "-c", conf])


@pytest.fixture(scope="module")
def pop3(start):
    backend = ["/usr/sbin/pop3front-auth", "/usr/bin/cvm-pwfile"]
    return start("pop3-", [*backend, "/usr/sbin/pop3front-maildir", "Maildir"])


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT * 2)


def policy_line(log: list[str]) -> str:
    lines = [line.split(": ", 1)[1] for line in log if "LOG6" in line and "Client policy" in line]
    assert len(lines) == 1, log
    return lines[0]


def assert_no_password(log: list[str]) -> None:
    assert log and not any(PASSWORD in line for line in log), log


# -- SMTP: swaks --auth, smtplib --------------------------------------------------------


def swaks(chain: Chain, source: str, *extra: str) -> subprocess.CompletedProcess:
    argv = ["swaks", "-s", f"127.0.0.1:{chain.port}", "--local-interface", source]
    argv += ["-f", "a@example.org", "-t", "b@example.org", "--timeout", "15"]
    return run([*argv, "--h-Subject", "policy", *extra])


AUTH = ["--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD]


def logged_in(received: list[str]) -> bool:
    return any(line.upper().startswith("AUTH PLAIN") for line in received)


def test_smtp_by_default_a_password_crosses_only_over_tls(smtp):
    done, received, _, log = smtp.session(lambda: swaks(smtp, DEFAULT, *AUTH))
    assert done.returncode != 0 and "Host did not advertise authentication" in done.stderr
    assert "<-  250-STARTTLS" in done.stdout and "AUTH" not in done.stdout  # not offered
    assert not logged_in(received) and not any("AUTH" in line for line in received)
    assert policy_line(log) == (
        "Client policy: STARTTLS optional (-n smtp-), logins only over TLS (the default)"
    )

    def plaintext_auth():  # a client that tries anyway
        with smtplib.SMTP(
            "127.0.0.1", smtp.port, timeout=TIMEOUT, source_address=(DEFAULT, 0)
        ) as c:
            c.ehlo("client.example")
            return c.docmd("AUTH", "PLAIN AGFsaWNlAGh1bnRlcjItc2VjcmV0")

    reply, received, _, log = smtp.session(plaintext_auth)
    assert reply == (538, b"5.7.11 Encryption required for requested authentication mechanism")
    assert not any("AUTH" in line.upper() for line in received)
    done, received, _, log = smtp.session(lambda: swaks(smtp, DEFAULT, "--tls", *AUTH))
    assert done.returncode == 0, done.stdout + done.stderr
    assert logged_in(received) and "235 " in done.stdout
    assert_no_password(log)


def test_smtp_a_client_tcprules_trusts_may_log_in_before_tls(smtp):
    done, received, _, log = smtp.session(lambda: swaks(smtp, PLAINTEXT, *AUTH))
    assert done.returncode == 0, done.stdout + done.stderr
    assert logged_in(received) and not any("Negotiated ciphers" in line for line in log)
    assert policy_line(log).endswith("logins also in plaintext (STUNNEL3_AUTH=plaintext)")
    assert_no_password(log)


def test_smtp_tls_required_for_one_client(smtp):
    done, received, _, log = smtp.session(lambda: swaks(smtp, REQUIRED))
    assert done.returncode != 0 and "530 5.7.0 Must issue a STARTTLS command first" in done.stdout
    assert not any(line.upper().startswith("MAIL") for line in received)
    assert "STARTTLS required (STUNNEL3_STARTTLS=required)" in policy_line(log)
    done, received, _, _ = smtp.session(lambda: swaks(smtp, REQUIRED, "--tls"))
    assert done.returncode == 0 and any(line.upper().startswith("MAIL") for line in received)


def test_smtp_starttls_not_offered_to_one_client(smtp):
    done, _, _, log = smtp.session(lambda: swaks(smtp, OFF, "--tls"))
    assert done.returncode != 0 and "Host did not advertise STARTTLS" in done.stderr
    assert "STARTTLS off (STUNNEL3_STARTTLS=off)" in policy_line(log)
    done, received, _, log = smtp.session(lambda: swaks(smtp, OFF))
    assert done.returncode == 0, done.stdout + done.stderr  # mail goes on in plaintext
    assert "STARTTLS" not in done.stdout  # not offered in the EHLO reply
    assert any(line.upper().startswith("DATA") for line in received)


def test_an_unknown_value_is_one_line_and_the_safe_choice(smtp):
    done, received, _, log = smtp.session(lambda: swaks(smtp, UNKNOWN, *AUTH))
    assert done.returncode != 0 and not logged_in(received)  # as the default: after TLS only
    warnings = [line for line in log if "LOG4" in line and "STUNNEL3_" in line]
    assert [line.split(": ", 1)[1] for line in warnings] == [
        "STUNNEL3_AUTH='maybe' is not tls or plaintext: tls, logins only over TLS"
    ]


# -- IMAP and POP3: curl -------------------------------------------------------------


def curl(url: str, source: str, *extra: str) -> subprocess.CompletedProcess:
    argv = ["curl", "-sS", "--interface", source, "--max-time", "15", *extra]
    return subprocess.run(
        [*argv, "-u", f"{USER}:{PASSWORD}", url], capture_output=True, timeout=TIMEOUT * 2
    )


def logins(received: list[str]) -> list[str]:
    words = ("LOGIN", "AUTHENTICATE", "USER", "PASS", "AUTH")
    return [line for line in received if any(word in line.upper().split()[:2] for word in words)]


def test_imap_by_default_logins_only_over_tls_and_a_trusted_client_in_plaintext(imap, pki):
    url = f"imap://127.0.0.1:{imap.port}/INBOX;UID=1"
    done, received, _, log = imap.session(lambda: curl(url, DEFAULT))
    assert done.returncode != 0 and done.stdout == b""
    assert logins(received) == []  # the backend saw no LOGIN, no AUTHENTICATE
    assert "logins only over TLS" in policy_line(log)
    tls = ("--ssl-reqd", "--cacert", str(pki["ca"]))
    done, received, _, log = imap.session(lambda: curl(url, DEFAULT, *tls))
    assert done.returncode == 0 and done.stdout == MESSAGE, done.stderr
    assert logins(received) and any("Negotiated ciphers" in line for line in log)
    assert_no_password(log)
    done, received, _, log = imap.session(lambda: curl(url, PLAINTEXT))
    assert done.returncode == 0 and done.stdout == MESSAGE, done.stderr
    assert logins(received) and not any("Negotiated ciphers" in line for line in log)
    assert_no_password(log)


def test_pop3_by_default_logins_only_over_tls_and_a_trusted_client_in_plaintext(pop3, pki):
    url = f"pop3://127.0.0.1:{pop3.port}/1"
    done, received, _, log = pop3.session(lambda: curl(url, DEFAULT))
    assert done.returncode != 0 and done.stdout == b""
    assert logins(received) == []  # the backend saw no USER, PASS or AUTH
    tls = ("--ssl-reqd", "--cacert", str(pki["ca"]))
    done, received, _, log = pop3.session(lambda: curl(url, DEFAULT, *tls))
    assert done.returncode == 0 and done.stdout == POP3_BODY, done.stderr
    assert logins(received) and any("Negotiated ciphers" in line for line in log)
    done, received, _, log = pop3.session(lambda: curl(url, PLAINTEXT))
    assert done.returncode == 0 and done.stdout == POP3_BODY, done.stderr
    assert logins(received) and "logins also in plaintext" in policy_line(log)
    assert_no_password(log)

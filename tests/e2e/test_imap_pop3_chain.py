"""The IMAP and POP3 proxies through the users' chain, for real (SPEC sections 1 and 6).

    tcpserver -H -R 127.0.0.1 PORT makesock stunnel -f -D 7 -p PEM -n imap- -F 3
        -makesock_connect_to recordio imapfront-auth /usr/lib/dovecot/imap -c CONF
    ... -n pop3- (or pop3) ... recordio pop3front-auth cvm-pwfile pop3front-maildir Maildir

SME Server's IMAP line is `stunnel ... -n imap- -f -F 3 -makesock_connect_to
imapfront-auth imap`: mailfront's imapfront-auth (LOGIN checked by a CVM module, here
cvm-pwfile with a password file of its own) then execs the IMAP server as the user,
here Debian's dovecot `imap`, which answers the LOGIN's tag (IMAPLOGINTAG). POP3 is
mailfront's pop3front-auth + pop3front-maildir, the qmail-style pair. recordio
writes every line the backend received (`pid < line`) and sent (`pid > line`).
Clients nobody here wrote: Python's imaplib and poplib, `openssl s_client
-starttls imap|pop3`, curl. Each test checks the client's view and the backend's.
"""

import imaplib
import os
import poplib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port
from helpers import SESSION_END, start_chain, stop_chain, tls_client

TIMEOUT = 20
USER, PASSWORD = "alice", "hunter2-secret"
NOBODY = 65534
MARKER = "imap-pop3-e2e-marker"
MESSAGE = (
    f"From: a@example.org\r\nTo: alice@example.org\r\nSubject: {MARKER}\r\n\r\n"
    f"body line\r\n.leading dot\r\n* CAPABILITY STARTTLS\r\n"
).encode()
# pop3front-maildir ends each message it serves with an empty line of its own.
POP3_BODY = MESSAGE + b"\r\n"
DOVECOT_CONF = """\
mail_location = maildir:~/Maildir
mail_privileged_group =
import_environment = TZ IMAPLOGINTAG
log_path = /dev/stderr
ssl = no
"""


@pytest.fixture(scope="module")
def mailhome():
    """A password file and a maildir with one message, readable by nobody (pytest's
    own temporary directories are root's 0700)."""
    base = Path(tempfile.mkdtemp(prefix="stunnel3-imap-"))
    base.chmod(0o755)
    home = base / "home"
    for sub in ("cur", "new", "tmp"):
        (home / "Maildir" / sub).mkdir(parents=True)
    (home / "Maildir" / "new" / "1.host").write_bytes(MESSAGE.replace(b"\r\n", b"\n"))
    for path in [home, *home.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    (base / "passwd").write_text(f"{USER}:{PASSWORD}:{NOBODY}:{NOBODY}:A:{home}:/bin/sh\n")
    (base / "dovecot.conf").write_text(DOVECOT_CONF)
    yield base
    shutil.rmtree(base)


class Chain:
    def __init__(self, log: Path, port: int):
        self.log, self.port = log, port

    def session(self, client):
        """client(); then wait for stunnel's last line; (result, backend got, stunnel log)."""
        before = self.log.read_bytes()
        result = client()
        deadline = time.monotonic() + TIMEOUT
        while self.log.read_bytes()[len(before) :].count(SESSION_END) < 1:
            assert time.monotonic() < deadline, "the session did not end"
            time.sleep(0.05)
        time.sleep(0.1)  # recordio's last lines
        new = self.log.read_bytes()[len(before) :].decode("latin-1")
        received, log = [], []
        for line in new.splitlines():
            pid, _, rest = line.partition(" ")
            if pid.isdigit() and rest[:2] == "< ":
                received.append(rest[2:].rstrip(" +"))
            elif " LOG" in line[:30]:
                log.append(line)
        return result, received, log


def start(workdir: Path, stunnel: list[str], backend: list[str], env: dict):
    port = free_port()
    chain = Chain(workdir / f"chain-{port}.log", port)
    argv = ["tcpserver", "-H", "-R", "-c", "8", "127.0.0.1", str(port), *stunnel]
    argv += ["-makesock_connect_to", "recordio", *backend]
    return start_chain(argv, chain.log, port, {**os.environ, **env}), chain


@pytest.fixture(scope="module")
def chains(tmp_path_factory, pki, stunnel_bin, makesock_bin, mailhome):
    workdir = tmp_path_factory.mktemp("imap-pop3")
    env = {"CVM_PWFILE_PATH": str(mailhome / "passwd"), "CVM_SASL_PLAIN": "/usr/bin/cvm-pwfile"}
    backends = {
        "imap": ["/usr/sbin/imapfront-auth", "/usr/lib/dovecot/imap"],
        "pop3": ["/usr/sbin/pop3front-auth", "/usr/bin/cvm-pwfile"],
    }
    backends["imap"] += ["-c", str(mailhome / "dovecot.conf")]
    backends["pop3"] += ["/usr/sbin/pop3front-maildir", "Maildir"]
    started: dict[tuple, tuple] = {}

    def get(mode: str, **extra: str) -> Chain:
        """The chain for -n mode, with these variables in its environment too."""
        key = (mode, *sorted(extra.items()))
        if key not in started:
            stunnel = [makesock_bin, stunnel_bin, "-f", "-D", "7", "-p", str(pki["server"])]
            stunnel += ["-N", mode.rstrip("-"), "-n", mode, "-F", "3"]
            started[key] = start(workdir, stunnel, backends[mode[:4]], {**env, **extra})
        return started[key][1]

    yield get
    for server, _ in started.values():
        stop_chain(server)


def run(argv, stdin=b""):
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=TIMEOUT)


def assert_no_secret(log):
    assert log, "stunnel logged nothing at -D 7"
    assert not any(PASSWORD in line or MARKER in line for line in log), log


# -- IMAP ------------------------------------------------------------------------


def imaplib_session(chain, ca, starttls: bool):
    def client():
        with imaplib.IMAP4("127.0.0.1", chain.port, timeout=TIMEOUT) as conn:
            before = conn.capabilities
            if starttls:
                conn.starttls(tls_client(str(ca)))
            after = conn.capabilities
            conn.login(USER, PASSWORD)
            conn.select("INBOX")
            _, data = conn.fetch("1", "(BODY.PEEK[])")
            conn.logout()
            return before, after, data[0][1]

    return chain.session(client)


@pytest.fixture
def imap_chain(chains):
    return chains("imap-")


def test_imaplib_starttls_login_fetch(imap_chain, pki):
    (before, after, body), received, log = imaplib_session(imap_chain, pki["ca"], True)
    assert "STARTTLS" in before and "STARTTLS" not in after
    assert body == MESSAGE
    assert not any("STARTTLS" in line.upper() for line in received)  # the proxy answers it
    assert any(" LOGIN alice " in line and PASSWORD in line for line in received)
    assert any("Negotiated ciphers" in line for line in log)
    assert_no_secret(log)
    assert any("LOGIN ***" in line for line in log)


def test_imaplib_plaintext_fallback(chains, pki):
    # a client that may log in before TLS (by default it may not: test_client_policy.py)
    chain = chains("imap-", STUNNEL3_AUTH="plaintext")
    (before, after, body), received, log = imaplib_session(chain, pki["ca"], False)
    assert "STARTTLS" in before and body == MESSAGE
    assert not any("Negotiated ciphers" in line for line in log)
    assert_no_secret(log)


def test_openssl_s_client_starttls_imap(imap_chain, pki):
    def client():
        argv = ["openssl", "s_client", "-starttls", "imap", "-crlf", "-ign_eof", "-quiet"]
        argv += ["-connect", f"127.0.0.1:{imap_chain.port}", "-CAfile", str(pki["ca"])]
        argv += ["-verify_return_error"]
        return run(argv, b"c1 CAPABILITY\nc2 LOGOUT\n")

    done, received, _ = imap_chain.session(client)
    assert done.returncode == 0, done.stderr
    assert b"* CAPABILITY IMAP4rev1\r\nc1 OK" in done.stdout  # no STARTTLS after TLS
    assert b"c2 OK LOGOUT" in done.stdout
    assert received[-2:] == ["c1 CAPABILITY", "c2 LOGOUT"]


def test_curl_ssl_reqd_imap(chains, pki, tmp_path):
    # curl (7.88) keeps the LOGINDISABLED it saw before STARTTLS, so it logs in only
    # with a mechanism the backend offers after TLS: imapfront-auth's AUTH=PLAIN.
    chain = chains("imap-", IMAP_CAPABILITY="AUTH=PLAIN")

    def client():
        url = f"imap://127.0.0.1:{chain.port}/INBOX;UID=1"
        argv = ["curl", "-sS", "--ssl-reqd", "--cacert", str(pki["ca"]), "--max-time", "15"]
        return run([*argv, "-u", f"{USER}:{PASSWORD}", url])

    done, received, log = chain.session(client)
    assert done.returncode == 0, done.stderr
    assert done.stdout == MESSAGE
    assert_no_secret(log)


def test_imap_starttls_injection_never_reaches_backend(imap_chain):
    def client():
        with socket.create_connection(("127.0.0.1", imap_chain.port), timeout=TIMEOUT) as conn:
            conn.recv(4096)  # the greeting
            conn.sendall(b"a1 STARTTLS\r\na2 LOGIN alice hunter2-secret\r\n")
            return read_to_end(conn)

    answer, received, _ = imap_chain.session(client)
    assert answer.startswith(b"a1 BAD Commands pipelined after STARTTLS") and b"* BYE" in answer
    assert not any("LOGIN" in line for line in received)


def read_to_end(conn) -> bytes:
    data = b""
    while chunk := conn.recv(4096):
        data += chunk
    return data


# -- POP3 ------------------------------------------------------------------------


def poplib_session(chain, ca, starttls: bool):
    def client():
        conn = poplib.POP3("127.0.0.1", chain.port, timeout=TIMEOUT)
        try:
            before = conn.capa()
            if starttls:
                conn.stls(tls_client(str(ca)))
            after = conn.capa()
            conn.user(USER)
            conn.pass_(PASSWORD)
            _, lines, _ = conn.retr(1)
            return before, after, lines
        finally:
            conn.quit()

    return chain.session(client)


def test_poplib_stls_retr(chains, pki):
    chain = chains("pop3-")
    (before, after, lines), received, log = poplib_session(chain, pki["ca"], starttls=True)
    assert "STLS" in before and "STLS" not in after and "USER" in after
    assert b"\r\n".join(lines) + b"\r\n" == POP3_BODY
    assert "STLS" not in received and f"PASS {PASSWORD}" in received
    assert any("Negotiated ciphers" in line for line in log)
    assert_no_secret(log)
    assert any("USER ***" in line for line in log)


def test_poplib_plaintext_fallback(chains, pki):
    # a client that may log in before TLS (by default it may not: test_client_policy.py)
    chain = chains("pop3-", STUNNEL3_AUTH="plaintext")
    (before, _, lines), received, log = poplib_session(chain, pki["ca"], starttls=False)
    assert "STLS" in before and b"\r\n".join(lines) + b"\r\n" == POP3_BODY
    assert_no_secret(log)


def test_pop3_requires_tls(chains, pki):
    chain = chains("pop3")

    def client():
        conn = poplib.POP3("127.0.0.1", chain.port, timeout=TIMEOUT)
        try:
            capabilities = conn.capa()
            with pytest.raises(poplib.error_proto, match="Must issue a STLS"):
                conn.user(USER)
            return capabilities
        finally:
            conn.quit()

    capabilities, received, _ = chain.session(client)
    assert "STLS" in capabilities and "USER" not in capabilities
    assert not any(line.startswith("USER") for line in received)
    (_, after, lines), _, _ = poplib_session(chain, pki["ca"], starttls=True)
    assert "USER" in after and b"\r\n".join(lines) + b"\r\n" == POP3_BODY


def test_openssl_s_client_starttls_pop3(chains, pki):
    chain = chains("pop3-")

    def client():
        argv = ["openssl", "s_client", "-starttls", "pop3", "-crlf", "-ign_eof", "-quiet"]
        argv += ["-connect", f"127.0.0.1:{chain.port}", "-CAfile", str(pki["ca"])]
        return run([*argv, "-verify_return_error"], b"CAPA\nQUIT\n")

    done, received, _ = chain.session(client)
    assert done.returncode == 0, done.stderr
    assert b"+OK \r\nSASL LOGIN PLAIN\r\n" in done.stdout and b"STLS" not in done.stdout
    assert received[-2:] == ["CAPA", "QUIT"]


def test_curl_ssl_reqd_pop3(chains, pki):
    chain = chains("pop3-")

    def client():
        url = f"pop3://127.0.0.1:{chain.port}/1"
        argv = ["curl", "-sS", "--ssl-reqd", "--cacert", str(pki["ca"]), "--max-time", "15"]
        return run([*argv, "-u", f"{USER}:{PASSWORD}", url])

    done, _, log = chain.session(client)
    assert done.returncode == 0, done.stderr
    assert done.stdout == POP3_BODY
    assert_no_secret(log)


def test_pop3_stls_injection_never_reaches_backend(chains):
    chain = chains("pop3-")

    def client():
        with socket.create_connection(("127.0.0.1", chain.port), timeout=TIMEOUT) as conn:
            conn.recv(4096)
            conn.sendall(b"STLS\r\nUSER alice\r\n")
            return read_to_end(conn)

    answer, received, _ = chain.session(client)
    assert answer.startswith(b"-ERR Commands pipelined after STLS")
    assert not any(line.startswith("USER") for line in received)


# -- responses the proxy makes itself, at once, after STARTTLS / STLS -----------------

BOUND = 5  # seconds a response may take (the stall this guards against lasted 600 s)


def test_imap_local_responses_after_starttls_arrive_at_once(imap_chain, pki):
    def client():
        with imaplib.IMAP4("127.0.0.1", imap_chain.port, timeout=BOUND) as conn:
            conn.starttls(tls_client(str(pki["ca"])))
            refused = []
            for command in (("STARTTLS",), ("STARTTLS", "now"), ("COMPRESS", "DEFLATE")):
                try:
                    refused.append(conn.xatom(*command)[0])
                except imaplib.IMAP4.error as error:  # imaplib raises on BAD
                    refused.append(str(error))
            conn.logout()
            return refused

    refused, received, log = imap_chain.session(client)
    assert "TLS already active" in refused[0] and "TLS already active" in refused[1]
    assert refused[2] == "NO"  # COMPRESS is refused by the proxy, after TLS too
    assert not any(
        line.upper().split(" ")[1:2] in (["STARTTLS"], ["COMPRESS"]) for line in received
    )


def test_pop3_local_responses_after_stls_arrive_at_once(chains, pki):
    chain = chains("pop3-")

    def client():
        conn = poplib.POP3("127.0.0.1", chain.port, timeout=BOUND)
        try:
            conn.stls(tls_client(str(pki["ca"])))
            refused = []
            for command in ("STLS", "STLS now"):
                with pytest.raises(poplib.error_proto) as error:
                    conn._shortcmd(command)  # poplib itself refuses a second stls()
                refused.append(error.value.args[0])
            return refused
        finally:
            conn.quit()

    refused, received, log = chain.session(client)
    assert refused == [b"-ERR Command not permitted when TLS active"] * 2
    assert "STLS" not in [line.upper().split(" ")[0] for line in received]

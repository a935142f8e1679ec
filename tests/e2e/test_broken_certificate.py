"""A broken certificate never stops mail (issue #18 item 2), through the real chain.

    tcpserver ... makesock stunnel -f -D 7 -s 65534 -g 65534 -i -p BROKEN.pem -n smtp- -F 3
        -makesock_connect_to fixcrio setuidgid Debian-exim recordio exim4 -bs -N
    ... -n smtp ..., -n pop3 ... pop3front-auth ..., -n imap- ... imapfront-auth ...
    ... stunnel -p BROKEN.pem -F 3 (no -n: every byte TLS), and the original 3.22
    stunnel -d ... -n smtp- -l setuidgid ... exim4 -bs -N (daemon mode)
    the first chain again through the warm helper (stunnel3-warm)

The pems an administrator gets wrong: missing, unreadable by the account stunnel
runs as (`-s 65534 -g 65534 -i`, a root-only 0600 pem), a certificate without its
key, a key that is not the certificate's, an encrypted key. In a STARTTLS mode that
allows plaintext the error is logged at LOG3, STARTTLS is not offered and the mail
goes through in plaintext; where TLS is required the client hears why (421 4.7.0,
-ERR [SYS/TEMP], * BYE [UNAVAILABLE]) instead of a reset; without -n it is 3.22's:
exit 1, nothing to the client, as the real 3.22 does under the same tcpserver. The
clients are Python's smtplib, poplib, imaplib; the backend's record (recordio) says
what reached it.
"""

import contextlib
import imaplib
import os
import poplib
import re
import shutil
import smtplib
import socket
import tempfile
import time
from pathlib import Path

import pytest
import trustme
from conftest import free_port
from cryptography.hazmat.primitives import serialization
from helpers import SESSION_END, TIMEOUT, Service, start_chain, stop_chain
from oracle.compare import oracle_binary
from test_smtp_chain import Chain
from test_warm import helper, serving_ids  # noqa: F401  (helper is a fixture)

NOBODY = "65534"
MAIL = "From: a@example.org\r\nSubject: no tls\r\n\r\nbroken certificate, mail goes on\r\n"
PASSPHRASE = b"open-sesame-42"
NO_TLS = "TLS is not available (the certificate above cannot be used): STARTTLS is not offered"
TURNED_AWAY = "TLS is required and not available: the client is turned away"
SMTP = ["exim4", "-bs", "-N"]  # accepts the mail, delivers nothing
POP3 = ["/usr/sbin/pop3front-auth", "/bin/true"]
IMAP = ["/usr/sbin/imapfront-auth", "/bin/true"]


@pytest.fixture(scope="module")
def pems(pki):
    """kind -> (the broken pem, the one line stunnel says of it)."""
    # a directory the account can enter (pytest's own are root's 0700)
    base = Path(tempfile.mkdtemp(prefix="stunnel3-broken-"))
    base.chmod(0o755)
    good = pki["server"].read_bytes()
    start = good.index(b"-----BEGIN CERTIFICATE-----")
    key, chain = good[:start], good[start:]
    assert b"PRIVATE KEY" in key and b"PRIVATE KEY" not in chain
    other = trustme.CA().issue_cert("localhost").private_key_pem.bytes()
    locked = serialization.load_pem_private_key(key, None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE),
    )
    paths = {kind: base / f"{kind}.pem" for kind in
             ("missing", "unreadable", "keyless", "mismatched", "encrypted")}  # fmt: skip
    paths["unreadable"].write_bytes(good)
    paths["unreadable"].chmod(0o600)  # root's: the account of -s/-g cannot read it
    paths["keyless"].write_bytes(chain)
    paths["mismatched"].write_bytes(other + chain)
    paths["encrypted"].write_bytes(locked + chain)
    for kind in ("keyless", "mismatched", "encrypted"):
        paths[kind].chmod(0o644)
    said = {
        "missing": f"{paths['missing']}: No such file or directory (2)",
        "unreadable": f"{paths['unreadable']}: Permission denied (13)",
        "keyless": f"SSL_CTX_use_PrivateKey_file: no private key in {paths['keyless']} "
        "(it must hold the key and its certificate)",
        "mismatched": "Private key does not match the certificate",
        "encrypted": f"{paths['encrypted']}: the private key is encrypted and no passphrase is "
        f"asked: decrypt it (openssl pkey -in {paths['encrypted']} -out key.pem) and put "
        "key.pem in its place",
    }
    yield {kind: (paths[kind], said[kind]) for kind in paths}
    shutil.rmtree(base)


def backend_argv(fixcrio_bin: str, backend: list[str]) -> list[str]:
    """What -makesock_connect_to runs: recordio records what the backend got and said."""
    if backend is SMTP:
        return [fixcrio_bin, "setuidgid", "Debian-exim", "recordio", *SMTP]
    return ["recordio", *backend]


@pytest.fixture(scope="module")
def chain(tmp_path_factory, stunnel_bin, makesock_bin, fixcrio_bin):
    """chain(pem, mode, backend, **env) -> a started chain; all are stopped at the end."""
    servers = []

    def start(pem: Path, mode: str | None, backend: list[str], end=SESSION_END, **env):
        workdir = tmp_path_factory.mktemp("chain")
        port = free_port()
        argv = ["tcpserver", "-H", "-R", "-c", "4", "127.0.0.1", str(port), makesock_bin]
        argv += [stunnel_bin, "-f", "-D", "7", "-s", NOBODY, "-g", NOBODY, "-i", "-p", str(pem)]
        argv += ["-n", mode] if mode else []
        argv += ["-F", "3", "-makesock_connect_to", *backend_argv(fixcrio_bin, backend)]
        chain = Chain(workdir, port, None)
        # pop3front-auth and imapfront-auth want a CVM named; no login reaches one here
        environ = {**os.environ, "CVM_SASL_PLAIN": "/usr/bin/cvm-pwfile", **env}
        servers.append(start_chain(argv, chain.log, port, environ, end=end))
        return chain

    yield start
    for server in servers:
        stop_chain(server)


def errors(log: list[str]) -> list[str]:
    """The LOG3 lines' texts."""
    return [line.split("]: ", 1)[1] for line in log if re.search(r" LOG3\[", line)]


def assert_said_why(log: list[str], said: str) -> None:
    """The pem's own line at LOG3, then that TLS is off; no key material, no passphrase."""
    assert errors(log)[:2] == [said, NO_TLS], log
    text = "\n".join(log)
    assert "PRIVATE KEY" not in text and PASSPHRASE.decode() not in text


def send_in_plaintext(port: int):
    """EHLO, STARTTLS anyway, one message: (STARTTLS offered, its reply, refused rcpts)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as conn:
        conn.ehlo("client.example")
        offered = conn.has_extn("starttls")
        refused = conn.docmd("STARTTLS")
        return offered, refused, conn.sendmail("a@example.org", ["root@localhost"], MAIL)


def assert_delivered_in_plaintext(result, received: list[str]) -> None:
    offered, refused, rejected = result
    assert offered is False
    assert refused == (454, b"4.7.0 TLS not available due to temporary reason")
    assert rejected == {}
    assert [line.upper() for line in received if line.upper() == "DATA"] == ["DATA"]
    assert "broken certificate, mail goes on" in received  # the body reached the backend
    assert not any("STARTTLS" in line.upper() for line in received)


@pytest.mark.parametrize("kind", ["missing", "unreadable", "keyless", "mismatched", "encrypted"])
def test_with_smtp_dash_mail_goes_on_in_plaintext_without_starttls(chain, pems, kind):
    pem, said = pems[kind]
    smtp = chain(pem, "smtp-", SMTP)
    result, received, _, log = smtp.session(lambda: send_in_plaintext(smtp.port))
    assert_delivered_in_plaintext(result, received)
    assert_said_why(log, said)
    assert errors(log) == [said, NO_TLS]  # nothing else went wrong


def test_makesock_exec_runs_the_same_stunnel_alone(chain, pems):
    """STUNNEL3_MAKESOCK_EXEC=1: makesock execs stunnel, which starts on its own."""
    pem, said = pems["mismatched"]
    smtp = chain(pem, "smtp-", SMTP, STUNNEL3_MAKESOCK_EXEC="1")
    result, received, _, log = smtp.session(lambda: send_in_plaintext(smtp.port))
    assert_delivered_in_plaintext(result, received)
    assert_said_why(log, said)


def refused_by_smtp(port: int) -> smtplib.SMTPConnectError:
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)
    return refused.value


@pytest.mark.parametrize("kind", ["missing", "unreadable", "keyless", "mismatched", "encrypted"])
def test_with_smtp_tls_required_the_client_hears_why(chain, pems, kind):
    pem, said = pems[kind]
    smtp = chain(pem, "smtp", SMTP)
    refused, received, _, log = smtp.session(lambda: refused_by_smtp(smtp.port))
    assert refused.smtp_code == 421
    assert refused.smtp_error == b"4.7.0 TLS is required but not available here, closing connection"
    assert received in ([], ["[EOF]"])  # nothing reached the backend
    assert_said_why(log, said)
    assert errors(log)[2:] == [TURNED_AWAY]


def test_with_pop3_tls_required_the_client_hears_why(chain, pems):
    pem, said = pems["missing"]
    pop3 = chain(pem, "pop3", POP3)

    def client():
        with pytest.raises(poplib.error_proto) as refused:
            poplib.POP3("127.0.0.1", pop3.port, timeout=TIMEOUT)
        return refused.value.args[0]

    refused, received, _, log = pop3.session(client)
    assert refused == b"-ERR [SYS/TEMP] TLS is required but not available here, closing connection"
    assert received in ([], ["[EOF]"])
    assert_said_why(log, said)


def test_with_imap_tls_required_by_the_client_policy_the_client_hears_why(chain, pems):
    pem, said = pems["unreadable"]
    imap = chain(pem, "imap-", IMAP, STUNNEL3_STARTTLS="required")

    def client():
        with socket.create_connection(("127.0.0.1", imap.port), timeout=TIMEOUT) as conn:
            conn.settimeout(TIMEOUT)
            return read_all(conn)

    refused, received, _, log = imap.session(client)
    assert (
        refused
        == b"* BYE [UNAVAILABLE] TLS is required but not available here, closing connection\r\n"
    )
    assert received in ([], ["[EOF]"])
    assert_said_why(log, said)
    assert TURNED_AWAY in errors(log)


def test_with_imap_dash_no_starttls_and_no_plaintext_login(chain, pems):
    pem, said = pems["mismatched"]
    imap = chain(pem, "imap-", IMAP)

    def client():
        with imaplib.IMAP4("127.0.0.1", imap.port, timeout=TIMEOUT) as conn:
            capabilities = conn.capabilities
            with pytest.raises(imaplib.IMAP4.error) as refused:
                conn.xatom("STARTTLS")  # imaplib itself would not send it: not offered
            with pytest.raises(imaplib.IMAP4.error) as login:
                conn.login("alice", "hunter2-secret")
            conn.logout()
            return capabilities, str(refused.value), str(login.value)

    (capabilities, refused, login), received, _, log = imap.session(client)
    assert "STARTTLS" not in capabilities and "LOGINDISABLED" in capabilities
    assert "STARTTLS is not available on this connection" in refused
    assert "[PRIVACYREQUIRED] Login is only allowed over TLS" in login
    assert not any("LOGIN" in line or "STARTTLS" in line for line in received)
    assert "hunter2-secret" not in "\n".join(log)
    assert_said_why(log, said)


def read_all(conn: socket.socket) -> bytes:
    """Every byte until the server's end; a reset counts as an end (3.22 may reset)."""
    got = b""
    while True:
        try:
            chunk = conn.recv(4096)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


def plain_tls_connection(port: int) -> bytes:
    """What a TLS client gets: it sends a handshake record's first bytes at once."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        conn.settimeout(TIMEOUT)
        with contextlib.suppress(OSError):  # the server may be gone already
            conn.sendall(b"\x16\x03\x01\x00\x05")
        return read_all(conn)


@pytest.mark.parametrize("kind", ["missing", "encrypted"])
def test_without_n_it_is_322s_fatal_error_as_the_original_under_tcpserver(
    chain, pems, kind, tmp_path, stunnel_bin
):
    pem, said = pems[kind]
    plain = chain(pem, None, SMTP, end=said.encode())
    before = plain.log.read_bytes()
    assert plain_tls_connection(plain.port) == b""  # no greeting, no alert: no session
    deadline = time.monotonic() + TIMEOUT
    while plain.log.read_bytes()[len(before) :].count(said.encode()) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    new = plain.log.read_bytes()[len(before) :].decode()
    assert NO_TLS not in new and "Negotiations" not in new
    if kind == "missing":  # the original, and ours, with the same argv under tcpserver
        for program in (str(oracle_binary()), stunnel_bin):
            port = free_port()
            argv = ["tcpserver", "-R", "-H", "127.0.0.1", str(port), program, "-f", "-D", "7"]
            argv += ["-p", str(pem), "-l", "/bin/cat"]
            with Service(argv, port, tmp_path / f"{port}.log") as server:
                assert plain_tls_connection(port) == b""
                server.wait_log(said)


def test_daemon_mode_says_it_once_and_serves_in_plaintext(tmp_path, pems, stunnel_bin):
    pem, said = pems["encrypted"]
    port = free_port()
    argv = [stunnel_bin, "-f", "-D", "7", "-d", f"127.0.0.1:{port}", "-P", "none"]
    argv += ["-p", str(pem), "-n", "smtp-", "-l", "/usr/bin/setuidgid"]
    argv += ["--", "setuidgid", "Debian-exim", "recordio", *SMTP]
    with Service(argv, port, tmp_path / "chain.log") as server:
        smtp = Chain(tmp_path, port, None)
        start = server.wait_log(SESSION_END.decode()).splitlines()  # wait_port's probe ended
        assert_said_why(start, said)
        for _ in range(2):  # the daemon read the pem once: each worker goes on without TLS
            result, received, _, log = smtp.session(lambda: send_in_plaintext(port))
            assert_delivered_in_plaintext(result, received)
            assert errors(log) == []
            assert any("STARTTLS optional but not available" in line for line in log)
        assert server.log().count(said) == 1


def test_through_the_warm_helper(helper, chain, pems, monkeypatch):  # noqa: F811
    pem, said = pems["keyless"]
    monkeypatch.setenv("STUNNEL3_WARM", "1")
    smtp = chain(pem, "smtp-", SMTP)  # the helper's STUNNEL3_WARM_DIR is in its environment
    result, received, _, log = smtp.session(lambda: send_in_plaintext(smtp.port))
    assert_delivered_in_plaintext(result, received)
    assert_said_why(log, said)
    pids = {int(pid) for pid in re.findall(r"LOG\d\[(\d+):", "\n".join(log))}
    assert serving_ids("\n".join(log).encode()) - pids  # a worker of the helper served

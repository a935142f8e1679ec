"""The SMTP proxy through the users' chain, for real (SPEC section 7).

    tcpserver -H -R 127.0.0.1 PORT makesock stunnel -f -D 7 -p PEM -n smtp- -F 3
        -makesock_connect_to fixcrio setuidgid Debian-exim recordio exim4 -bs -N

Our makesock, stunnel and fixcrio (the users' chain uses ours; the smuggling attack
also runs with Debian's /usr/bin/fixcrio); setuidgid as qmaild's stand-in, after
fixcrio here because our fixcrio is installed under /root, which Debian-exim cannot
read (the users put it in /usr/local/bin; the bytes are the same); ucspi-tcp's
recordio writes to stderr every line the backend received (`pid < line`) and sent
(`pid > line`); Debian's exim4 (-bs: SMTP on stdin/stdout, -N: accept but never
deliver, allowed for the exim user). Exim offers STARTTLS, CHUNKING and PRDR of its
own, which tests the EHLO rewrite. Every client is one nobody here wrote.
Each test checks the client's view and the backend's record: one message,
received exactly once and intact; never an injected command; never a secret in
the debug log.
"""

import base64
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from conftest import free_port
from helpers import SESSION_END, start_chain, stop_chain

TIMEOUT = 20


class Chain:
    def __init__(self, workdir: Path, port: int, ca: Path):
        self.workdir, self.port, self.ca = workdir, port, ca
        self.log = workdir / "chain.log"

    def session(self, client):
        """Run client(); wait for stunnel's `Connection closed` (or reset) line; return
        (client's result, the backend's received lines, its sent lines, stunnel's log)."""
        before = self.log.read_bytes()
        closed = before.count(SESSION_END)
        result = client()
        deadline = time.monotonic() + TIMEOUT
        while self.log.read_bytes().count(SESSION_END) <= closed:
            assert time.monotonic() < deadline, "the session did not end"
            time.sleep(0.05)
        time.sleep(0.1)  # recordio's last lines
        new = self.log.read_bytes()[len(before) :].decode("latin-1")
        received, sent, log = [], [], []
        for line in new.splitlines():
            pid, _, rest = line.partition(" ")
            if pid.isdigit() and rest[:2] in ("< ", "> "):
                (received if rest[0] == "<" else sent).append(rest[2:].rstrip(" +"))
            elif " LOG" in line[:30]:
                log.append(line)
        return result, received, sent, log


def start_exim_chain(tmp_path_factory, pki, stunnel_bin, makesock_bin, fixcrio_bin, mode):
    workdir = tmp_path_factory.mktemp(f"chain{mode}")
    port = free_port()
    chain = Chain(workdir, port, pki["ca"])
    argv = ["tcpserver", "-H", "-R", "-c", "8", "127.0.0.1", str(port), makesock_bin]
    argv += [stunnel_bin, "-f", "-D", "7", "-p", str(pki["server"]), "-n", mode, "-F", "3"]
    argv += ["-makesock_connect_to", fixcrio_bin, "setuidgid", "Debian-exim"]
    argv += ["recordio", "exim4", "-bs", "-N"]
    return start_chain(argv, chain.log, port), chain


@pytest.fixture(scope="module")
def chains(tmp_path_factory, pki, stunnel_bin, makesock_bin, fixcrio_bin):
    started: dict[tuple[str, str], tuple[subprocess.Popen, Chain]] = {}

    def get(mode: str, fixcrio: str = fixcrio_bin) -> Chain:
        if (mode, fixcrio) not in started:
            started[mode, fixcrio] = start_exim_chain(
                tmp_path_factory, pki, stunnel_bin, makesock_bin, fixcrio, mode
            )
        return started[mode, fixcrio][1]

    yield get
    for server, _ in started.values():
        stop_chain(server)


def run(argv, stdin=b""):
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=TIMEOUT)


def message(marker: str) -> bytes:
    return (
        f"From: a@example.org\r\nTo: root@localhost\r\nSubject: {marker}\r\n\r\n"
        f"body line {marker}\r\n.leading dot {marker}\r\nlast line\r\n"
    ).encode()


def assert_one_message(received, sent, marker):
    """The backend accepted exactly one message, and it holds the marker's lines."""
    assert sum(line.startswith("354") for line in sent) == 1, sent
    assert sum(line.startswith("250 OK id=") for line in sent) == 1, sent
    assert any(marker in line for line in received), received
    start = received.index(next(line for line in received if line.upper() == "DATA"))
    body = received[start + 1 :]
    assert body.index(".") > 0 and body.count(".") == 1, body


def assert_tls_session(received, log, marker):
    assert "STARTTLS" not in [line.upper() for line in received]  # the proxy answers it
    assert "RSET" in received  # the backend's state was reset after TLS
    assert any(
        line.startswith("Received: (stunnel3 STARTTLS proxy) with ESMTPS (TLSv1.")
        for line in received
    )
    assert not any(marker in line for line in log), "message content in the debug log"


SWAKS = ["swaks", "-s", "{server}", "-f", "a@example.org", "-t", "root@localhost"]


def swaks(chain, marker, *extra):
    server = f"127.0.0.1:{chain.port}"
    argv = [arg.format(server=server) for arg in SWAKS]
    return run(argv + ["--body", f"body line {marker}", "--h-Subject", marker, *extra])


def test_swaks_starttls(chains):
    chain = chains("smtp-")
    done, received, sent, log = chain.session(lambda: swaks(chain, "swaks-tls", "--tls"))
    assert done.returncode == 0, done.stdout.decode()[-2000:]
    assert b"250-STARTTLS" in done.stdout and b"CHUNKING" not in done.stdout
    assert_one_message(received, sent, "swaks-tls")
    assert_tls_session(received, log, "swaks-tls")


def test_swaks_plaintext_is_a_faithful_proxy(chains):
    chain = chains("smtp-")
    done, received, sent, log = chain.session(lambda: swaks(chain, "swaks-plain"))
    assert done.returncode == 0, done.stdout.decode()[-2000:]
    assert_one_message(received, sent, "swaks-plain")
    assert "RSET" not in received
    assert not any(line.startswith("Received: (stunnel3") for line in received)


def test_openssl_s_client_starttls(chains):
    chain = chains("smtp-")
    script = b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\n"
    script += b"DATA\r\n" + message("s-client") + b".\r\nQUIT\r\n"
    argv = ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{chain.port}"]
    argv += ["-CAfile", str(chain.ca), "-verify_return_error", "-quiet", "-ign_eof"]
    done, received, sent, log = chain.session(lambda: run(argv, script))
    assert b"250 OK id=" in done.stdout, done.stdout + done.stderr
    assert_one_message(received, sent, "s-client")
    assert_tls_session(received, log, "s-client")


def test_curl_ssl_reqd(chains, tmp_path):
    chain = chains("smtp-")
    (tmp_path / "mail").write_bytes(message("curl"))
    argv = ["curl", "-sS", "--ssl-reqd", "--cacert", str(chain.ca), "--max-time", "15"]
    argv += [f"smtp://127.0.0.1:{chain.port}", "--mail-from", "a@example.org"]
    argv += ["--mail-rcpt", "root@localhost", "-T", str(tmp_path / "mail")]
    done, received, sent, log = chain.session(lambda: run(argv))
    assert done.returncode == 0, done.stderr
    assert_one_message(received, sent, "curl")
    assert_tls_session(received, log, "curl")


def test_msmtp_gnutls(chains, tmp_path):
    chain = chains("smtp-")
    argv = ["msmtp", "-C", "/dev/null", "--host=127.0.0.1", f"--port={chain.port}"]
    argv += ["--tls=on", "--tls-starttls=on", f"--tls-trust-file={chain.ca}", "--auth=off"]
    argv += ["--domain=client.example", "--from=a@example.org", "root@localhost"]
    done, received, sent, log = chain.session(lambda: run(argv, message("msmtp")))
    assert done.returncode == 0, done.stderr
    assert_one_message(received, sent, "msmtp")
    assert_tls_session(received, log, "msmtp")


def test_python_smtplib_and_auth_never_logged(chains):
    chain = chains("smtp-")
    secret = base64.b64encode(b"\0alice\0s3cret-pw").decode()

    def client():
        context = ssl.create_default_context(cafile=str(chain.ca))
        with smtplib.SMTP("127.0.0.1", chain.port, timeout=TIMEOUT) as smtp:
            smtp.starttls(context=context)
            smtp.ehlo("client.example")
            assert "starttls" not in smtp.esmtp_features
            auth = smtp.docmd("AUTH", "PLAIN " + secret)  # exim-light has no AUTH: 503
            smtp.sendmail("a@example.org", ["root@localhost"], message("smtplib"))
            return auth

    auth, received, sent, log = chain.session(client)
    assert auth[0] >= 500
    assert_one_message(received, sent, "smtplib")
    assert_tls_session(received, log, "smtplib")
    assert f"AUTH PLAIN {secret}" in received  # the backend got it ...
    assert not any(secret in line for line in log)  # ... the log never did
    assert any(line.endswith("C: AUTH PLAIN ***") for line in log)


def read_reply(sock) -> bytes:
    data = b""
    while not any(line[3:4] == b" " for line in data.split(b"\r\n")):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def read_to_end(sock) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_starttls_injection_never_reaches_backend(chains):
    chain = chains("smtp-")

    def client():
        with socket.create_connection(("127.0.0.1", chain.port), timeout=TIMEOUT) as sock:
            read_reply(sock)
            sock.sendall(b"EHLO client.example\r\n")
            read_reply(sock)
            sock.sendall(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n")
            return read_reply(sock)

    reply, received, sent, log = chain.session(client)
    assert reply.startswith(b"421 "), reply
    assert not any("evil" in line for line in received)
    assert not any(line.upper().startswith("MAIL") for line in received)


@pytest.mark.parametrize("fixcrio", ["ours", "/usr/bin/fixcrio"])
def test_smuggling_through_fixcrio_gives_one_message(chains, fixcrio_bin, fixcrio):
    chain = chains("smtp-", fixcrio_bin if fixcrio == "ours" else fixcrio)
    smuggled = (
        b"Subject: smuggling\r\n\r\nhello\n.\nMAIL FROM:<x@evil>\r\nRCPT TO:<root@localhost>\r\n"
        b"DATA\r\nSubject: forged\r\n\r\nforged\r\n.\r\n"
    )

    def client():
        with socket.create_connection(("127.0.0.1", chain.port), timeout=TIMEOUT) as sock:
            read_reply(sock)
            replies = []
            for command in (b"EHLO x", b"MAIL FROM:<a@x>", b"RCPT TO:<root@localhost>", b"DATA"):
                sock.sendall(command + b"\r\n")
                replies.append(read_reply(sock))
            sock.sendall(smuggled + b"QUIT\r\n")
            return replies + [read_to_end(sock)]

    replies, received, sent, log = chain.session(client)
    assert replies[-1].startswith(b"250 OK id=") and replies[-1].count(b"\r\n") == 2, replies
    assert replies[-1].split(b"\r\n")[1].startswith(b"221 "), replies
    assert_one_message(received, sent, "smuggling")
    assert "forged" in received  # a line of the one message, never a second one


def test_require_tls_refuses_plaintext_mail(chains):
    chain = chains("smtp")
    done, received, sent, log = chain.session(lambda: swaks(chain, "plain-refused"))
    assert done.returncode != 0
    assert b"530 5.7.0 Must issue a STARTTLS command first" in done.stdout
    assert not any(line.upper().startswith(("MAIL", "RCPT", "DATA")) for line in received)


def test_require_tls_with_starttls(chains):
    chain = chains("smtp")
    done, received, sent, log = chain.session(lambda: swaks(chain, "required-tls", "--tls"))
    assert done.returncode == 0, done.stdout.decode()[-2000:]
    assert_one_message(received, sent, "required-tls")
    assert_tls_session(received, log, "required-tls")


def test_implicit_tls_client_hello_before_the_greeting(chains):
    """Port 465 style: the ClientHello is on the wire long before the greeting (the
    chain starts Python and exim first), so TLS starts at once; no delay is added."""
    chain = chains("smtp-")

    def client():
        context = ssl.create_default_context(cafile=str(chain.ca))
        with smtplib.SMTP_SSL("127.0.0.1", chain.port, context=context, timeout=TIMEOUT) as smtp:
            smtp.ehlo("client.example")
            assert "starttls" not in smtp.esmtp_features
            smtp.sendmail("a@example.org", ["root@localhost"], message("implicit"))

    _, received, sent, log = chain.session(client)
    assert_one_message(received, sent, "implicit")
    assert any("implicit TLS" in line for line in log)
    assert any(
        line.startswith("Received: (stunnel3 STARTTLS proxy) with ESMTPS (TLSv1.")
        for line in received
    )

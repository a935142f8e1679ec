"""A failed handshake tells the client why, and a renegotiation is refused cleanly.

    tcpserver ... makesock stunnel -f -D 7 -p PEM -F 3 -makesock_connect_to cat
    stunnel4 with `accept = PORT`, `exec = /bin/cat` (Debian's stunnel 5, the same pem)

Clients nobody here wrote: `openssl s_client` offering what the server refuses (no
shared cipher, an old protocol version, plaintext on a TLS port), pyOpenSSL and
`gnutls-cli --rehandshake` asking for a TLS 1.2 renegotiation. A client must read
the alert OpenSSL produced, as from Debian's stunnel4, never a bare reset; a
renegotiation gets OpenSSL's refusal (the warning alert no_renegotiation) and our
log says so.
"""

import re
import select
import socket
import subprocess
import time

import pytest
from helpers import TIMEOUT, Service, free_port, start_chain, stop_chain
from OpenSSL import SSL


@pytest.fixture(scope="module")
def ours(tmp_path_factory, pki, stunnel_bin, makesock_bin):
    workdir = tmp_path_factory.mktemp("tls-failures")
    port = free_port()
    argv = ["tcpserver", "-H", "-R", "-c", "8", "127.0.0.1", str(port), makesock_bin]
    argv += [stunnel_bin, "-f", "-D", "7", "-p", str(pki["server"]), "-F", "3"]
    argv += ["-makesock_connect_to", "/bin/cat"]
    log = workdir / "chain.log"
    # The probe closes without a handshake: no `Connection closed` line (3.22 said
    # how a connection ended only once it had one), but the session's last line.
    server = start_chain(argv, log, port, end=b" finished (0 left)")
    yield port, log
    stop_chain(server)


@pytest.fixture(scope="module")
def stunnel4(tmp_path_factory, pki):
    workdir = tmp_path_factory.mktemp("stunnel4")
    port = free_port()
    config = workdir / "stunnel4.conf"
    config.write_text(
        f"foreground = yes\npid =\n[cat]\naccept = 127.0.0.1:{port}\nexec = /bin/cat\n"
        f"cert = {pki['server']}\n"
    )
    with Service(["/usr/bin/stunnel4", str(config)], port, workdir / "stunnel4.log"):
        yield port


def s_client(port: int, *options: str, stdin: bytes = b"") -> str:
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof", *options]
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=TIMEOUT)
    return (done.stdout + done.stderr).decode(errors="replace")


def alert(output: str) -> str | None:
    """The number of the alert the client read, or None (e.g. a reset: errno=104)."""
    found = re.search(r"SSL alert number (\d+)", output)
    return found.group(1) if found else None


# (client options, the alert we must send). stunnel4 sends an alert in each case
# too; for TLS 1.1 Debian's OpenSSL 3.0 (at its SECLEVEL 2) says internal_error (80)
# where ours says protocol_version (70), RFC 8446's word for it.
REFUSED = {
    "no shared cipher": (["-tls1_2", "-cipher", "AES128-SHA"], "40"),  # handshake_failure
    "TLS 1.1": (["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], "70"),  # protocol_version
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_failed_handshake_sends_an_alert_as_stunnel4_does(ours, stunnel4, case):
    options, expected = REFUSED[case]
    assert alert(s_client(stunnel4, *options)) is not None, "stunnel4 sent no alert"
    output = s_client(ours[0], *options)
    assert "errno=104" not in output, output  # no connection reset
    assert alert(output) == expected, output


def test_plaintext_on_the_tls_port_gets_nothing_and_the_session_ends(ours, stunnel4):
    def answer(port):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(b"EHLO client.example\r\n")
            got = b""
            try:
                while chunk := sock.recv(4096):
                    got += chunk
            except ConnectionResetError:  # stunnel4 resets; we close (no alert: not TLS)
                pass
            return got

    assert answer(stunnel4) == b"" == answer(ours[0])
    assert "SSL_accept: wrong version number" in ours[1].read_text()


def renegotiate(port: int) -> str:
    """A pyOpenSSL client: TLS 1.2, one echo, then a renegotiation; what it ended with."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.setblocking(False)
        conn = SSL.Connection(context, sock)
        conn.set_connect_state()

        def settle(step, *args):
            deadline = time.monotonic() + TIMEOUT
            while True:
                try:
                    return step(*args)
                except SSL.WantReadError:
                    assert time.monotonic() < deadline, "the server never answered"
                    select.select([sock], [], [], 1)

        settle(conn.do_handshake)
        conn.send(b"hello\n")
        assert settle(conn.recv, 100) == b"hello\n"
        assert conn.renegotiate()
        try:
            settle(conn.do_handshake)
        except SSL.Error as error:
            return str(error)
        return "renegotiated"


def test_a_renegotiation_is_refused_and_logged(ours):
    port, log = ours
    before = log.read_text()
    assert "no renegotiation" in renegotiate(port)
    deadline = time.monotonic() + TIMEOUT
    while log.read_text().count(" bytes sent to SSL, ") <= before.count(" bytes sent to SSL, "):
        assert time.monotonic() < deadline, "the session did not end"
        time.sleep(0.05)
    new = log.read_text()[len(before) :]
    assert "SSL renegotiation refused" in new, new


def test_gnutls_rehandshake_is_refused_and_logged(ours):
    port, log = ours
    before = log.read_text()
    argv = ["gnutls-cli", "--insecure", "--rehandshake", "--priority", "NORMAL:-VERS-TLS1.3"]
    done = subprocess.run(
        [*argv, "-p", str(port), "127.0.0.1"], input=b"", capture_output=True, timeout=TIMEOUT
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert "No renegotiation is allowed" in output, output
    time.sleep(0.5)
    assert "SSL renegotiation refused" in log.read_text()[len(before) :]

"""Every mode of the engine through real peers: tcpserver + makesock + stunnel.

Peers: openssl s_client, gnutls-cli (a second TLS stack), Python's ssl, and
openssl s_server for client mode. Backends: cat (an echo), sh programs.
"""

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import trustme
from helpers import (  # noqa: F401  (no_leftovers is a fixture)
    TIMEOUT,
    Service,
    environment,
    free_port,
    half_close,
    no_leftovers,
    read_to_eof,
    tcpserver,
    tls_client,
    tls_exchange,
)

pytestmark = pytest.mark.usefixtures("no_leftovers")

MIXED = b"EHLO x\r\nbare lf\nbare cr\r.\r\n\x00\xff\r\r\n" * 50


@pytest.fixture(scope="module")
def stranger(tmp_path_factory):
    """A client certificate from a CA nobody trusts: the "wrong CA" cases."""
    path = tmp_path_factory.mktemp("stranger") / "stranger.pem"
    trustme.CA().issue_cert("stranger.example").private_key_and_cert_chain_pem.write_to_path(
        str(path)
    )
    return str(path)


def chain(tmp_path, stunnel_bin, makesock_bin, args, backend, env=None):
    """The README's chain: tcpserver makesock stunnel ... -makesock_connect_to backend."""
    program = [makesock_bin, stunnel_bin, "-f", "-D", "7", *args, "-makesock_connect_to"]
    return tcpserver(tmp_path, program + backend, env)


def converse(argv: list[str], line: bytes) -> bytes:
    """Run a command-line TLS client: send one line, read until it comes back, close."""
    client = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=environment(),
    )
    timer = threading.Timer(TIMEOUT, client.kill)
    timer.start()
    try:
        client.stdin.write(line)
        client.stdin.flush()
        seen = b""
        while line not in seen and (chunk := client.stdout.read1(4096)):
            seen += chunk
        client.stdin.close()
        seen += client.stdout.read()
        client.wait(TIMEOUT)
    finally:
        timer.cancel()
        client.stdout.close()
    return seen


def test_F3_with_openssl_s_client(tmp_path, stunnel_bin, makesock_bin, pki):
    with chain(
        tmp_path, stunnel_bin, makesock_bin, ["-p", str(pki["server"]), "-F", "3"], ["cat"]
    ) as server:
        out = converse(
            [
                "openssl",
                "s_client",
                "-quiet",
                "-no_ign_eof",
                "-CAfile",
                str(pki["ca"]),
                "-connect",
                f"127.0.0.1:{server.port}",
            ],
            b"hello\r\n",
        )
        assert b"hello\r\n" in out
        log = server.wait_log("Connection closed")
    assert "stunnel connected from 127.0.0.1:" in log
    assert "LOG6[" in log and "Negotiated ciphers: TLS_" in log
    assert "Connection closed: 7 bytes sent to SSL, 7 bytes sent to socket" in log


def test_F3_with_gnutls_cli(tmp_path, stunnel_bin, makesock_bin, pki):
    with chain(
        tmp_path, stunnel_bin, makesock_bin, ["-p", str(pki["server"]), "-F", "3"], ["cat"]
    ) as server:
        out = converse(
            ["gnutls-cli", "--x509cafile", str(pki["ca"]), "--port", str(server.port), "localhost"],
            b"gnutls here\n",
        )
        assert b"gnutls here\n" in out
        server.wait_log("Connection closed")


def test_F3_bytes_are_transparent_with_python_ssl(tmp_path, stunnel_bin, makesock_bin, pki):
    with chain(
        tmp_path, stunnel_bin, makesock_bin, ["-p", str(pki["server"]), "-F", "3"], ["cat"]
    ) as server:
        assert tls_exchange(server.port, MIXED, tls_client(str(pki["ca"]))) == MIXED
        log = server.wait_log("Connection closed")
    n = len(MIXED)
    assert f"Connection closed: {n} bytes sent to SSL, {n} bytes sent to socket" in log


@pytest.mark.parametrize(
    "level, cert, ok",
    [
        (0, None, True),
        (1, None, True),
        (1, "client", True),
        (1, "stranger", False),
        (2, None, False),
        (2, "client", True),
        (2, "stranger", False),
        (3, "client", False),
    ],
)
def test_verify_levels(tmp_path, stunnel_bin, makesock_bin, pki, stranger, level, cert, ok):
    certs = {"client": str(pki["client"]), "stranger": stranger, None: None}
    args = ["-p", str(pki["server"]), "-v", str(level), "-A", str(pki["ca"]), "-F", "3"]
    with chain(tmp_path, stunnel_bin, makesock_bin, args, ["cat"]) as server:
        try:
            echoed = tls_exchange(server.port, b"ping\n", tls_client(cert=certs[cert]))
        except (OSError, ValueError):
            echoed = b""
        # the probe's session and ours: after a failed handshake, 3.22's last line is this
        deadline = time.monotonic() + TIMEOUT
        while server.log().count(" finished (0 left)") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        log = server.log()
    assert (echoed == b"ping\n") is ok, log
    if not ok and cert:
        assert "VERIFY ERROR" in log


def test_l_program_gets_tcpserver_env_and_the_peer_names(tmp_path, stunnel_bin, pki):
    script = 'printf "%s|%s|%s\\n" "$TCPREMOTEIP" "$SSL_CLIENT_DN" "$SSL_CLIENT_I_DN"; cat'
    args = [
        stunnel_bin,
        "-f",
        "-p",
        str(pki["server"]),
        "-v",
        "2",
        "-A",
        str(pki["ca"]),
        "-l",
        "/bin/sh",
        "--",
        "sh",
        "-c",
        script,
    ]
    with tcpserver(tmp_path, args) as server:
        out = tls_exchange(server.port, b"more\n", tls_client(cert=str(pki["client"])))
        server.wait_log("Connection closed")
    first, rest = out.split(b"\n", 1)
    ip, subject, issuer = first.decode().split("|")
    assert ip == "127.0.0.1" and subject.startswith("/O=trustme") and "/OU=" in issuer
    assert rest == b"more\n"


def test_L_program_runs_on_a_pty(tmp_path, stunnel_bin, pki):
    args = [
        stunnel_bin,
        "-f",
        "-p",
        str(pki["server"]),
        "-L",
        "/bin/sh",
        "--",
        "sh",
        "-c",
        "tty; echo done",
    ]
    with tcpserver(tmp_path, args) as server:
        out = tls_exchange(server.port, b"")
        server.wait_log("Connection closed")
    assert out.startswith(b"/dev/pts/") and out.endswith(b"done\r\n")  # the tty's ONLCR


class Upper(threading.Thread):
    """A plaintext TCP service on loopback: answers each connection in upper case.

    It serves connections until closed: tcpserver's start-up probe is one too.
    """

    def __init__(self):
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen: list[tuple[str, bytes]] = []

    def run(self):
        while True:
            try:
                conn, address = self.listener.accept()
            except OSError:
                return  # closed by the test
            with conn:
                try:
                    data = read_to_eof(conn)
                    conn.sendall(data.upper())
                except OSError:
                    continue
                self.seen.append((address[0], data))


def test_r_connects_to_a_local_service_from_I(tmp_path, stunnel_bin, pki):
    backend = Upper()
    backend.start()
    args = [
        stunnel_bin,
        "-f",
        "-D",
        "7",
        "-O",
        "r:SO_KEEPALIVE=1",
        "-O",
        "l:SO_SNDBUF=65536",
        "-p",
        str(pki["server"]),
        "-I",
        "127.0.0.2",
        "-r",
        f"127.0.0.1:{backend.port}",
    ]
    with tcpserver(tmp_path, args) as server:
        assert tls_exchange(server.port, b"shout\r\n") == b"SHOUT\r\n"
        log = server.wait_log("Connection closed: 7 bytes")
    backend.listener.shutdown(socket.SHUT_RDWR)
    backend.listener.close()
    backend.join(TIMEOUT)
    assert ("127.0.0.2", b"shout\r\n") in backend.seen
    assert "SO_KEEPALIVE option set on remote socket" in log  # -O r:, 3.22's words
    assert "SO_SNDBUF option set on local socket" in log  # -O l: (a: is the listening socket)


def test_client_mode_against_openssl_s_server(tmp_path, stunnel_bin, pki):
    port = free_port()
    argv = [
        "openssl",
        "s_server",
        "-quiet",
        "-naccept",
        "2",
        "-rev",
        "-accept",
        str(port),
        "-cert",
        str(pki["server"]),
    ]
    with Service(argv, port, tmp_path / "s_server.log"):
        client = subprocess.run(
            [stunnel_bin, "-c", "-f", "-v", "2", "-A", str(pki["ca"]), "-r", f"127.0.0.1:{port}"],
            input=b"abc\n",
            capture_output=True,
            timeout=TIMEOUT,
            env=environment(),
        )
    assert b"cba" in client.stdout, client.stderr
    assert b"VERIFY OK: depth=0" in client.stderr and client.returncode == 0


def smtp_server_with_starttls(listener, ca_pem: str, transcript: list):
    """A tiny SMTP server: greeting, EHLO, STARTTLS, then echo inside TLS."""
    import ssl

    conn, _ = listener.accept()
    with conn:
        f = conn.makefile("rb")
        conn.sendall(b"220-first line\r\n220 ready\r\n")
        transcript.append(f.readline())
        conn.sendall(b"250-hello\r\n250 STARTTLS\r\n")
        transcript.append(f.readline())
        conn.sendall(b"220 go ahead\r\n")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ca_pem)
        with context.wrap_socket(conn, server_side=True) as tls:
            data = read_to_eof(tls)
            transcript.append(data)
            tls.sendall(b"250 got " + str(len(data)).encode() + b"\r\n")
            tls.unwrap()


def test_client_mode_smtp_negotiation(tmp_path, stunnel_bin, pki):
    listener = socket.create_server(("127.0.0.1", 0))
    transcript: list = []
    server = threading.Thread(
        target=smtp_server_with_starttls,
        args=(listener, str(pki["server"]), transcript),
        daemon=True,
    )
    server.start()
    port = listener.getsockname()[1]
    client = subprocess.run(
        [stunnel_bin, "-c", "-f", "-n", "smtp", "-r", f"127.0.0.1:{port}"],
        input=b"EHLO inside\r\n",
        capture_output=True,
        timeout=TIMEOUT,
        env=environment(),
    )
    server.join(TIMEOUT)
    listener.close()
    assert transcript == [b"EHLO localhost\r\n", b"STARTTLS\r\n", b"EHLO inside\r\n"]
    assert client.stdout == b"220-first line\r\n220 ready\r\n250 got 13\r\n", client.stderr


def run_stunnel(stunnel_bin, *args, **kw):
    return subprocess.run(
        [stunnel_bin, *args],
        capture_output=True,
        timeout=TIMEOUT,
        env=environment(),
        stdin=subprocess.DEVNULL,
        **kw,
    )


def test_setup_errors_exit_1_with_3_22s_words(tmp_path, stunnel_bin, pki):
    missing = tmp_path / "missing.pem"
    done = run_stunnel(stunnel_bin, "-f", "-p", str(missing), "-F", "3")
    assert done.returncode == 1
    assert f"{missing}: No such file or directory (2)".encode() in done.stderr
    mismatch = tmp_path / "mismatch.pem"
    marker = b"-----BEGIN CERTIFICATE"
    client_key = pki["client"].read_bytes().split(marker)[0]
    server_chain = marker + pki["server"].read_bytes().split(marker, 1)[1]
    mismatch.write_bytes(client_key + server_chain)
    done = run_stunnel(stunnel_bin, "-f", "-p", str(mismatch), "-F", "3")
    assert done.returncode == 1 and b"does not match" in done.stderr
    nntp = ["-f", "-p", str(pki["server"]), "-n", "nntp", "-l", "/bin/cat"]
    done = run_stunnel(stunnel_bin, *nntp)  # as 3.22: the connection fails, not the start
    assert done.returncode == 0 and b"Protocol not supported in server mode\n" in done.stderr
    assert b"Protocol negotiations failed" in done.stderr
    done = run_stunnel(stunnel_bin, "-f", "-T", "-p", str(pki["server"]), "-F", "3")
    assert done.returncode == 1 and b"Transparent proxy (-T)" in done.stderr
    assert b"Traceback" not in done.stderr


def test_sigterm_ends_a_session_with_status_3(stunnel_bin, pki):
    sock, peer = socket.socketpair()
    back, back_peer = socket.socketpair()
    with sock, peer, back, back_peer:
        process = subprocess.Popen(
            [stunnel_bin, "-f", "-p", str(pki["server"]), "-F", str(back.fileno())],
            stdin=sock.fileno(),
            stdout=sock.fileno(),
            stderr=subprocess.PIPE,
            pass_fds=(back.fileno(),),
            env=environment(),
        )
        peer.settimeout(TIMEOUT)
        tls = tls_client().wrap_socket(peer)  # the handshake: stunnel is in its loop now
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 3
        assert b"Received signal 15; terminating" in process.stderr.read()
        process.stderr.close()
        tls.close()


JAIL_PROBE = r"""
import sys
from stunnel3 import chroot, stunnel
from stunnel3.engine import service

class NoMoreImports:
    def find_spec(self, name, path=None, target=None):
        raise ImportError(f"imported after the jail: {name}")

real_enter = chroot.enter_jail
def enter_jail(options, ids, log):
    real_enter(options, ids, log)
    sys.meta_path.insert(0, NoMoreImports())
    sys.path[:] = []
chroot.enter_jail = enter_jail
sys.exit(stunnel.main(["stunnel"] + sys.argv[1:]))
"""


def test_nothing_is_imported_after_the_jail(tmp_path, pki, stranger):
    """The jail holds no Python: a session must run on what was imported before.

    Level 3 with a store holding the client's own certificate: one session that
    succeeds (TLS, verify, the -l program), one refused, one broken ClientHello.
    """
    marker = b"-----BEGIN CERTIFICATE"
    client_cert = marker + pki["client"].read_bytes().split(marker)[1]
    store = tmp_path / "store.pem"
    store.write_bytes(pki["ca"].read_bytes() + client_cert)
    args = [
        sys.executable,
        "-c",
        JAIL_PROBE,
        "-f",
        "-D",
        "7",
        "-p",
        str(pki["server"]),
        "-v",
        "3",
        "-A",
        str(store),
        "-l",
        "/bin/sh",
        "--",
        "sh",
        "-c",
        "cat",
    ]
    with tcpserver(tmp_path, args) as server:
        assert tls_exchange(server.port, b"x\n", tls_client(cert=str(pki["client"]))) == b"x\n"
        with contextlib.suppress(OSError):
            tls_exchange(server.port, b"x\n", tls_client(cert=stranger))
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw:
            raw.sendall(b"\x16\x03\x01\x00\x05hello")  # a broken ClientHello: the error path
            half_close(raw)
            with contextlib.suppress(OSError):
                raw.recv(100)  # an alert, then a reset
        log = server.wait_log("unexpected message", timeout=10)
    assert "imported after the jail" not in log and "ImportError" not in log, log
    assert "Connection closed: 2 bytes sent to SSL, 2 bytes sent to socket" in log
    assert "VERIFY ERROR: depth=0" in log


class Identd(threading.Thread):
    """An RFC 1413 server on 127.0.0.3:113 that names `user` for every query.

    The client connects from 127.0.0.3, so the ident query comes here (port 113
    is fixed: we run as root, and no one else uses 127.0.0.3).
    """

    def __init__(self, user: str):
        super().__init__(daemon=True)
        self.user = user
        self.listener = socket.create_server(("127.0.0.3", 113))
        self.queries: list[bytes] = []

    def run(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                query = conn.recv(100)
                self.queries.append(query)
                ports = query.decode().strip()
                conn.sendall(f"{ports} : USERID : UNIX : {self.user}\r\n".encode())


@pytest.mark.parametrize("wanted, ok", [("alice", True), ("bob", False)])
def test_u_ident_check(tmp_path, stunnel_bin, pki, wanted, ok):
    identd = Identd("alice")
    identd.start()
    args = [stunnel_bin, "-f", "-D", "6", "-u", wanted, "-p", str(pki["server"]), "-l", "/bin/cat"]
    with tcpserver(tmp_path, args) as server:
        echoed = b""
        with contextlib.suppress(OSError):
            raw = socket.create_connection(("127.0.0.1", server.port), TIMEOUT, ("127.0.0.3", 0))
            with raw, tls_client().wrap_socket(raw) as conn:
                conn.sendall(b"who\n")
                half_close(conn)
                echoed = read_to_eof(conn)
        log = server.wait_log("IDENT resolved remote user to alice")
    identd.listener.shutdown(socket.SHUT_RDWR)
    identd.listener.close()
    identd.join(TIMEOUT)
    assert (echoed == b"who\n") is ok
    assert ("Connection from 127.0.0.3:" in log and "REFUSED by IDENT" in log) is not ok
    assert identd.queries[-1].endswith(f" , {server.port}\r\n".encode())

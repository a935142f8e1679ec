"""Whole sessions side by side with the real 3.22: inetd mode behind Debian's
tcpserver (-l, -L, -r, -n smtp with swaks and exim4) and daemon mode (-d with
-s/-g, -P, -N and a root-only pem). Each compares what the client got and every
line syslog got (compare.py's masks and named differences)."""

import os
import pwd
import re
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

from oracle.compare import Line, Outcome, differences
from oracle.served import TIMEOUT, Served, free_port, listening


def tls_client() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def echo_once(port: int, payload: bytes, want: int) -> bytes:
    """Send payload over TLS, read `want` bytes back, then close_notify and close."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with tls_client().wrap_socket(raw) as conn:
            conn.sendall(payload)
            got = b""
            while len(got) < want:
                chunk = conn.recv(want - len(got))
                if not chunk:
                    break
                got += chunk
            try:
                conn.unwrap()  # 3.22's transfer loop ends on close_notify
            except (ssl.SSLError, OSError):
                pass
            return got


def read_all(port: int, payload: bytes = b"") -> bytes:
    """Send payload, read until the server's close_notify (or a reset: what came before
    it), then answer with ours."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with tls_client().wrap_socket(raw) as conn:
            conn.sendall(payload)
            got = b""
            try:
                while chunk := conn.recv(4096):
                    got += chunk
                conn.unwrap()
            except (ssl.SSLError, OSError):
                pass
            return got


def inetd_session(pair, args: list[str], client, sessions: int = 1):
    """(client's result, Outcome) for both, in the same order: oracle, ours."""
    results = {}
    for which in ("oracle", "ours"):
        served = Served.inetd(pair, which, args)
        try:
            seen = client(served.port)
            served.sessions_ended(sessions)
            results[which] = (seen, served.outcome())
        finally:
            served.stop()
    return results["oracle"], results["ours"]


def assert_same(oracle: Outcome, ours: Outcome, allow: tuple[str, ...] = ()) -> None:
    found = differences(oracle, ours, allow)
    assert found == [], "\n".join(found)


def test_l_echoes_through_a_tcp_loopback_pair(pair):
    (theirs, oracle), (mine, ours) = inetd_session(
        pair, ["-D", "7", "-l", "/bin/cat"], lambda port: echo_once(port, b"hello\n", 6)
    )
    assert theirs == mine == b"hello\n"
    assert_same(oracle, ours)
    closed = "Connection closed: 6 bytes sent to SSL, 6 bytes sent to socket"
    assert Line(5, closed, "daemon") in ours.log


PEER = "import socket; s = socket.socket(fileno=0); print(s.family.name, s.getpeername()[0])"


def test_the_l_program_sees_a_tcp_peer_at_127_0_0_1(pair):
    """3.22's make_sockets: a TCP connection over loopback, not a Unix socket pair."""
    args = ["-l", "/usr/bin/python3", "--", "python3", "-c", PEER]
    (theirs, oracle), (mine, ours) = inetd_session(pair, args, read_all)
    assert theirs == mine == b"AF_INET 127.0.0.1\n"
    assert_same(oracle, ours)


def test_L_runs_the_program_on_a_pty(pair):
    script = 'read line; echo "got $line"; tty'
    args = ["-D", "7", "-L", "/bin/sh", "--", "sh", "-c", script]
    (theirs, oracle), (mine, ours) = inetd_session(
        pair, args, lambda port: read_all(port, b"hello\n")
    )
    # the pty's echo, the program's line, its terminal (/dev/pts/N, through sandbox.sh's
    # /dev/.real); 3.22's reset after the program's exit may destroy them before the read
    assert re.fullmatch(rb"hello\r\ngot hello\r\n/dev/(\.real/)?pts/\d+\r\n", mine), mine
    assert theirs in (b"", mine)
    assert_same(oracle, ours, allow=("pty EOF",))


class Echo(threading.Thread):
    """A plaintext echo service for -r, on 127.0.0.1; records each peer's address."""

    def __init__(self):
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.peers: list[str] = []

    def run(self) -> None:
        while True:
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.join(TIMEOUT)


def test_r_connects_to_a_remote_service(pair):
    echo = Echo()
    echo.start()
    try:
        args = ["-D", "7", "-r", f"127.0.0.1:{echo.port}", "-I", "127.0.0.1"]
        (theirs, oracle), (mine, ours) = inetd_session(
            pair, args, lambda port: echo_once(port, b"ping\n", 5)
        )
    finally:
        echo.close()
    assert theirs == mine == b"ping\n"
    assert echo.peers == ["127.0.0.1", "127.0.0.1"]
    assert_same(oracle, ours)


def swaks(port: int) -> str:
    done = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{port}", "--tls", "--ehlo", "client.example",
         "--from", "a@example.org", "--to", "postmaster@localhost", "--timeout", "15"],
        capture_output=True, text=True, timeout=TIMEOUT * 2,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def engine(outcome: Outcome) -> list[Line]:
    """The lines of an -n smtp session, byte counts aside (`SMTP engine`)."""
    return [
        Line(line.level, re.sub(r"\d+ bytes", "N bytes", line.text), line.facility)
        for line in outcome.log
    ]


def test_n_smtp_with_swaks_and_exim(pair):
    """3.22's smtp_server and our proxy differ on purpose (the SMTP engine); what the
    client and the server see of each other must not: exim greets a TCP peer."""
    args = ["-D", "6", "-n", "smtp", "-l", "/usr/sbin/exim4", "--", "exim4", "-bs", "-N"]
    (theirs, oracle), (mine, ours) = inetd_session(pair, args, swaks)
    for transcript in (theirs, mine):
        assert "Hello client.example [127.0.0.1]" in transcript  # not a local submission
        assert "<~  250 OK id=" in transcript  # the message, accepted over TLS
    oracle.log, ours.log = engine(oracle), engine(ours)
    assert_same(oracle, ours, allow=("EOF without close_notify",))  # swaks closes so


def test_daemon_with_ids_pid_file_and_a_root_only_pem(pair, tmp_path):
    """-d -s -g: 3.22 read the pem as root, then bound, then dropped to the account;
    -P dir/ names stunnel.<safe -N>.pid; SIGTERM removes it (or says why not)."""
    nobody = pwd.getpwnam("nobody").pw_uid
    facts = {}
    outcomes = {}
    port = free_port()  # the same for both, one after the other, and
    piddir = tmp_path / "pid"  # the same directory
    piddir.mkdir()
    piddir.chmod(0o1777)
    for which in ("oracle", "ours"):
        args = ["-D", "7", "-P", f"{piddir}/", "-N", "smtp-tls", "-s", "nobody", "-g", "nogroup"]
        args += ["-p", "root-only.pem", "-l", "/bin/cat"]
        served = Served.daemon(pair, which, args, port)
        try:
            pid_file = piddir / "stunnel.smtp.tls.pid"
            deadline = time.monotonic() + TIMEOUT
            while not pid_file.exists() or not pid_file.read_text():
                assert time.monotonic() < deadline, served.said()
                time.sleep(0.02)
            pid = int(pid_file.read_text())
            owner = pid_file.stat().st_uid
            uid = _uid_of(pid)
            echoed = echo_once(served.port, b"daemon\n", 7)
            pair.box.syslog.wait_for("finished (0 left)")
            os.kill(pid, 15)
            deadline = time.monotonic() + TIMEOUT
            while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
                assert time.monotonic() < deadline
                time.sleep(0.02)
            pair.box.syslog.wait_for("removing pid file")
            facts[which] = (echoed, owner == nobody, uid == nobody, served.process.wait(TIMEOUT))
            outcomes[which] = served.outcome()
        finally:
            served.stop()
    assert facts["oracle"] == facts["ours"] == (b"daemon\n", True, True, 0)
    assert_same(outcomes["oracle"], outcomes["ours"])


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_ident_without_an_ident_server_refuses(pair):
    """-u: 3.22 asked the client's port 113; nothing answers here, so it refused."""
    (theirs, oracle), (mine, ours) = inetd_session(
        pair, ["-D", "7", "-u", "alice", "-l", "/bin/cat"], lambda port: refused_or(port)
    )
    assert theirs == mine == b""
    assert_same(oracle, ours)
    assert Line(4, "Connection from 127.0.0.1:PORT REFUSED by IDENT", "daemon") in ours.log


def refused_or(port: int) -> bytes:
    try:
        return echo_once(port, b"x\n", 2)
    except (ssl.SSLError, OSError):
        return b""


def client_cert_session(pem: Path | None):
    def client(port: int) -> bytes:
        context = tls_client()
        if pem is not None:
            context.load_cert_chain(pem)
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            try:
                with context.wrap_socket(raw) as conn:
                    conn.sendall(b"cert\n")
                    got = conn.recv(5)
                    conn.unwrap()
                    return got
            except (ssl.SSLError, OSError):
                return b""

    return client


def test_verify_level_2_with_and_without_a_client_certificate(pair, tmp_path):
    pem = tmp_path / "client.pem"
    pem.write_bytes((pair.workdir.template / "stunnel.pem").read_bytes())
    args = ["-D", "7", "-v", "2", "-A", "ca.pem", "-l", "/bin/cat"]
    for certificate, wanted in ((pem, b"cert\n"), (None, b"")):
        (theirs, oracle), (mine, ours) = inetd_session(pair, args, client_cert_session(certificate))
        assert theirs == mine == wanted
        assert_same(oracle, ours)


class ReversingServer:
    """openssl s_server -rev (each line reversed) on a loopback port, for -c -r."""

    def __init__(self, pem: Path, *options: str):
        self.port = free_port()
        self.process = subprocess.Popen(
            ["openssl", "s_server", "-quiet", "-rev", "-accept", f"127.0.0.1:{self.port}",
             "-cert", str(pem), *options],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + TIMEOUT
        while not listening(self.port):
            assert time.monotonic() < deadline
            time.sleep(0.02)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(TIMEOUT)


def test_client_mode_to_a_tls_server(pair):
    """-c -r: the remote side speaks TLS. The server sends its TLS 1.3 session
    tickets with the handshake (-num_tickets 0 turns off the two it would send
    after it): 3.22 reads the client's line and then the TLS side with a blocking
    SSL_read, which waits for application data behind tickets that arrive late,
    a deadlock the next test shows ours does not share."""
    server = ReversingServer(pair.workdir.template / "stunnel.pem", "-num_tickets", "0")
    try:
        outcomes = {}
        for which in ("oracle", "ours"):
            args = ["-f", "-D", "6", "-c", "-r", f"127.0.0.1:{server.port}"]
            outcomes[which] = pair.run(which, args, stdin=b"plain text\n", timeout=TIMEOUT)
    finally:
        server.stop()
    oracle, ours = outcomes["oracle"], outcomes["ours"]
    assert oracle.stdout == ours.stdout == b"txet nialp\n"
    assert_same(oracle, ours)


def test_client_mode_reads_past_late_session_tickets(pair):
    """OpenSSL's s_server sends two tickets after the handshake: ours takes them
    and the reply whenever they come, and ends with the session (3.22 can hang here)."""
    server = ReversingServer(pair.workdir.template / "stunnel.pem")
    try:
        for _ in range(5):
            args = ["-f", "-D", "6", "-c", "-r", f"127.0.0.1:{server.port}"]
            ours = pair.run("ours", args, stdin=b"plain text\n", timeout=TIMEOUT)
            assert (ours.status, ours.stdout) == (0, b"txet nialp\n")
    finally:
        server.stop()


def test_each_terminating_signal_is_said_and_exits_3(pair):
    """3.22's signal_handler took TERM, QUIT, INT and HUP alike."""
    import signal as signals

    port = free_port()
    for number in (signals.SIGTERM, signals.SIGQUIT, signals.SIGINT, signals.SIGHUP):
        outcomes = {}
        for which in ("oracle", "ours"):
            served = Served.daemon(pair, which, ["-f", "-P", "none", "-l", "/bin/cat"], port)
            try:
                os.kill(served.process.pid, number)
                assert served.process.wait(TIMEOUT) == 3
            finally:
                served.stop()
            outcomes[which] = served.stderr_outcome()
        assert Line(3, f"Received signal {number}; terminating") in outcomes["ours"].log
        assert_same(outcomes["oracle"], outcomes["ours"])

"""Daemon mode (-d): concurrent workers, tcpserver's environment, the bound, IPv6,
background with a pid file, SIGTERM."""

import os
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest
from helpers import (  # noqa: F401  (no_leftovers is a fixture)
    TIMEOUT,
    Service,
    environment,
    free_port,
    no_leftovers,
    tls_client,
    tls_exchange,
    wait_port,
)

pytestmark = pytest.mark.usefixtures("no_leftovers")

REPORT = 'echo "$PROTO $TCPREMOTEIP $TCPREMOTEPORT $TCPLOCALPORT ${TCPLOCALHOST-unset}"; cat'


def daemon(tmp_path, stunnel_bin, pki, listen: str, port: int, env=None, host="127.0.0.1"):
    argv = [
        stunnel_bin,
        "-f",
        "-D",
        "7",
        "-d",
        listen,
        "-P",
        "none",
        "-p",
        str(pki["server"]),
        "-l",
        "/bin/sh",
        "--",
        "sh",
        "-c",
        REPORT,
    ]
    return Service(argv, port, tmp_path / "daemon.log", env, host=host)


def test_fifty_concurrent_connections_then_sigterm(tmp_path, stunnel_bin, pki):
    port = free_port()
    with daemon(tmp_path, stunnel_bin, pki, f"127.0.0.1:{port}", port) as server:
        results: dict[int, bytes] = {}

        def one(n: int) -> None:
            results[n] = tls_exchange(port, f"payload {n}\r\n".encode() * 100)

        threads = [threading.Thread(target=one, args=(n,)) for n in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(results) == 50
        for n, out in results.items():
            first, rest = out.split(b"\n", 1)
            proto, ip, remote_port, local_port, host = first.decode().split()
            assert (proto, ip, local_port, host) == ("TCP", "127.0.0.1", str(port), "unset")
            assert int(remote_port) > 0
            assert rest == f"payload {n}\r\n".encode() * 100
        # Each client has its bytes; its worker may still be closing: let all 50 finish.
        deadline = time.monotonic() + TIMEOUT
        while server.log().count("Connection closed:") < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        # SIGTERM to the parent alone: it ends its workers and exits 3
        os.kill(server.process.pid, signal.SIGTERM)
        assert server.process.wait(TIMEOUT) == 3
        log = server.log()
    assert log.count("Connection closed:") == 50  # (wait_port's probe: a reset)
    assert "Received signal 15; terminating" in log


def test_a_connection_over_the_bound_is_refused_as_322_did(tmp_path, stunnel_bin, pki):
    port = free_port()
    env = environment(STUNNEL3_MAX_CLIENTS="2")
    with daemon(tmp_path, stunnel_bin, pki, f"127.0.0.1:{port}", port, env) as server:
        server.wait_log("sh finished (0 left)")  # wait_port's probe has finished
        held = []
        for _ in range(2):
            raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            held.append(tls_client().wrap_socket(raw))
            assert held[-1].recv(100).startswith(b"TCP ")
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            with pytest.raises((ssl.SSLError, OSError)):
                tls_client().wrap_socket(raw).recv(100)
        server.wait_log("Connection rejected: too many clients (>=2)")
        held.pop().close()
        server.wait_log("sh finished (1 left)")
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            with tls_client().wrap_socket(raw) as conn:
                assert conn.recv(100).startswith(b"TCP ")
        for conn in held:
            conn.close()


def test_no_host_listens_on_ipv4_as_322_and_brackets_ask_for_ipv6(tmp_path, stunnel_bin, pki):
    port = free_port()
    with daemon(tmp_path, stunnel_bin, pki, str(port), port) as server:
        v4 = tls_exchange(port, b"four\n", host="127.0.0.1")
        with pytest.raises(OSError):
            socket.create_connection(("::1", port), timeout=TIMEOUT).close()
    assert v4.startswith(b"TCP 127.0.0.1 ") and v4.endswith(b"\nfour\n")
    assert f"sh bound to 0.0.0.0:{port}" in server.log()
    port = free_port(socket.AF_INET6)
    with daemon(tmp_path, stunnel_bin, pki, f"[::]:{port}", port, host="::1"):
        v6 = tls_exchange(port, b"six\n", host="::1")
        v4 = tls_exchange(port, b"four\n", host="127.0.0.1")
    assert v6.startswith(b"TCP6 ::1 ") and v6.endswith(b"\nsix\n")
    assert v4.startswith(b"TCP 127.0.0.1 ") and v4.endswith(b"\nfour\n")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_background_with_pid_file(tmp_path, stunnel_bin, pki):
    port = free_port()
    pid_file, log_file = tmp_path / "stunnel.pid", tmp_path / "stunnel.log"
    started = run_cat_daemon(
        stunnel_bin, pki, "-d", f"127.0.0.1:{port}", "-P", str(pid_file), "-o", str(log_file)
    )
    assert started.returncode == 0, started.stderr
    wait_port(port)
    pid = int(pid_file.read_text())
    try:
        assert _alive(pid)
        assert tls_exchange(port, b"in the background\n") == b"in the background\n"
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + TIMEOUT
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert not pid_file.exists()
    assert "Received signal 15; terminating" in log_file.read_text()


def run_cat_daemon(stunnel_bin, pki, *options) -> subprocess.CompletedProcess:
    """`stunnel OPTIONS -p server.pem -l /bin/cat`, until it exits or goes to the background."""
    return subprocess.run(
        [stunnel_bin, *options, "-p", str(pki["server"]), "-l", "/bin/cat"],
        capture_output=True,
        timeout=TIMEOUT,
        env=environment(),
        stdin=subprocess.DEVNULL,
    )


def test_bind_error_is_exit_1(tmp_path, stunnel_bin, pki):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = run_cat_daemon(stunnel_bin, pki, "-f", "-d", f"127.0.0.1:{port}", "-P", "none")
    assert done.returncode == 1
    assert b"bind: Address already in use (98)" in done.stderr


def test_client_mode_daemon_wraps_plaintext_connections_in_tls(tmp_path, stunnel_bin, pki):
    tls_port, plain_port = free_port(), free_port()
    argv = [
        "openssl",
        "s_server",
        "-quiet",
        "-rev",
        "-accept",
        str(tls_port),
        "-cert",
        str(pki["server"]),
    ]
    with Service(argv, tls_port, tmp_path / "s_server.log"):
        client = [
            stunnel_bin,
            "-c",
            "-f",
            "-d",
            f"127.0.0.1:{plain_port}",
            "-P",
            "none",
            "-v",
            "2",
            "-A",
            str(pki["ca"]),
            "-r",
            f"127.0.0.1:{tls_port}",
        ]
        with Service(client, plain_port, tmp_path / "client.log"):
            with socket.create_connection(("127.0.0.1", plain_port), timeout=TIMEOUT) as plain:
                plain.sendall(b"plain text\n")
                assert plain.recv(100) == b"txet nialp\n"

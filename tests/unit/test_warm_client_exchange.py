"""warm_client's side of the exchange against a stand-in helper (a thread on a socket).

What must hold: the client lets go of its descriptors only once the worker says RUN. A worker
that gave up waiting for GO (the client stalled past its timeout) has ended having run
nothing; the helper then reports X0 where RUN was expected, and hand_over must return None
with every descriptor still open and its signal handlers as they were, so that the direct
path serves the connection.
"""

import os
import signal
import socket
import threading

import pytest

from stunnel3 import warm_client


def fake_helper(path: str, after_go: bytes, seen: list) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(1)

    def serve():
        with listener:
            conn, _ = listener.accept()
            with conn:
                _, fds, _, _ = socket.recv_fds(conn, warm_client.MAX_REQUEST, 300)
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(os.getpid())
                socket.send_fds(conn, [b"READY %d" % os.getpid()], [pidfd])
                os.close(pidfd)
                seen.append(conn.recv(64))
                conn.send(after_go)
                if after_go == warm_client.RUNNING:
                    conn.send(b"X7")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def socket_path(tmp_path, monkeypatch):
    path = str(tmp_path / "warm.sock")
    monkeypatch.setenv(warm_client.SOCKET_ENV, path)
    monkeypatch.delenv(warm_client.SWITCH_ENV, raising=False)
    return path


def in_child(check) -> int:
    """Run check() in a forked child (hand_over closes descriptors: not pytest's); its status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            code = check()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_worker_that_never_ran_leaves_the_connection_to_the_direct_path(socket_path):
    seen: list = []
    thread = fake_helper(socket_path, b"X0", seen)

    def check() -> int:
        keep_r, keep_w = os.pipe()
        handler = signal.getsignal(signal.SIGTERM)
        if warm_client.hand_over(["stunnel", "-V"]) is not None:
            return 1
        os.write(keep_w, b"still ours")  # neither end was closed
        if os.read(keep_r, 64) != b"still ours":
            return 2
        return 0 if signal.getsignal(signal.SIGTERM) is handler else 3

    assert in_child(check) == 0
    thread.join(5)
    assert seen == [warm_client.GO]


def test_after_run_the_worker_owns_the_connection_and_its_status_is_ours(socket_path):
    seen: list = []
    thread = fake_helper(socket_path, warm_client.RUNNING, seen)

    def check() -> int:
        keep_r, _ = os.pipe()
        if warm_client.hand_over(["stunnel", "-V"]) != 7:
            return 1
        try:
            os.fstat(keep_r)
        except OSError:
            return 0  # handed over, then closed: the worker holds it now
        return 2

    assert in_child(check) == 0
    thread.join(5)
    assert seen == [warm_client.GO]

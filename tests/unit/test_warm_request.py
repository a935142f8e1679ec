"""The warm helper's request and the worker's recreation, one process at a time.

The request round-trips (warm_client.encode_request -> warm_worker.decode_request);
anything else is a BadRequest, never another exception; a forked child placed by
place_descriptors holds exactly the descriptors asked for; reset_signals leaves
what a fresh Python has. The processes for real are in tests/e2e/test_warm.py.
"""

import os
import signal
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stunnel3 import warm_client, warm_worker
from stunnel3.warm_worker import BadRequest, decode_request


def request_for(argv: list[str], fds: list[int]) -> bytes:
    return warm_client.encode_request(argv, fds)


def test_a_request_round_trips():
    data = request_for(["stunnel", "-f", "-n", "smtp-", "ä"], [0, 1, 2, 3])
    request = decode_request(data, 5)
    assert request.fds == (0, 1, 2, 3)
    assert request.argv == (b"stunnel", b"-f", b"-n", b"smtp-", "ä".encode())
    assert dict(request.env) == dict(os.environb)
    assert request.uids == os.getresuid() and request.gids == os.getresgid()
    assert sorted(request.groups) == sorted(os.getgroups())
    umask = os.umask(0)
    os.umask(umask)
    assert request.umask == umask
    assert len(request.rlimits) >= 16


def test_the_thin_side_imports_only_c_modules():
    """warm_client is the one import of the handoff path: no socket.py, no enum, no options."""
    code = (
        f"import sys; sys.path[:0] = {sys.path!r}; from stunnel3 import stunnel, warm_client; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('stunnel3', 'enum', "
        "'socket', 'signal', 'dataclasses', 'typing')))))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.split() == ["stunnel3", "stunnel3.stunnel", "stunnel3.warm_client"]


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d[:-1],  # not NUL-terminated
        lambda d: d.replace(warm_client.MAGIC, b"STUNNEL3-WARM/1"),  # the older exchange
        lambda d: d.replace(b"\0argv\0", b"\0argz\0"),
        lambda d: d + b"extra\0",
        lambda d: d.replace(b"\0umask\x001\0", b"\0umask\x002\0"),
        lambda d: d.replace(b"\0fds\x002\x000\x001\0", b"\0fds\x002\x000\x000\0"),  # twice fd 0
        lambda d: d.replace(b"\0argv\x001\0", b"\0argv\x000\0"),
        lambda d: d.replace(b"\0uids\x003\0", b"\0uids\x002\0"),
        lambda d: d.replace(b"\0ignored\x00", b"\0ignored\x0099999999999\0", 1),
    ],
)
def test_each_malformed_request_is_refused(change):
    data = request_for(["stunnel"], [0, 1])
    assert decode_request(data, 3).fds == (0, 1)
    with pytest.raises(BadRequest):
        decode_request(change(data), 3)


def test_the_descriptor_count_must_match():
    data = request_for(["stunnel"], [0, 1])
    for received in (0, 2, 4):
        with pytest.raises(BadRequest):
            decode_request(data, received)


@settings(max_examples=300)
@given(st.binary(max_size=400), st.integers(0, 5))
def test_random_bytes_are_a_bad_request_and_nothing_else(data, received):
    try:
        decode_request(data, received)
    except BadRequest:
        pass


@settings(max_examples=200)
@given(st.data())
def test_a_valid_request_cut_anywhere_is_refused(data):
    whole = request_for(["stunnel", "-x"], [0, 1, 2])
    cut = data.draw(st.integers(0, len(whole) - 1))
    with pytest.raises(BadRequest):
        decode_request(whole[:cut], 4)


def test_check_peer_refuses_another_uid():
    request = decode_request(request_for(["stunnel"], [0]), 2)
    warm_worker.check_peer(request, os.geteuid(), os.getegid(), os.getpid())
    with pytest.raises(BadRequest, match="not the peer's"):
        warm_worker.check_peer(request, os.geteuid() + 1, os.getegid(), os.getpid())
    with pytest.raises(BadRequest, match="cannot see the peer"):
        warm_worker.check_peer(request, os.geteuid(), os.getegid(), 0)


def test_check_peer_refuses_another_openssl_configuration(monkeypatch):
    monkeypatch.setenv("OPENSSL_CONF", "/nonexistent/openssl.cnf")
    request = decode_request(request_for(["stunnel"], [0]), 2)
    monkeypatch.delenv("OPENSSL_CONF")
    with pytest.raises(BadRequest, match="OPENSSL_CONF"):
        warm_worker.check_peer(request, os.geteuid(), os.getegid(), os.getpid())


def in_child(body) -> bytes:
    """Run body() in a forked child; what it wrote to the pipe it gets as its one argument."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            body(write)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read()
    os.waitpid(child, 0)
    return said


def test_place_descriptors_leaves_exactly_the_asked_ones():
    def body(out: int) -> None:
        a, b = os.pipe()
        c = os.open("/dev/null", os.O_RDONLY)
        # a goes to 5, c to 0, b to a's own number: every collision at once
        control, spare = warm_worker.place_descriptors({5: a, 0: c, a: b}, [out, c])
        have = [fd for fd in warm_client.open_descriptors() if fd not in (control, spare)]
        same_pipe = os.fstat(a).st_ino == os.fstat(5).st_ino
        zero, kept = (os.readlink(f"/proc/self/fd/{fd}") for fd in (0, spare))
        os.write(control, repr((have, a, zero, same_pipe, kept, spare > a)).encode())

    have, a, zero, same_pipe, kept, above = eval(in_child(body))  # noqa: S307 - our child's repr
    assert have == sorted({0, 5, a})
    assert zero == "/dev/null" and same_pipe
    assert kept == "/dev/null" and above  # a kept descriptor: moved out of the client's way


def test_reset_signals_is_a_fresh_python():
    def body(out: int) -> None:
        signal.signal(signal.SIGTERM, lambda *a: None)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        warm_worker.reset_signals(frozenset({signal.SIGUSR1}))
        seen = [
            signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
            signal.getsignal(signal.SIGHUP) == signal.SIG_DFL,
            signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN,
            signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN,
            signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        ]
        os.write(out, repr(seen).encode())

    assert in_child(body) == repr([True] * 5).encode()

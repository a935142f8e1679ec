"""fixcrio's pure CR insertion, its pump in a real pipe pair, and unix.py's helpers."""

import errno
import os
import resource
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stunnel3 import fixcrio, unix
from stunnel3.engine.line_ends import add_cr
from stunnel3.support import limits


def reference(data: bytes, after_cr: bool = False) -> bytes:
    """The original's per-byte loop, as slow and as plain as it is."""
    out = bytearray()
    for byte in data:
        if byte == 0x0A and not after_cr:
            out += b"\r"
        out.append(byte)
        after_cr = byte == 0x0D
    return bytes(out)


@pytest.mark.parametrize(
    "data, after_cr, expected, state",
    [
        (b"", False, b"", False),
        (b"", True, b"", True),  # an empty read keeps the state
        (b"\n", False, b"\r\n", False),
        (b"\n", True, b"\n", False),  # the CR came in the previous read
        (b"\r", False, b"\r", True),
        (b"\r\n", False, b"\r\n", False),
        (b"\r\n", True, b"\r\n", False),
        (b"\r\r\n", False, b"\r\r\n", False),
        (b"\n\n", False, b"\r\n\r\n", False),
        (b"\n\n", True, b"\n\r\n", False),
        (b"a\rb\n", False, b"a\rb\r\n", False),  # a lone CR is left alone
        (b"\n\r", True, b"\n\r", True),
        (b"a\r\r", False, b"a\r\r", True),
        (b"\x00\xff\n", False, b"\x00\xff\r\n", False),
    ],
)
def test_add_cr_edges(data, after_cr, expected, state):
    assert add_cr(data, after_cr) == (expected, state)


pieces = st.one_of(
    st.sampled_from([b"\n", b"\r\n", b"\r", b"\r\r", b"\n\n", b"x"]),
    st.binary(max_size=12),
)
streams = st.lists(pieces, max_size=30).map(b"".join)


@settings(max_examples=300)
@given(streams, st.booleans())
def test_add_cr_matches_the_per_byte_loop(data, after_cr):
    fixed, state = add_cr(data, after_cr)
    assert fixed == reference(data, after_cr)
    assert state == (data[-1:] == b"\r" if data else after_cr)


@settings(max_examples=300)
@given(streams, st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_add_cr_carries_state_across_reads(data, cuts):
    """Any split into reads gives the bytes of one read: the CR state carries."""
    bounds = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    out, after_cr = b"", False
    for start, end in zip(bounds, bounds[1:], strict=False):
        fixed, after_cr = add_cr(data[start:end], after_cr)
        out += fixed
    assert out == add_cr(data, False)[0]
    assert b"\n" not in out.replace(b"\r\n", b"")  # no bare LF is left
    assert out.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")  # nothing else changed


def test_pump_both_ways_in_real_pipes():
    """pump() with our fds 0 and 1 standing in: data in, EOF in, data out, EOF out."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    to_prog_r, to_prog_w = os.pipe()
    from_prog_r, from_prog_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the pump runs with these pipes as its 0 and 1
        try:
            os.dup2(stdin_r, 0)
            os.dup2(stdout_w, 1)
            for fd in (stdin_r, stdin_w, stdout_r, stdout_w, to_prog_r, from_prog_w):
                os.close(fd)
            fixcrio.pump(to_prog_w, from_prog_r)
        finally:
            os._exit(0)
    for fd in (stdin_r, stdout_w, to_prog_w, from_prog_r):
        os.close(fd)
    os.write(stdin_w, b"a\r")
    os.write(stdin_w, b"\nb\n")
    os.close(stdin_w)
    got = b""
    while True:  # EOF once the pump closed its end after our EOF
        chunk = os.read(to_prog_r, 100)
        if not chunk:
            break
        got += chunk
    assert got == b"a\r\nb\r\n"
    os.write(from_prog_w, b"x\ny" * 5000)
    os.close(from_prog_w)
    out = b""
    while chunk := os.read(stdout_r, 65536):
        out += chunk
    assert out == b"x\r\ny" * 5000
    assert os.waitpid(pid, 0)[1] == 0
    os.close(to_prog_r)
    os.close(stdout_r)


def test_pump_ends_on_a_write_error():
    """The program closed its stdin: the next write fails and the pump exits 0."""
    stdin_r, stdin_w = os.pipe()
    to_prog_r, to_prog_w = os.pipe()
    from_prog_r, from_prog_w = os.pipe()
    os.close(to_prog_r)
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(stdin_r, 0)
            fixcrio.pump(to_prog_w, from_prog_r)
        finally:
            os._exit(0)
    os.write(stdin_w, b"line\n")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    for fd in (stdin_r, stdin_w, to_prog_w, from_prog_r, from_prog_w):
        os.close(fd)


@pytest.mark.parametrize(
    "name, text",
    [
        ("ENOENT", "file does not exist"),
        ("EACCES", "access denied"),
        ("EPERM", "permission denied"),
        ("ENOTDIR", "not a directory"),
        ("ELOOP", "symbolic link loop"),
        ("ENOEXEC", "exec format error"),
        ("EAGAIN", "temporary failure"),
        ("EISDIR", "is a directory"),
        ("ENOMEM", "out of memory"),
        ("ECONNREFUSED", "connection refused"),
    ],
)
def test_djb_error_texts(name, text):
    assert unix.error_text(getattr(errno, name)) == text


def test_unknown_errno_has_djb_fallback():
    assert unix.error_text(4095) == "unknown error"
    assert unix.error_text(None) == "no error"


def test_die_writes_one_line_and_exits(capfd):
    with pytest.raises(SystemExit) as raised:
        unix.fatal("fixcrio", "run x", OSError(errno.ENOENT, "gone"))
    assert raised.value.code == 111
    assert capfd.readouterr().err == "fixcrio: fatal: unable to run x: file does not exist\n"
    with pytest.raises(SystemExit) as raised:
        unix.usage("makesock", "makesock prog")
    assert raised.value.code == 100
    assert capfd.readouterr().err == "makesock: usage: makesock prog\n"


def test_exec_program_reports_the_pathexec_error_and_keeps_raised_limits(tmp_path, monkeypatch):
    """A failed search gives djb's error; the soft limits Python runs under come back."""
    (tmp_path / "tool").write_text("#!/bin/sh\n")  # not executable
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 16 << 30
    kib = str(min(soft, 16 << 30) // 2048)  # lower than now: prepare_child changes it
    monkeypatch.setenv(limits.ENV, f"{kib}:{kib}:unlimited")
    monkeypatch.setenv("PATH", f"/nonexistent:{tmp_path}")
    watched = (resource.RLIMIT_AS, resource.RLIMIT_DATA)
    before = [resource.getrlimit(r) for r in watched]
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGPIPE, signal.SIGXFSZ)}
    try:
        error = unix.exec_program(["tool"])
        assert error.errno == errno.EACCES  # ENOENT in the first element does not win
        assert [resource.getrlimit(r) for r in watched] == before
        monkeypatch.setenv("PATH", "")  # an empty element is the current directory
        assert unix.exec_program(["no-such-tool-here"]).errno == errno.ENOENT
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

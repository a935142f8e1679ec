"""Our fixcrio against Debian's /usr/bin/fixcrio (ucspi-tcp 0.88), byte for byte.

Each generated case is a byte stream cut into writes and an exit status. It
runs through both binaries around the same program, once per direction:

- input: we write fixcrio's stdin; the program `cat > /dev/fd/N` hands what
  it got to our pipe N, past fixcrio's output direction;
- output: the program `cat /dev/fd/N` copies what we write on pipe N to its
  stdout, through fixcrio's output direction, to us.

Cases are batched, four to a run, to keep the suite fast (each run of our
fixcrio starts a Python): between two cases goes a separator that starts with
a NUL and ends with a LF, so the CR state is the same fresh one at the start
of every case, and the output of a batch is exactly the cases' outputs with
the separator's between them. Every case still goes through both real
binaries.

Writes go in lockstep: after each write we wait (bounded) until the bytes it
must produce have come out, so every write boundary is a read boundary in
both binaries, and a CR at the end of a write tests the state carried across
reads. Compared: all bytes out, and the exit status fixcrio's caller sees.
"""

import os
import select
import subprocess
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stunnel3.engine.line_ends import add_cr

DEBIAN_FIXCRIO = "/usr/bin/fixcrio"
CASES_PER_RUN = 4
EXAMPLES_PER_DIRECTION = 63  # x 4 cases x 2 directions: 504 differential cases
SEPARATOR = b"\x00-- next case --\n"
STEP_TIMEOUT = 5.0

pieces = st.one_of(
    st.sampled_from([b"\n", b"\r\n", b"\r", b"\r\r\n", b"\n\n", b"\r\r", b"x", b"\n\r"]),
    st.binary(max_size=16),
    st.binary(min_size=250, max_size=700),  # longer than one of the original's reads
)
writes = st.lists(st.lists(pieces, max_size=6).map(b"".join), max_size=6)
batches = st.lists(writes, min_size=CASES_PER_RUN, max_size=CASES_PER_RUN)
statuses = st.sampled_from([0, 1, 7, 100, 111])


def read_until(fd: int, got: bytearray, size: int) -> None:
    """Read fd into got until it holds size bytes, EOF, or the step timeout."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while len(got) < size:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        got += chunk


def drain(fd: int, got: bytearray) -> None:
    read_until(fd, got, 1 << 40)


def run_case(fixcrio: str, direction: str, chunks: list[bytes], status: int) -> tuple[bytes, int]:
    """Run one case through one binary; return the bytes that came out and the status."""
    side_r, side_w = os.pipe()
    if direction == "input":
        script = f"cat > /dev/fd/{side_w}; exit {status}"
        proc = subprocess.Popen(
            [fixcrio, "sh", "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            pass_fds=(side_w,),
        )
        os.close(side_w)
        sink, source, feed = proc.stdin, side_r, None
    else:
        script = f"cat /dev/fd/{side_r}; exit {status}"
        proc = subprocess.Popen(
            [fixcrio, "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            pass_fds=(side_r,),
        )
        os.close(side_r)
        sink, source, feed = None, proc.stdout.fileno(), side_w
    got = bytearray()
    sent = b""
    try:
        for chunk in chunks:
            sent += chunk
            if sink is not None:
                sink.write(chunk)
                sink.flush()
            else:
                os.write(feed, chunk)
            read_until(source, got, len(add_cr(sent, False)[0]))
        if sink is not None:
            sink.close()
        else:
            os.close(feed)
            feed = None
        drain(source, got)
        code = proc.wait(timeout=STEP_TIMEOUT)
    finally:
        if feed is not None:
            os.close(feed)
        if direction == "input":
            os.close(side_r)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return bytes(got), code


def check(fixcrio_bin: str, direction: str, chunks: list[bytes], status: int) -> None:
    theirs = run_case(DEBIAN_FIXCRIO, direction, chunks, status)
    ours = run_case(fixcrio_bin, direction, chunks, status)
    assert ours == theirs
    assert theirs == (add_cr(b"".join(chunks), False)[0], status)


def joined(batch: list[list[bytes]]) -> list[bytes]:
    """The writes of a batch: each case's writes, a separator write between cases."""
    out: list[bytes] = []
    for number, case in enumerate(batch):
        if number:
            out.append(SEPARATOR)
        out.extend(case)
    return out


@pytest.mark.parametrize("direction", ["input", "output"])
def test_fixcrio_matches_debian(fixcrio_bin, direction):
    ran = []

    @settings(max_examples=EXAMPLES_PER_DIRECTION)
    @given(batch=batches, status=statuses)
    def run(batch, status):
        check(fixcrio_bin, direction, joined(batch), status)
        ran.extend(batch)

    run()
    assert len(ran) >= EXAMPLES_PER_DIRECTION * CASES_PER_RUN


@pytest.mark.parametrize("direction", ["input", "output"])
def test_a_cr_at_the_end_of_a_write(fixcrio_bin, direction):
    """The boundary that matters most, pinned: CR | LF across two reads."""
    check(fixcrio_bin, direction, [b"a\r", b"\nb\n", b"\r", b"\r", b"\n"], 0)
    check(fixcrio_bin, direction, [], 3)

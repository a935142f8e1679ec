"""Runs: bytes in a dialogue that are not lines, for every layer (line_proxy.py).

Message data after a 354, an IMAP literal, a refused BDAT chunk, the rest of a
line too long to take; from the backend a literal or a POP3 body. A run takes
its bytes off the front of a side's buffer, passes them on or drops them, and
knows its own end; the layer parses lines again after it. Sans-I/O.
"""

from collections.abc import Callable


class Run:
    """Bytes that pass on (or are dropped) unparsed, up to an end only the run knows."""

    def take(self, buffer: bytearray) -> tuple[bytes, bool]:
        """Take this run's bytes off the front of buffer: (what to pass on, ended)."""
        raise NotImplementedError

    def flush(self) -> bytes:
        """At the client's EOF: what the run held back."""
        return b""


class Count(Run):
    """The next n bytes: passed on (a literal) or dropped (a refused BDAT chunk)."""

    def __init__(self, size: int, keep: bool = True):
        self.left = size
        self.keep = keep

    def take(self, buffer: bytearray) -> tuple[bytes, bool]:
        taken = bytes(buffer[: self.left])
        del buffer[: len(taken)]
        self.left -= len(taken)
        return (taken if self.keep else b""), self.left == 0


class RestOfLine(Run):
    """What is left of a line too long to take: dropped up to its LF."""

    def take(self, buffer: bytearray) -> tuple[bytes, bool]:
        end = buffer.find(b"\n")
        del buffer[: end + 1 if end >= 0 else len(buffer)]
        return b"", end >= 0


class Scan(Run):
    """A run that scans whole feeds for its end: feed(data) -> (out, the bytes after
    the end, or None while it goes on)."""

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        raise NotImplementedError

    def take(self, buffer: bytearray) -> tuple[bytes, bool]:
        out, rest = self.feed(bytes(buffer))
        buffer.clear()
        if rest is not None:
            buffer += rest
        return out, rest is not None


class RunSlot:
    """Where one side's current run lives, and what to do at its end."""

    def __init__(self) -> None:
        self.run: Run | None = None
        self._end: Callable[[Run], None] | None = None

    def start(self, run: Run, end: Callable[[Run], None] | None = None) -> None:
        """The side's next bytes are run's; at its end, end(run)."""
        self.run, self._end = run, end

    def step(self, buffer: bytearray, out: Callable[[bytes], None]) -> None:
        """Give the run what the buffer holds: out(what it passes on), then its end."""
        run = self.run
        assert run is not None
        passed, ended = run.take(buffer)
        if passed:
            out(passed)
        if ended:
            end, self.run, self._end = self._end, None, None
            if end is not None:
                end(run)

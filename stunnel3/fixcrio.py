"""fixcrio program [arg ...]: insert the CRs that a line-oriented peer left out.

Byte-exact with ucspi-tcp 0.88's fixcrio (SPEC section 4):

- Two pipes, then fork. The PARENT becomes the program (its pid is the one
  tcpserver or supervise sees, and its exit status is the one they get); the
  CHILD pumps bytes both ways and ignores SIGPIPE.
- In both directions a CR goes in before each LF that does not follow a CR;
  "the last byte was a CR" carries across reads. Nothing is removed. The rule
  is line_ends.add_cr: stunnel's relay applies the same one when makesock
  leaves us out.
- EOF (or an error) reading our stdin closes the program's stdin, and the pump
  goes on draining the program's output. EOF or an error reading the program's
  output, or any write error, ends the pump with exit 0. No idle timeout.

Each direction is in one of three states, as in the original: reading (0),
writing what it read (1), or finished (-1, the input direction only). The poll
set is derived from those states on every pass, and the four steps of a pass
run in the original's order (read stdin, write program, read program, write
stdout), so a write error breaks out before the next read is looked at.

This runs on every SMTP connection: it imports os, select and our three small
modules only (`python3 -X importtime` in docs/fixcrio.md).
"""

import _signal  # the C module: `signal` imports enum, ~9 ms per connection
import os
import select

from stunnel3 import unix
from stunnel3.engine.line_ends import add_cr

PROG = "fixcrio"
USAGE = "fixcrio program [ arg ... ]"

READ_SIZE = 65536
# At most this much goes to our stdout per poll wake-up: fd 1 is shared with
# whoever started us, so it stays blocking, and a write of PIPE_BUF bytes to a
# descriptor that poll called writable does not block (the original wrote at
# most 512 bytes for the same reason).
STDOUT_WRITE_SIZE = select.PIPE_BUF

READING, WRITING, FINISHED = 0, 1, -1


class Direction:
    """One way through the pump: read from source, add CRs, write to sink."""

    def __init__(self, source: int, sink: int, write_size: int) -> None:
        self.source = source
        self.sink = sink
        self.write_size = write_size
        self.state = READING
        self.pending = b""
        self.after_cr = False

    def wanted(self) -> tuple[int, int] | None:
        """The (fd, poll event) this direction waits for, if any."""
        if self.state == READING:
            return self.source, select.POLLIN
        if self.state == WRITING:
            return self.sink, select.POLLOUT
        return None

    def read(self) -> bool:
        """Read once; False on EOF or error."""
        try:
            data = os.read(self.source, READ_SIZE)
        except OSError:
            return False
        if not data:
            return False
        self.pending, self.after_cr = add_cr(data, self.after_cr)
        self.state = WRITING
        return True

    def write(self) -> bool:
        """Write once; False on error (EPIPE included: SIGPIPE is ignored)."""
        try:
            done = os.write(self.sink, self.pending[: self.write_size])
        except BlockingIOError:
            done = 0
        except OSError:
            return False
        self.pending = self.pending[done:]
        if not self.pending:
            self.state = READING
        return True


def pump(to_program: int, from_program: int) -> None:
    """Move bytes until the program's output ends or a write fails (the child's job)."""
    # Only we hold this end of the pipe, so it may be non-blocking: a big
    # write then takes what fits instead of stalling the other direction.
    os.set_blocking(to_program, False)
    inbound = Direction(0, to_program, READ_SIZE * 2)
    outbound = Direction(from_program, 1, STDOUT_WRITE_SIZE)
    while True:
        poller = select.poll()
        waits = [d.wanted() for d in (inbound, outbound)]
        for wait in waits:
            if wait is not None:
                poller.register(*wait)
        ready = {fd for fd, events in poller.poll() if events}
        if waits[0] is not None and waits[0][0] in ready:
            if inbound.state == READING:
                if not inbound.read():
                    # EOF on our stdin: the program sees EOF, its output still flows.
                    inbound.state = FINISHED
                    os.close(to_program)
            elif not inbound.write():
                return
        if waits[1] is not None and waits[1][0] in ready:
            if outbound.state == READING:
                if not outbound.read():
                    return
            elif not outbound.write():
                return


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        unix.usage(PROG, USAGE)
    try:
        to_program = os.pipe()
        from_program = os.pipe()
    except OSError as error:
        unix.fatal(PROG, "create pipe", error)
    try:
        pid = os.fork()
    except OSError as error:
        unix.fatal(PROG, "fork", error)
    if pid == 0:
        try:
            _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
            os.close(to_program[0])
            os.close(from_program[1])
            pump(to_program[1], from_program[0])
        finally:
            os._exit(0)
    os.close(to_program[1])
    os.close(from_program[0])
    try:
        unix.move_fd(to_program[0], 0)
        unix.move_fd(from_program[1], 1)
    except OSError as error:
        unix.fatal(PROG, "move descriptors", error)
    unix.fatal(PROG, "run " + argv[1], unix.exec_program(argv[1:]))
    return unix.FATAL


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv))

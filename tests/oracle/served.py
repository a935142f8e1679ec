"""A program serving connections in the sandbox, for the session comparisons.

`Served.inetd` runs `tcpserver -v ... PROGRAM ARGS` (ucspi-tcp, the users'
front end), `Served.daemon` runs `PROGRAM -d ...` itself; both inside the
sandbox (a private /dev/log, TCP wrappers' files), in a fresh copy of the
working directory, logging to syslog as the users' services do. Nothing probes
the port (a probe would be a session of its own in the log): tcpserver says
when it listens, and a daemon's socket is looked up in /proc/net/tcp.
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from sandbox import Run

from oracle.compare import Outcome, Pair, outcome_of

TIMEOUT = 20
LISTEN = "0A"  # /proc/net/tcp's state of a listening socket


class Served:
    def __init__(
        self, pair: Pair, which: str, argv: list[str], port: int, cwd: Path, env: dict, hide=()
    ):
        self.pair, self.which, self.port, self.cwd = pair, which, port, cwd
        self.errors = cwd / "served.err"
        with self.errors.open("wb") as errors:
            self.process = subprocess.Popen(
                pair.box.command(argv, hide),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=errors,
                stderr=errors,
                start_new_session=True,
            )
        pair.box.syslog.take()

    @classmethod
    def inetd(
        cls, pair: Pair, which: str, args: list[str], env: dict | None = None, hide=(), front=()
    ) -> "Served":
        """tcpserver [front...] PROGRAM args (front: makesock, for the users' chain)."""
        cwd, environment = pair.prepare(which, env)
        port = free_port()
        argv = ["tcpserver", "-v", "-H", "-R", "-l", "localhost", "127.0.0.1", str(port)]
        argv += [*front, pair.programs[which], *args]
        served = cls(pair, which, argv, port, cwd, environment, hide)
        served.wait_said("tcpserver: status: 0/")
        return served

    @classmethod
    def daemon(
        cls, pair: Pair, which: str, args: list[str], port: int, env: dict | None = None
    ) -> "Served":
        cwd, environment = pair.prepare(which, env)
        argv = [pair.programs[which], "-d", f"127.0.0.1:{port}", *args]
        served = cls(pair, which, argv, port, cwd, environment)
        deadline = time.monotonic() + TIMEOUT
        while not listening(port):
            assert time.monotonic() < deadline, served.said()
            time.sleep(0.02)
        return served

    def said(self) -> str:
        return self.errors.read_text(errors="replace")

    def wait_said(self, text: str, count: int = 1) -> None:
        deadline = time.monotonic() + TIMEOUT
        while self.said().count(text) < count:
            assert time.monotonic() < deadline, f"{text!r} never said: {self.said()}"
            time.sleep(0.02)

    def sessions_ended(self, count: int) -> None:
        """tcpserver -v says `end <pid> status <n>` once each stunnel has exited."""
        self.wait_said("tcpserver: end ", count)

    def outcome(self) -> Outcome:
        """What syslog got since the start (tcpserver's own lines are not in it)."""
        lines = self.pair.box.syslog.take()
        return outcome_of(Run(self.process.poll() or 0, b"", "", lines), self.cwd)

    def stderr_outcome(self) -> Outcome:
        """What a -f program said on stderr (its log lines), tcpserver's lines aside."""
        said = "".join(line for line in self.said().splitlines(True) if "tcpserver:" not in line)
        return outcome_of(Run(self.process.poll() or 0, b"", said, []), self.cwd)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(TIMEOUT)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    with open("/proc/net/tcp") as table:
        for row in table.readlines()[1:]:
            fields = row.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == LISTEN:
                return True
    return False

"""A private machine for one program run: its own /dev/log, TCP wrappers rules and resolver.

`Sandbox(dir)` holds the files sandbox.sh mounts over the machine's (in a private
mount namespace, `unshare -m`, so the machine's own /etc and /dev are never
touched) and a real syslog daemon, Debian's rsyslogd, started by the test with
its own configuration and listening on `dir/log.sock`, which is /dev/log inside.
Every line it receives is written with its facility and severity:

    <facility> <severity> <tag> <pid> <text>

so that a test checks what syslog really got (`-D ftp.7` arriving as `ftp`, not
`daemon`). `run()` starts a program in the sandbox and returns what it wrote to
stdout, stderr and syslog; whatever the program left running when it ended (3.22
puts itself in the background where ours refuses a value: `-d -1` is port 65535
to it) is killed then, by pid: for the run's length the test is the subreaper of
every process the program leaves, so none escapes to init.
"""

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SANDBOX_SH = Path(__file__).with_name("sandbox.sh")
HOSTS = "127.0.0.1\tlocalhost\n::1\tip6-localhost\n"
# Nothing answers on 127.0.0.1:53 here: a name that is not in HOSTS fails at once.
RESOLV = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
RSYSLOG_CONF = """\
global(workDirectory="{dir}")
main_queue(queue.type="Direct")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{dir}/log.sock" UseSysTimeStamp="on")
template(name="fields" type="string"
         string="%syslogfacility-text% %syslogseverity-text% %programname% %procid% %msg%\\n")
*.* action(type="omfile" file="{dir}/messages" template="fields")
"""
MARKER_TAG = "sandbox-marker"


@dataclass(frozen=True)
class SyslogLine:
    facility: str  # "daemon", "authpriv", "local3", ...
    severity: str  # "debug", "info", "notice", "warning", "err", ...
    tag: str  # the ident: "stunnel"
    pid: str
    text: str


@dataclass
class Run:
    status: int | str  # the exit status, or "timeout"
    stdout: bytes
    stderr: str
    syslog: list[SyslogLine]


class Syslog:
    """rsyslogd on dir/log.sock, writing dir/messages; lines read since the last mark."""

    def __init__(self, dir: Path):
        self.dir = dir
        self.socket = dir / "log.sock"
        self.messages = dir / "messages"
        conf = dir / "rsyslog.conf"
        conf.write_text(RSYSLOG_CONF.format(dir=dir))
        self._offset = 0
        self._marks = 0
        self._kept: list[SyslogLine] = []  # read by wait_for, not taken yet
        self._daemon = subprocess.Popen(
            ["rsyslogd", "-n", "-f", str(conf), "-i", str(dir / "rsyslogd.pid")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self._daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rsyslogd did not start (status {self._daemon.poll()})")
            time.sleep(0.02)
        self.take()  # rsyslogd's own start-up lines

    def wait_for(self, text: str, timeout: float = 20) -> None:
        """Until a line holding `text` has arrived (the lines stay for take())."""
        deadline = time.monotonic() + timeout
        while not any(text in line.text for line in self._kept):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never reached syslog: {self._kept}")
            self._kept += self._read()
            time.sleep(0.02)

    def take(self) -> list[SyslogLine]:
        """Every line that arrived since the last take(), in order (a marker proves it)."""
        kept, self._kept = self._kept, []
        return kept + self._read()

    def _read(self) -> list[SyslogLine]:
        self._marks += 1
        mark = f"{MARKER_TAG} {self._marks}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(f"<14>{MARKER_TAG}[0]: {mark}".encode(), str(self.socket))
        deadline = time.monotonic() + 10
        text = ""
        while True:
            with contextlib.suppress(FileNotFoundError):  # rsyslogd makes it at the first line
                text = self.messages.read_bytes()[self._offset :].decode(errors="replace")
            end = text.find(f" {mark}\n")
            if end >= 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"syslog marker {mark!r} never arrived")
            time.sleep(0.01)
        body = text[: text.rfind("\n", 0, end) + 1]
        self._offset += len(text[: end + len(mark) + 2].encode())
        lines = []
        for line in body.splitlines():
            facility, severity, tag, pid, message = (line.split(" ", 4) + [""])[:5]
            if tag != MARKER_TAG and tag != "rsyslogd":
                lines.append(SyslogLine(facility, severity, tag, pid, message.removeprefix(" ")))
        return lines

    def stop(self) -> None:
        self._daemon.terminate()
        self._daemon.wait(timeout=10)


class Sandbox:
    """The files sandbox.sh mounts, and the syslog daemon behind /dev/log."""

    def __init__(self, dir: Path):
        self.dir = dir
        dir.mkdir(parents=True, exist_ok=True)
        (dir / "hosts").write_text(HOSTS)
        (dir / "resolv.conf").write_text(RESOLV)
        self.wrappers()
        self.syslog = Syslog(dir)

    def wrappers(self, allow: str = "", deny: str = "") -> None:
        """hosts.allow and hosts.deny as the programs will read them (hosts_access(5))."""
        (self.dir / "hosts.allow").write_text(allow)
        (self.dir / "hosts.deny").write_text(deny)

    def command(self, argv: list[str], hide: tuple[str, ...] = ()) -> list[str]:
        """argv as run inside the sandbox (for Popen, when a test drives the process);
        each file of `hide` looks empty there."""
        setup = ["unshare", "-m", "--propagation", "private"]
        if hide:
            setup += ["env", f"SANDBOX_HIDE={' '.join(hide)}"]
        return setup + ["sh", str(SANDBOX_SH), str(self.dir), *map(str, argv)]

    def run(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        stdin: bytes = b"",
        timeout: float = 20,
        hide: tuple[str, ...] = (),
    ) -> Run:
        self.syslog.take()  # whatever an earlier process left
        before = _children()
        _subreaper(True)
        try:
            done = subprocess.run(
                self.command(argv, hide), input=stdin, capture_output=True, cwd=cwd, env=env,
                timeout=timeout,
            )  # fmt: skip
            status: int | str = done.returncode
            stdout, stderr = done.stdout, done.stderr
        except subprocess.TimeoutExpired as expired:
            status, stdout, stderr = "timeout", expired.stdout or b"", expired.stderr or b""
        finally:
            _end_what_was_left(before)
            _subreaper(False)
        return Run(status, stdout, stderr.decode(errors="replace"), self.syslog.take())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.syslog.stop()


_PR_SET_CHILD_SUBREAPER = 36  # prctl(2)
_libc = ctypes.CDLL(None, use_errno=True)


def _subreaper(on: bool) -> None:
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _children() -> set[int]:
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            found.update(int(pid) for pid in Path(f"/proc/self/task/{task}/children")
                         .read_text().split())  # fmt: skip
    return found


def _end_what_was_left(before: set[int]) -> None:
    """Kill and reap the processes the run left, theirs as they come to us in turn."""
    for _ in range(100):
        left = _children() - before
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def clean_environment(home: Path, **extra: str) -> dict[str, str]:
    """The same small environment for every program a comparison runs."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "STUNNEL3_WARM": "0",  # the direct path: no helper of another test answers
    }
    marker = os.environ.get("STUNNEL3_TEST_MARKER")
    if marker:
        env["STUNNEL3_TEST_MARKER"] = marker
    return {**env, **extra}

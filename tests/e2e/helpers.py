"""Shared process helpers for end-to-end tests: chains under tcpserver, ports, cleanup.

Every process a test starts gets STUNNEL3_TEST_MARKER in its environment, and
every descendant inherits it (tcpserver, makesock, stunnel, the backend), so
`strays()` finds whatever outlived its test by reading /proc/*/environ. Use the
`no_leftovers` fixture (import it into the test module) to assert that nothing
is left behind: no process of ours, no socket or pipe descriptor in pytest.
"""

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

MARKER = f"STUNNEL3_TEST_MARKER=pytest-{os.getpid()}"
TIMEOUT = 20  # seconds any one subprocess may take


def environment(**extra: str) -> dict[str, str]:
    """os.environ plus the marker (and `extra`): give it to every process you start."""
    name, value = MARKER.split("=")
    return {**os.environ, name: value, **extra}


def strays() -> list[str]:
    """`pid cmdline` of every live process carrying our marker (zombies carry none)."""
    found = []
    needle = MARKER.encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                found.append(f"{entry.name} {cmdline.decode(errors='replace')}")
        except OSError:
            continue
    return found


def _open_channels() -> set[str]:
    """Socket and pipe descriptors pytest holds (what a leaky test leaves)."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(("socket:", "pipe:")):
            held.add(f"{fd}->{target}")
    return held


@pytest.fixture
def no_leftovers():
    before = _open_channels()
    yield
    deadline = time.monotonic() + 5
    while strays() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = strays()
    for line in left:  # clean up for the next test, then fail this one
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split()[0]), signal.SIGKILL)
    assert not left, f"processes left behind: {left}"
    leaked = _open_channels() - before
    assert not leaked, f"descriptors left open: {leaked}"


def free_port(family: int = socket.AF_INET) -> int:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Return once something accepts on host:port; fail the test after `timeout`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            if probe.connect_ex((host, port)) == 0:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on {host}:{port} after {timeout}s")
        time.sleep(0.02)


class Service:
    """A long-running process (tcpserver chain, stunnel -d) in its own process group."""

    def __init__(
        self,
        argv: list[str],
        port: int,
        log: Path,
        env: dict | None = None,
        host: str = "127.0.0.1",
    ):
        self.port = port
        self.log_path = log
        self._log = open(log, "wb")
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env or environment(),
            start_new_session=True,
        )
        try:
            wait_port(port, host)
        except AssertionError:
            self.stop()
            raise AssertionError(f"{argv[0]} did not start: {self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never logged; log:\n{self.log()}")
            time.sleep(0.02)
        return self.log()

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Signal the whole group, wait (bounded); the leader's exit status."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)
        try:
            status = self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            status = self.process.wait(TIMEOUT)
        self._log.close()
        return status

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.stop()
        elif not self._log.closed:
            self._log.close()


def tcpserver(tmp_path: Path, program: list[str], env: dict | None = None) -> Service:
    """`tcpserver -R -H 127.0.0.1 <port> program...` (a qmail-like front end)."""
    port = free_port()
    argv = ["tcpserver", "-R", "-H", "-l", "localhost", "-c", "60", "127.0.0.1", str(port)]
    return Service(argv + program, port, tmp_path / f"tcpserver-{port}.log", env)


def tls_client(verify_ca: str | None = None, cert: str | None = None) -> ssl.SSLContext:
    """Python's ssl as the peer: no hostname check; verify against verify_ca if given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    if verify_ca:
        context.load_verify_locations(verify_ca)
    else:
        context.verify_mode = ssl.CERT_NONE
    if cert:
        context.load_cert_chain(cert)
    return context


def half_close(conn: socket.socket) -> None:
    """TCP FIN without close_notify (Python's ssl cannot send one and keep reading)."""
    with socket.socket(fileno=os.dup(conn.fileno())) as twin:
        twin.shutdown(socket.SHUT_WR)


def read_to_eof(conn: socket.socket) -> bytes:
    received = bytearray()
    while True:
        try:
            chunk = conn.recv(65536)
        except ssl.SSLZeroReturnError:
            break
        if not chunk:
            break
        received += chunk
    return bytes(received)


def tls_exchange(
    port: int, payload: bytes, context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> bytes:
    """Connect, send payload, half-close, read everything back until the server closes."""
    context = context or tls_client()
    with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw) as conn:
            conn.sendall(payload)
            half_close(conn)
            return read_to_eof(conn)


@pytest.fixture(scope="module")
def accounts_lock():
    """One module at a time, across pytest runs, makes and removes `stunnel` and `qmaild`.

    Several people may run the suite at once on one machine, from one checkout or from
    several: without this, one run would remove the accounts another run's chain is
    using. A module that makes those accounts imports this fixture and says
    `pytestmark = pytest.mark.usefixtures(...)`.
    """
    # The lock is on the accounts file itself, opened to read: one lock for every checkout
    # on the machine (a worktree's suite and another's), and no file of ours left behind.
    # useradd and userdel take their own lock (lckpwdf), which an flock does not touch.
    fd = os.open("/etc/passwd", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the holder's module ends within a minute
        yield
    finally:
        os.close(fd)


# stunnel's last line of a session: `Connection closed/reset: N bytes sent to SSL, ...`
SESSION_END = b" bytes sent to SSL, "
# ... or, in plain TLS mode, of a connection that never sent a handshake (3.22 said only that)
NO_HANDSHAKE = b"SSL_accept: "


def start_chain(
    argv: list[str], log: Path, port: int, env: dict | None = None, end: bytes = SESSION_END
):
    """Start the tcpserver chain `argv` (listening on `port`, all output to `log`);
    return its Popen once one probe connection's whole session has ended (its log
    has `end`), so that none overlaps a test's. A chain that does not get there is
    stopped."""
    with log.open("wb") as out:
        server = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, env=env
        )
    deadline = time.monotonic() + 10
    try:
        while True:
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        while end not in (said := log.read_bytes()) and not (
            end == SESSION_END and NO_HANDSHAKE in said
        ):
            assert time.monotonic() < deadline + TIMEOUT, "the probe's session did not end"
            time.sleep(0.05)
    except BaseException:
        stop_chain(server)
        raise
    return server


def stop_chain(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=TIMEOUT)


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry))
    return found


@contextlib.contextmanager
def install_on_a_closed_python(tmp_path: Path, fixcrio: str):
    """A copy of our fixcrio front where every account may run it, and beside it the
    stunnel3-python an installer would write for a Python in a directory closed to all but
    root (a venv of a Python under /root): yields (that directory, that Python)."""
    hidden = tmp_path / "root-only"  # pytest's own directories are 0700
    hidden.mkdir(mode=0o700)
    python = hidden / "python3"
    python.symlink_to(os.path.realpath("/proc/self/exe"))
    install = Path(tempfile.mkdtemp(prefix="stunnel3-install-", dir="/tmp"))
    try:
        install.chmod(0o755)
        shutil.copy(fixcrio, install / "fixcrio")
        (install / "stunnel3-python").write_text(f"#!{python}\n")
        (install / "stunnel3-python").chmod(0o644)
        yield install, python
    finally:
        shutil.rmtree(install)

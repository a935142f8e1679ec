"""The servers under test, each started the way its users run it, and the process bookkeeping
that lets us charge them their CPU and memory.

Every server is a process tree we start in a new session. This process is made a child
subreaper, so a process that is orphaned inside the tree (fixcrio's pump, a session still open
when tcpserver is stopped) is reaped by us: when a server has been stopped and every process of
it reaped, getrusage(RUSAGE_CHILDREN) has grown by exactly the CPU the whole tree used.
"""

import ctypes
import os
import resource
import signal
import socket
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PR_SET_CHILD_SUBREAPER = 36
# -l: no DNS lookup of the local name per connection (a slow resolver serialises tcpserver:
# about 60 connections/s at most on a machine whose nameserver does not answer).
TCPSERVER = ["tcpserver", "-R", "-H", "-l", "localhost", "-c", "200", "-b", "128", "127.0.0.1"]


def scripts_dir() -> Path:
    return Path(sysconfig.get_path("scripts"))


@dataclass(frozen=True)
class Setup:
    """What every server of one run shares: a work directory, a certificate, the backends."""

    workdir: Path
    pem: Path  # key + certificate, world-readable (it is a throwaway)
    bulk_bytes: int
    account: str | None = None  # the jail variant's `setuidgid` account, when there is one

    def backend(self, mode: str) -> str:
        return str(self.workdir / f"backend-{mode}.sh")


def write_backends(setup: Setup) -> None:
    """One script per mode, so that every server runs it the same way (stunnel4's execArgs
    cannot quote, so no `sh -c '...'`)."""
    smtp = (HERE / "smtp-backend.sh").read_text()
    scripts = {
        "smtp": smtp,
        # Upload: read exactly the bytes, then answer; no half-close needed.
        "upload": f"#!/bin/sh\nhead -c {setup.bulk_bytes} >/dev/null && echo done\n",
        "download": f"#!/bin/sh\nexec head -c {setup.bulk_bytes} /dev/zero\n",
    }
    for mode, text in scripts.items():
        path = Path(setup.backend(mode))
        path.write_text(text)
        path.chmod(0o755)


@dataclass(frozen=True)
class Server:
    """name: short key; label: for people; command(setup, port, mode) -> argv; env(setup): its
    extra environment. Every server runs in setup.workdir (the jail's parent)."""

    name: str
    label: str

    def prefix(self) -> list[str]:
        """What runs above tcpserver: the README's run script starts with `softlimit -m
        5000000` (our fronts raise their own soft limits, and give them back to PROG2)."""
        return ["softlimit", "-m", "5000000"] if self.name in README_LINE else []

    def env(self, setup: Setup) -> dict[str, str]:
        if self.name.startswith("stunnel3-warm"):
            return {}  # as stunnel3-setup makes it: the helper on ./warm, the fronts' default
        if self.name.startswith("stunnel3"):
            return {"STUNNEL3_WARM": "0"}  # never a helper someone runs on this machine
        return {}

    def command(self, setup: Setup, port: int, mode: str) -> list[str]:
        backend = setup.backend(mode)
        listen = [*TCPSERVER, str(port)]
        if self.name == "stunnel4":
            conf = setup.workdir / f"stunnel4-{mode}.conf"
            protocol = "protocol = smtp\n" if mode == "smtp" else ""
            conf.write_text(
                f"foreground = yes\ndebug = 3\ncert = {setup.pem}\n{protocol}"
                f"exec = {backend}\nexecArgs = backend\n"
            )
            return [*listen, "/usr/bin/stunnel4", str(conf)]
        if self.name == "tlswrapper":
            if mode == "smtp":
                return [
                    *listen,
                    "tlswrapper",
                    "-n",
                    "-f",
                    str(setup.pem),
                    "tlswrapper-smtp",
                    backend,
                ]
            return [*listen, "tlswrapper", "-f", str(setup.pem), backend]
        stunnel = str(scripts_dir() / "stunnel")
        makesock = str(scripts_dir() / "makesock")
        fixcrio = str(scripts_dir() / "fixcrio")
        smtp = ["-n", "smtp-"] if mode == "smtp" else []
        after = [fixcrio, backend] if mode == "smtp" else [backend]
        chain = [makesock, stunnel, "-p", str(setup.pem), *smtp, "-f", "-F", "3",
                 "-makesock_connect_to", *after]  # fmt: skip
        if self.name == "stunnel3":
            return [*listen, *chain]
        if self.name == "stunnel3-warm":
            # The helper starts first, in the server's own session: its CPU and memory are
            # charged to this server, and stopping the server stops it.
            helper = str(scripts_dir() / "stunnel3-warm")
            return [str(HERE / "warm-chain.sh"), helper, *listen, *chain]
        if self.name in ("stunnel3-jail", "stunnel3-warm-jail"):
            # The README's whole set: jail, ids, seed, and `setuidgid qmaild` before fixcrio
            # when the run could make such an account (our fixcrio must be reachable by it).
            jail = ["-/", "ssl", "-s", "65534", "-g", "65534", "-i", "-R", "seed"]
            drop = ["setuidgid", setup.account] if setup.account and mode == "smtp" else []
            users = [*listen, makesock, stunnel, *jail, "-p", "stunnel.pem", *smtp, "-f", "-F",
                     "3", "-makesock_connect_to", *drop, *after]  # fmt: skip
            if self.name == "stunnel3-jail":
                return users
            helper = str(scripts_dir() / "stunnel3-warm")
            return [str(HERE / "warm-chain.sh"), helper, *users]
        if self.name == "stunnel3-daemon":
            return [stunnel, "-d", f"127.0.0.1:{port}", "-p", str(setup.pem), *smtp, "-f",
                    "-l", backend]  # fmt: skip
        raise ValueError(self.name)


README_LINE = ("stunnel3-jail", "stunnel3-warm-jail")  # the README's whole run-script line
SERVERS = [
    Server("stunnel4", "Debian stunnel4 (stunnel 5, inetd under tcpserver)"),
    Server("tlswrapper", "tlswrapper + tlswrapper-smtp"),
    Server("stunnel3", "stunnel3 users' chain (makesock, -n smtp- -F 3, fixcrio)"),
    Server("stunnel3-warm", "the same chain with stunnel3-warm running (its CPU counted)"),
    Server("stunnel3-jail", "stunnel3 users' chain with -/ ssl -s -g -i -R seed (+ setuidgid)"),
    Server(
        "stunnel3-warm-jail", "the README's whole run script (the jail line) with stunnel3-warm"
    ),
    Server("stunnel3-daemon", "stunnel3 daemon mode (-d, -l backend)"),
]


def make_jail(setup: Setup) -> None:
    """The README's ssl/ directory: root-owned, group 65534 may read the pem and the seed."""
    jail = setup.workdir / "ssl"
    jail.mkdir(exist_ok=True)
    (jail / "stunnel.pem").write_bytes(setup.pem.read_bytes())
    (jail / "seed").write_bytes(os.urandom(1024))
    for path in (jail, jail / "stunnel.pem", jail / "seed"):
        os.chown(path, 0, 65534)
        path.chmod(0o750 if path.is_dir() else 0o660)


class Reaper:
    """Reaps every child and orphan of this process in the background, so that a long run
    leaves no zombies (pid_max can be as small as 32768)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        self.children = 0
        self.dead: set[int] = set()
        self.stopping = False
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        while not self.stopping:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children = 0
                time.sleep(0.02)
                continue
            self.children = 1
            if pid:
                self.dead.add(pid)
            else:
                time.sleep(0.01)

    def settle(self, timeout: float) -> bool:
        """True once this process has no child left at all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return True
            time.sleep(0.02)
        return False


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def listening(port: int, sid: int) -> bool:
    """Whether a process of session sid listens on 127.0.0.1:port. Read from /proc so that
    checking does not start a session (which would be charged to the server), and matched by
    socket inode so that someone else's listener on the same port is never taken for ours."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        inodes = {
            f"socket:[{fields[9]}]"
            for fields in (line.split() for line in table.readlines()[1:])
            if fields[1] == want and fields[3] == "0A"
        }
    for pid in session_members(sid) if inodes else ():
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
                   for fd in os.listdir(f"/proc/{pid}/fd")):  # fmt: skip
                return True
        except OSError:
            pass
    return False


def free_port() -> int:
    """A port the kernel has just handed out and taken back: not one another test holds."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Running:
    """One server process tree, started in its own session, its output in a log file."""

    def __init__(self, argv: list[str], log: Path, cwd: Path, env: dict[str, str]) -> None:
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.chdir(cwd)  # posix_spawn has no chdir; `-/ ssl` is relative to the service directory
        try:
            self.pid = os.posix_spawnp(
                argv[0],
                argv,
                {**os.environ, **env},
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, out, 2),
                    *((os.POSIX_SPAWN_CLOSE, fd) for fd in inherited()),
                ],
                setsid=True,
            )
        finally:
            os.close(out)
        self.cwd = cwd

    def wait_listening(self, port: int, reaper: Reaper, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if listening(port, self.pid):
                return True
            if self.pid in reaper.dead:
                return False
            time.sleep(0.01)
        return False

    def stop(self, reaper: Reaper) -> None:
        """SIGTERM to the whole session, then SIGKILL to whatever is left; wait until all of it
        has been reaped, so that its CPU time has reached RUSAGE_CHILDREN."""
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for pid in session_members(self.pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if reaper.settle(grace):
                return
        raise RuntimeError(f"server {self.pid} left processes behind")


def inherited() -> list[int]:
    """Descriptors above 2 that this process got from its caller and would pass on (the
    lock files of a wrapper's flock(1), say): tlswrapper refuses to start with fd 5 open."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if int(name) > 2 and os.get_inheritable(int(name)):
                found.append(int(name))
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return found


def proc_stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    return text[text.rindex(")") + 2 :].split()  # fields from `state` on


def session_members(sid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(proc_stat(int(entry))[3]) == sid:
                    members.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return members


@dataclass
class Memory:
    processes: float  # a count, or per session
    rss_kib: int  # sum of VmHWM (peak RSS)
    pss_kib: int


def session_memory(sid: int, backends: tuple[str, ...]) -> Memory:
    """The processes of a server's session but its leader (tcpserver or the daemon) and the
    backends (`sh BACKEND`, `head`): what each connection adds. Our sh fronts (a dash
    running bin/makesock, waiting for a warm worker) count."""
    total = Memory(0, 0, 0)
    for pid in session_members(sid):
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            # A backend: `sh BACKEND` (its #! line run by the kernel), or head.
            if (
                pid == sid
                or words[0].endswith(b"head")
                or any(word.decode(errors="replace") in backends for word in words[:2])
            ):
                continue
            status = Path(f"/proc/{pid}/status").read_text()
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total.processes += 1
        total.rss_kib += kib(status, "VmHWM:")
        total.pss_kib += kib(rollup, "Pss:")
    return total


def kib(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0

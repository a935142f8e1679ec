"""The warm helper's side of a handoff: who is asking, what it is, and becoming it.

A front (bin/, makesock or stunnel, a root `sh` under tcpserver) announces
`<pid> <reply fd>` to the helper (through its one child, the watcher) (helper.py,
docs/warm.md). Here:

- `identify`: is that process waiting for us? uid 0 (the helper's own uid)
  for all four ids, and one child, the watcher; if not, it is refused without
  a word to it (`Refused.answer` false): it may be anyone's process. Then its
  script (/proc/PID/cmdline, from its cwd) must be stunnel3's front for
  makesock or stunnel on the helper's own Python (another installation's is
  answered "N").
- `take`: everything Python would have had after the front's exec: the
  descriptors that exec would keep (not close-on-exec; not the reply pipe),
  taken with pidfd_getfd(2); argv, environment, cwd, umask, every limit,
  ignored signals, signal mask, ids and groups from /proc and prlimit(2). It
  is refused (`answer` true: the front runs the direct path) when the front
  lives in another world than the helper (namespaces, root, fewer
  capabilities, no_new_privs or seccomp, another OPENSSL_CONF: OpenSSL read
  the helper's when it was loaded) or has hard limits under the memory floor.
  (dash cannot close a descriptor above 9: the front keeps those open until
  the session ends, as the direct path's own process would.)
- `become`, in the forked worker, in this order: signal dispositions reset to
  a fresh Python's; cwd; the descriptors at their numbers and nothing else
  (but the reply pipe and the helper's log, moved away, close-on-exec);
  umask; environment (with STUNNEL3_RLIMITS, as the front would have set it;
  then TZ, LC_CTYPE); gids and groups; every limit, the soft AS, DATA and
  STACK ones raised as the front raises them; the signal mask; stdio.
A front's state is read only while its pidfd says it is alive, and the pidfd
is checked again after: a pid cannot be reused while its process exists, so
what was read belongs to that process.
"""

import _locale
import _signal  # the C module (see reset_signals)
import ctypes
import fcntl
import io
import os
import resource
import select
import signal
import stat
import sys
import time

from stunnel3.support import fronts

PROGRAMS = (b"makesock", b"stunnel")
DEFAULT_FLOOR = 100_000_000  # bin/'s STUNNEL3_MEMORY_FLOOR
STACK_FLOOR = 8 * 1024 * 1024
_SYS_PIDFD_GETFD = 438  # x86_64, arm64 and the other unified tables alike
_STATUS_KEYS = ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp")
# OpenSSL reads these once, when it is loaded: in the helper, at its start.
_OPENSSL_AT_LOAD = (b"OPENSSL_CONF", b"OPENSSL_MODULES", b"OPENSSL_ENGINES", b"OPENSSL_ia32cap")
_MEMORY = {"AS": resource.RLIMIT_AS, "DATA": resource.RLIMIT_DATA, "STACK": resource.RLIMIT_STACK}
_LIMITS = sorted({getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")})
_kept: list = []  # the helper's own stdio objects: never collected, never closing 0-2
_libc = ctypes.CDLL(None, use_errno=True)


class Refused(Exception):
    """Not served; the text is for the helper's log. answer: tell the front (it is ours)."""

    def __init__(self, text: str, answer: bool = True, front: "Front | None" = None):
        super().__init__(text)
        self.answer = answer
        self.front = front  # set by identify when the front is to be answered


class Front:
    """One waiting front: its pidfd, its watcher's, and (after take) what it is."""

    def __init__(self, pid: int, pidfd: int, watcher: int, reply: int, prog: bytes, argv: list):
        self.pid, self.pidfd, self.watcher, self.reply = pid, pidfd, watcher, reply
        self.prog, self.argv = prog, argv  # argv: main()'s, the program name first
        self.fds: dict[int, int] = {}  # the front's number: our copy
        self.cwd = -1
        self.env: list[tuple[bytes, bytes]] = []
        self.umask = 0o22
        self.limits: dict[int, tuple[int, int]] = {}
        self.ignored: set[int] = set()
        self.blocked: set[int] = set()
        self.gids: tuple[int, ...] = ()
        self.groups: list[int] = []
        self.status: dict[str, str] = {}  # /proc/PID/status, as identify read it

    def close(self) -> None:
        """Our copies of its descriptors and its pidfds (the worker keeps its own)."""
        for fd in [*self.fds.values(), self.cwd, self.pidfd, self.watcher]:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fds, self.cwd, self.pidfd, self.watcher = {}, -1, -1, -1


def exited(pidfd: int) -> bool:
    """Whether the process behind pidfd has ended (a pidfd polls readable then)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def identify(pid: int, reply: int, python: str) -> Front:
    """The announcing process, if it is one of our fronts on this Python, waiting."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        raise Refused(f"pid {pid} is gone", answer=False) from None
    try:
        status = _status(pid)
        if set(status["Uid"].split()) != {str(os.geteuid())}:
            raise Refused(f"pid {pid} is not uid {os.geteuid()}", answer=False)
        children = _read(f"/proc/{pid}/task/{pid}/children").split()
        if len(children) != 1:  # the watcher, and only it
            raise Refused(f"pid {pid} has {len(children)} children, not a watcher", answer=False)
        watcher = int(children[0])
        watcher_fd = os.pidfd_open(watcher)
        if _read(f"/proc/{watcher}/stat").rpartition(b")")[2].split()[1] != b"%d" % pid:
            os.close(watcher_fd)
            raise Refused(f"pid {watcher} is not a child of {pid}", answer=False)
        words = _read(f"/proc/{pid}/cmdline").split(b"\0")[:-1]
        cwd = os.readlink(f"/proc/{pid}/cwd").encode()
        script = os.path.join(cwd, words[1])
        environ = _environment(pid)
        if exited(pidfd):
            os.close(watcher_fd)
            raise Refused(f"pid {pid} is gone", answer=False)
    except Refused:
        os.close(pidfd)
        raise
    except (OSError, IndexError):
        os.close(pidfd)
        raise Refused(f"pid {pid} cannot be read", answer=False) from None
    prog = front_program(script, dict(environ), python, cwd)
    front = Front(pid, pidfd, watcher_fd, reply, prog or b"", [prog or b"", *words[2:]])
    front.env = environ
    front.status = status  # read while the pidfd showed it alive: take() uses it too
    if prog not in PROGRAMS:  # another installation's, or another Python: it waits, answer it
        raise Refused(f"pid {pid} is not a front of this installation ({script!r})", front=front)
    return front


def front_program(script: bytes, environ: dict, python: str, cwd: bytes = b"") -> bytes | None:
    """The program our bin/ front at script runs, if it would start this very Python
    (fronts.py: the front's own rule; a relative interpreter is the front's, from cwd).

    Found once per front file and stunnel3-python beside it (by their inodes and
    mtimes), interpreter setting and Python: the helper answers every connection, and
    this reads two files and resolves two paths. A front reached through a link is read
    every time (its stunnel3-python may be beside the file it leads to)."""
    try:
        info = os.lstat(script)
    except OSError:
        return None
    if stat.S_ISLNK(info.st_mode):
        return _front_program(script, environ, python, cwd)
    try:
        record: os.stat_result | None = os.stat(os.path.join(os.path.dirname(script),
                                                             fronts.RECORD))  # fmt: skip
    except OSError:
        record = None
    key = (script, info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size,
           record and (record.st_ino, record.st_mtime_ns, record.st_size),
           environ.get(fronts.PYTHON_ENV), cwd, python)  # fmt: skip
    if key not in _fronts_seen:
        if len(_fronts_seen) > 64:
            _fronts_seen.clear()
        _fronts_seen[key] = _front_program(script, environ, python, cwd)
    return _fronts_seen[key]


_fronts_seen: dict[tuple, bytes | None] = {}


def _front_program(script: bytes, environ: dict, python: str, cwd: bytes) -> bytes | None:
    prog = fronts.program(script)
    ours = fronts.python(script, environ, cwd) if prog else None
    if ours is None:
        return None
    try:
        same = fronts.interpreter(os.fsdecode(ours)) == fronts.interpreter(python)
    except (OSError, ValueError):
        return None
    return prog if same else None


def take(front: Front, world: dict[str, str]) -> None:
    """Read and copy everything Python would have had after the front's exec (see the top)."""
    pid = front.pid
    try:
        status = front.status or _status(pid)
        _check_world(front, world)
        front.umask = int(status["Umask"], 8)
        front.ignored = _signals(status["SigIgn"])
        blocked = _signals(status["SigBlk"])
        # dash blocks every signal for an instant around its `wait`: no caller's mask is that.
        front.blocked = set() if len(blocked) > 60 else blocked
        front.gids = tuple(int(g) for g in status["Gid"].split()[:3])
        front.groups = [int(g) for g in status["Groups"].split()]
        for limit in _LIMITS:
            front.limits[limit] = resource.prlimit(pid, limit)
        _check_floor(front)
        numbers = _inherited(pid, front.reply)
        front.cwd = os.open(f"/proc/{pid}/cwd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except (OSError, ValueError, KeyError) as error:
        raise Refused(f"pid {pid} cannot be read: {error}") from None
    for number in numbers:
        front.fds[number] = getfd(front.pidfd, number)
    if exited(front.pidfd):
        raise Refused(f"pid {pid} ended meanwhile", answer=False)


def getfd(pidfd: int, number: int) -> int:
    """pidfd_getfd(2): a copy of the process's descriptor, close-on-exec."""
    fd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, number, 0)
    if fd < 0:
        code = ctypes.get_errno()
        raise Refused(f"pidfd_getfd: {os.strerror(code)}")
    return fd


def world(pid: str = "self", status: dict[str, str] | None = None) -> dict[str, str]:
    """What must be equal between front and helper: namespaces, root, limits on power
    (status: its /proc/PID/status, read already)."""
    base = f"/proc/{pid}"
    status = status or _status(pid)
    found = {key: status[key] for key in _STATUS_KEYS if key in status}
    for name in sorted(os.listdir("/proc/self/ns")):
        found[f"ns/{name}"] = os.readlink(f"{base}/ns/{name}")
    root = os.stat(f"{base}/root")
    found["root"] = f"{root.st_dev}:{root.st_ino}"
    return found


def _check_world(front: Front, mine: dict[str, str]) -> None:
    environment = dict(front.env)
    for variable in _OPENSSL_AT_LOAD:
        if environment.get(variable) != os.environb.get(variable):
            raise Refused(f"{variable.decode()} is not the helper's (OpenSSL read it at start)")
    theirs = world(str(front.pid), front.status)
    for key, value in mine.items():
        if key.startswith("Cap"):
            if int(theirs[key], 16) & int(value, 16) != int(value, 16):
                raise Refused(f"the front has fewer capabilities ({key})")
        elif theirs.get(key) != value:
            raise Refused(f"the front lives elsewhere ({key})")


def _check_floor(front: Front) -> None:
    """The front would stop with its own fatal line: let it say so (the direct path)."""
    floor = _floor(front)
    for name in ("AS", "DATA"):
        soft, hard = front.limits[_MEMORY[name]]
        if soft != resource.RLIM_INFINITY and soft < floor and hard != resource.RLIM_INFINITY:
            if hard < floor:
                raise Refused(f"hard {name} limit {hard} is below the memory floor")


def _floor(front: Front) -> int:
    text = dict(front.env).get(b"STUNNEL3_MEMORY_FLOOR", b"")
    return int(text) if text.isdigit() else DEFAULT_FLOOR


def _inherited(pid: int, reply: int) -> list[int]:
    """The front's descriptors that its exec would keep, but the reply pipe."""
    numbers = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        number = int(name)
        if number == reply:
            continue
        flags = _read(f"/proc/{pid}/fdinfo/{number}").partition(b"flags:")[2].split()[0]
        if int(flags, 8) & os.O_CLOEXEC:
            continue  # dash's own (its script), gone at exec
        numbers.append(number)
    return sorted(numbers)


def _status(pid: int | str) -> dict[str, str]:
    found = {}
    for line in _read(f"/proc/{pid}/status").decode("ascii", "replace").splitlines():
        key, _, value = line.partition(":")
        found[key] = value.strip()
    return found


def _environment(pid: int) -> list[tuple[bytes, bytes]]:
    found = []
    for entry in _read(f"/proc/{pid}/environ").split(b"\0"):
        key, equals, value = entry.partition(b"=")
        if key and equals:
            found.append((key, value))
    return found


def _signals(mask: str) -> set[int]:
    bits = int(mask, 16)
    return {number for number in range(1, signal.NSIG) if bits >> (number - 1) & 1}


def _read(path: str) -> bytes:
    with open(path, "rb", buffering=0) as file:
        return file.read(1 << 20)


# -- becoming the front, in the worker ---------------------------------------------------


def reset_signals(ignored: set[int]) -> None:
    """Dispositions as a fresh Python that inherited `ignored` has them. (The C module:
    `signal` makes an enum of every number it is given or returns.)"""
    _signal.set_wakeup_fd(-1)
    for signum in _signal.valid_signals():
        if signum in (_signal.SIGKILL, _signal.SIGSTOP):
            continue
        try:
            _signal.signal(signum, _signal.SIG_IGN if signum in ignored else _signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # glibc's own real-time signals
    _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)  # CPython's start-up does this
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)
    if _signal.SIGINT not in ignored:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)


def become(front: Front, keep: list[int]) -> list[int]:
    """The front recreated in this process (see the top); the new numbers of `keep`."""
    reset_signals(front.ignored)
    os.fchdir(front.cwd)
    kept = place_descriptors(front.fds, keep)
    os.umask(front.umask)
    os.environb.clear()
    for key, value in front.env:
        os.environb[key] = value
    os.environb[b"STUNNEL3_RLIMITS"] = _original_soft_limits(front)
    time.tzset()
    try:
        _locale.setlocale(_locale.LC_CTYPE, "")  # CPython's start-up does this too
    except _locale.Error:  # type: ignore[attr-defined]
        pass
    if os.geteuid() == 0:
        os.setgroups(front.groups)
        os.setresgid(*front.gids)
    for limit, (soft, hard) in front.limits.items():
        resource.setrlimit(limit, (_raised(front, limit, soft, hard), hard))
    _signal.pthread_sigmask(_signal.SIG_SETMASK, front.blocked)
    _new_stdio()
    sys.argv = ["-c", *(os.fsdecode(arg) for arg in front.argv)]
    return kept


def _raised(front: Front, limit: int, soft: int, hard: int) -> int:
    """The soft limit as bin/'s front leaves it for Python: raised to the floor, never above
    the hard limit, never lowered."""
    floor = {resource.RLIMIT_AS: _floor(front), resource.RLIMIT_DATA: _floor(front),
             resource.RLIMIT_STACK: STACK_FLOOR}.get(limit)  # fmt: skip
    if floor is None or soft == resource.RLIM_INFINITY or soft >= floor:
        return soft
    return floor if hard == resource.RLIM_INFINITY else min(floor, hard)


def _original_soft_limits(front: Front) -> bytes:
    """STUNNEL3_RLIMITS as the front writes it: `as:data:stack`, bytes or unlimited."""
    words = []
    for name in ("AS", "DATA", "STACK"):
        soft = front.limits[_MEMORY[name]][0]
        words.append(b"unlimited" if soft == resource.RLIM_INFINITY else b"%d" % soft)
    return b":".join(words)


def place_descriptors(targets: dict[int, int], keep: list[int]) -> list[int]:
    """Each received descriptor at its front number, nothing else open but `keep`
    (moved out of the way, close-on-exec: their new numbers are returned).

    First everything moves above every number in play (so no dup2 lands on a
    descriptor still needed), then the rest is closed, then each goes home.
    """
    high = max([*targets, *targets.values(), *keep, 9]) + 1
    moved = {home: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, high) for home, fd in targets.items()}
    kept = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, high) for fd in keep]
    wanted = {*moved.values(), *kept}
    for fd in open_descriptors():
        if fd not in wanted:
            os.close(fd)
    for home, fd in moved.items():
        os.dup2(fd, home)
        os.close(fd)
    return kept


def open_descriptors() -> list[int]:
    """Every descriptor open in this process, by number."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            os.fstat(fd)  # the directory listing's own descriptor is closed by now
        except OSError:
            continue
        found.append(fd)
    return sorted(found)


def _new_stdio() -> None:
    """sys.stdin/out/err on the front's 0/1/2 (None where it had none, as CPython does).

    The helper's own serve where they stand on the same number: their buffers were
    flushed before the fork, and they are what a fresh Python makes (block-buffered
    stdout, line-buffered stderr); new ones cost ~0.5 ms and ~140 page faults."""
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    streams: list = []
    for fd, stream, mode, errors in ((0, sys.stdin, "r", "strict"), (1, sys.stdout, "w", "strict"),
                                     (2, sys.stderr, "w", "backslashreplace")):  # fmt: skip
        try:
            os.fstat(fd)
        except OSError:
            streams.append(None)
            continue
        try:
            if stream is not None and stream.fileno() == fd:
                streams.append(stream)
                continue
        except (OSError, ValueError):
            pass
        streams.append(_stream(fd, mode, encoding, errors))
    _kept.extend(stream for stream in (sys.stdin, sys.stdout, sys.stderr) if stream not in streams)
    sys.stdin, sys.stdout, sys.stderr = streams  # type: ignore[assignment]


def _stream(fd: int, mode: str, encoding: str, errors: str) -> io.TextIOWrapper:
    raw = io.FileIO(fd, mode, closefd=False)
    buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
    line_buffering = fd == 2 or os.isatty(fd)  # as CPython: stderr, or a terminal
    return io.TextIOWrapper(buffered, encoding, errors, line_buffering=line_buffering)

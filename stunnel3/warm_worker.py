"""The warm helper's worker: read a thin client's request and become that process.

warm_client.py sends what makes a `stunnel` process what it is; a worker forked
inside stunnel3-warm takes it on, then runs stunnel.run() exactly as the direct
path would: parse, log, resolve ids, chroot, setuid, read the pem in the jail.

Rules of this file:
- A request is refused (BadRequest, then the client runs the direct path) if
  any field is malformed, if the client's ids are not all its socket's peer
  uid, or if the client lives in another world than the helper: another
  namespace, another root, fewer capabilities, no_new_privs or seccomp, or
  another OPENSSL_CONF (OpenSSL read the helper's when it was loaded). So a
  worker can never do what the client itself could not, nor differently.
- `enter` takes the client's cwd and its descriptors at their numbers and
  nothing else (the connection to the client and the helper's log apart,
  both closed before the worker runs);
  then `become`, in this order: umask; environment (and with it TZ and
  LC_CTYPE); gids and groups; every rlimit; then the signal mask. Signal dispositions are reset
  first of all (`reset_signals`), to what a fresh Python has: default, but
  what the client inherited ignored, and SIGPIPE/SIGXFSZ ignored, SIGINT
  raising KeyboardInterrupt.
- What cannot be recreated is in docs/warm.md: the pid, the parent, the
  process group and session, the cgroup.
"""

import _locale
import fcntl
import io
import os
import resource
import signal
import socket
import sys
import time
from dataclasses import dataclass

from stunnel3.warm_client import MAGIC, MAX_FDS, MAX_REQUEST, open_descriptors

SECTIONS = (
    "fds",
    "argv",
    "env",
    "umask",
    "rlimits",
    "ignored",
    "blocked",
    "uids",
    "gids",
    "groups",
)
_STATUS_KEYS = ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp")
# OpenSSL reads these once, when it is loaded: in the helper, at its start.
_OPENSSL_AT_LOAD = (b"OPENSSL_CONF", b"OPENSSL_MODULES", b"OPENSSL_ENGINES", b"OPENSSL_ia32cap")
_kept: list = []  # the helper's own stdio objects: never collected, never closing 0-2


class BadRequest(Exception):
    """The request cannot be served by a worker; the text is for the helper's log."""


@dataclass(frozen=True)
class Request:
    fds: tuple[int, ...]  # the client's descriptor numbers, in the order attached
    argv: tuple[bytes, ...]  # main()'s argv: the program name, then the arguments
    env: tuple[tuple[bytes, bytes], ...]
    umask: int
    rlimits: tuple[tuple[int, int, int], ...]  # (resource, soft, hard)
    ignored: frozenset[int]  # signals the client inherited as SIG_IGN
    blocked: frozenset[int]  # its signal mask
    uids: tuple[int, ...]  # getresuid()
    gids: tuple[int, ...]  # getresgid()
    groups: tuple[int, ...]


def receive_request(conn: socket.socket) -> tuple[bytes, list[int]]:
    """One request message and its descriptors; b"" for anything out of bounds."""
    try:
        data, ancillary, flags, _ = conn.recvmsg(
            MAX_REQUEST + 1, socket.CMSG_SPACE((MAX_FDS + 1) * 4), socket.MSG_CMSG_CLOEXEC
        )
    except (TimeoutError, OSError):
        return b"", []
    received: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            received += [
                int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, usable, 4)
            ]
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > MAX_REQUEST:
        return b"", received  # too big: decode refuses b"", the descriptors are closed
    return data, received


def decode_request(data: bytes, received: int) -> Request:
    """The request's fields (warm_client.encode_request); `received`: descriptors attached."""
    if not data.endswith(b"\0"):
        raise BadRequest("not NUL-terminated")
    fields = data[:-1].split(b"\0")
    if fields[0] != MAGIC:
        raise BadRequest("not a stunnel3-warm request")
    found: dict[str, list[bytes]] = {}
    at = 1
    for name in SECTIONS:
        if at + 1 >= len(fields) or fields[at] != name.encode():
            raise BadRequest(f"section {name} missing")
        count = _number(fields[at + 1], len(fields))
        found[name] = fields[at + 2 : at + 2 + count]
        if len(found[name]) != count:
            raise BadRequest(f"section {name} cut short")
        at += 2 + count
    if at != len(fields):
        raise BadRequest("trailing fields")
    return _request(found, received)


def _request(found: dict[str, list[bytes]], received: int) -> Request:
    fds = tuple(_number(f, 1 << 20) for f in found["fds"])
    if len(fds) + 1 != received or len(set(fds)) != len(fds):
        raise BadRequest("descriptors do not match the list")
    if not found["argv"]:
        raise BadRequest("empty argv")
    env = []
    for entry in found["env"]:
        key, equals, value = entry.partition(b"=")
        if not key or not equals:
            raise BadRequest("environment entry without a name")
        env.append((key, value))
    (umask,) = _numbers(found["umask"], 0o777, 1)
    limits = []
    for entry in found["rlimits"]:
        parts = entry.split(b" ")
        if len(parts) != 3:
            raise BadRequest("bad rlimit")
        limits.append((_number(parts[0], 64), _limit(parts[1]), _limit(parts[2])))
    signals = signal.NSIG - 1
    return Request(
        fds=fds,
        argv=tuple(found["argv"]),
        env=tuple(env),
        umask=umask,
        rlimits=tuple(limits),
        ignored=frozenset(_numbers(found["ignored"], signals)),
        blocked=frozenset(_numbers(found["blocked"], signals)),
        uids=_numbers(found["uids"], 0xFFFFFFFE, 3),
        gids=_numbers(found["gids"], 0xFFFFFFFE, 3),
        groups=_numbers(found["groups"], 0xFFFFFFFE),
    )


def _number(text: bytes, most: int) -> int:
    if not (text.isdigit() and len(text) <= 10 and int(text) <= most):
        raise BadRequest(f"bad number {text[:20]!r}")
    return int(text)


def _numbers(items: list[bytes], most: int, count: int | None = None) -> tuple[int, ...]:
    if count is not None and len(items) != count:
        raise BadRequest("wrong count of numbers")
    return tuple(_number(item, most) for item in items)


def _limit(text: bytes) -> int:
    return resource.RLIM_INFINITY if text == b"-1" else _number(text, (1 << 63) - 1)


# -- may this peer have a worker? ----------------------------------------------


def check_peer(request: Request, uid: int, gid: int, pid: int) -> None:
    """Raise BadRequest unless the worker would be no more than the client itself."""
    if set(request.uids) != {uid}:
        raise BadRequest(f"uids {request.uids} are not the peer's {uid}")
    if request.gids[1] != gid:
        raise BadRequest(f"gid {request.gids[1]} is not the peer's {gid}")
    if os.geteuid() != 0 and (request.gids, sorted(request.groups)) != (
        os.getresgid(),
        sorted(os.getgroups()),
    ):
        raise BadRequest("groups differ from the helper's, which cannot change them")
    environment = dict(request.env)
    for variable in _OPENSSL_AT_LOAD:
        if environment.get(variable) != os.environb.get(variable):
            raise BadRequest(f"{variable.decode()} is not the helper's (OpenSSL read it at start)")
    try:
        mine, theirs = _world("self"), _world(str(pid))
    except OSError as error:
        raise BadRequest(f"cannot see the peer: {error.strerror}") from None
    for key, value in mine.items():
        if key.startswith("Cap"):
            if int(theirs[key], 16) & int(value, 16) != int(value, 16):
                raise BadRequest(f"the peer has fewer capabilities ({key})")
        elif theirs.get(key) != value:
            raise BadRequest(f"the peer lives elsewhere ({key})")


def _world(pid: str) -> dict[str, str]:
    """What must be equal between client and helper: namespaces, root, limits on power."""
    base = f"/proc/{pid}"
    world = {}
    for line in open(f"{base}/status", encoding="ascii", errors="replace"):
        key, _, value = line.partition(":")
        if key in _STATUS_KEYS:
            world[key] = value.strip()
    for name in sorted(os.listdir("/proc/self/ns")):
        world[f"ns/{name}"] = os.readlink(f"{base}/ns/{name}")
    root = os.stat(f"{base}/root")
    world["root"] = f"{root.st_dev}:{root.st_ino}"
    return world


# -- becoming the client ---------------------------------------------------------


def reset_signals(ignored: frozenset[int]) -> None:
    """Dispositions as a fresh Python that inherited `ignored` has them."""
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(signum, signal.SIG_IGN if signum in ignored else signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # glibc's own real-time signals
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # CPython's start-up does this
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if signal.SIGINT not in ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def enter(request: Request, received: list[int], keep: list[int]) -> list[int]:
    """The client's cwd and descriptors; the new numbers of the `keep` descriptors."""
    os.fchdir(received[-1])
    return place_descriptors(dict(zip(request.fds, received[:-1], strict=True)), keep)


def become(request: Request) -> None:
    """The rest of the client, once its descriptors are in place (enter)."""
    os.umask(request.umask)
    os.environb.clear()
    for key, value in request.env:
        os.environb[key] = value
    time.tzset()
    try:
        _locale.setlocale(_locale.LC_CTYPE, "")  # CPython's start-up does this too
    except _locale.Error:  # type: ignore[attr-defined]
        pass
    if os.geteuid() == 0:
        os.setgroups(list(request.groups))
        os.setresgid(*request.gids)
    for limit, soft, hard in request.rlimits:
        resource.setrlimit(limit, (soft, hard))
    signal.pthread_sigmask(signal.SIG_SETMASK, request.blocked)
    _new_stdio()
    sys.argv = ["-c", *(os.fsdecode(arg) for arg in request.argv)]


def place_descriptors(targets: dict[int, int], keep: list[int]) -> list[int]:
    """Each received descriptor at its client number, nothing else open but `keep`
    (moved out of the way, close-on-exec: their new numbers are returned).

    First everything moves above every number in play (so no dup2 lands on a
    descriptor still needed), then the rest is closed, then each goes home.
    """
    high = max([*targets, *targets.values(), *keep]) + 1
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


def _new_stdio() -> None:
    """sys.stdin/out/err on the client's 0/1/2 (None where it had none, as CPython does)."""
    _kept.extend((sys.stdin, sys.stdout, sys.stderr))
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stdin = _stream(0, "r", encoding, "strict")  # type: ignore[assignment]
    sys.stdout = _stream(1, "w", encoding, "strict")  # type: ignore[assignment]
    sys.stderr = _stream(2, "w", encoding, "backslashreplace")  # type: ignore[assignment]


def _stream(fd: int, mode: str, encoding: str, errors: str) -> io.TextIOWrapper | None:
    try:
        os.fstat(fd)
    except OSError:
        return None
    raw = io.FileIO(fd, mode, closefd=False)
    buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffered, encoding, errors, line_buffering=mode == "w")

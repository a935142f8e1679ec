"""Small Unix helpers for the djb-style tools (fixcrio, makesock).

Their messages keep the voice of ucspi-tcp: `prog: usage: ...` exits 100,
`prog: fatal: unable to ...: <text>` exits 111, where <text> is djb's own
wording for errno (his error_str.c), not strerror(). Debian's /usr/bin/fixcrio
prints `unable to run /nonexistent: file does not exist`, and so do we.

This module runs on every connection: it imports os, errno, resource and
limits only (no typing: it costs ~5 ms at every start).
"""

import errno
import os
import resource

from stunnel3.support import limits

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs ~5 ms per connection
    from typing import NoReturn

# djb's texts for the errno values Linux has, in our own table. Where Linux
# gives two names one number (EAGAIN/EWOULDBLOCK, EDEADLK/EDEADLOCK,
# EOPNOTSUPP/ENOTSUP), djb's first match wins: that is the text listed here.
_DJB_TEXT = {
    "EINTR": "interrupted system call",
    "ENOMEM": "out of memory",
    "ENOENT": "file does not exist",
    "ETXTBSY": "text busy",
    "EIO": "input/output error",
    "EEXIST": "file already exists",
    "ETIMEDOUT": "timed out",
    "EINPROGRESS": "operation in progress",
    "EAGAIN": "temporary failure",
    "EPIPE": "broken pipe",
    "EPERM": "permission denied",
    "EACCES": "access denied",
    "ENXIO": "device not configured",
    "EPROTO": "protocol error",
    "EISDIR": "is a directory",
    "ESRCH": "no such process",
    "E2BIG": "argument list too long",
    "ENOEXEC": "exec format error",
    "EBADF": "file descriptor not open",
    "ECHILD": "no child processes",
    "EDEADLK": "operation would cause deadlock",
    "EFAULT": "bad address",
    "ENOTBLK": "not a block device",
    "EBUSY": "device busy",
    "EXDEV": "cross-device link",
    "ENODEV": "device does not support operation",
    "ENOTDIR": "not a directory",
    "EINVAL": "invalid argument",
    "ENFILE": "system cannot open more files",
    "EMFILE": "process cannot open more files",
    "ENOTTY": "not a tty",
    "EFBIG": "file too big",
    "ENOSPC": "out of disk space",
    "ESPIPE": "unseekable descriptor",
    "EROFS": "read-only file system",
    "EMLINK": "too many links",
    "EDOM": "input out of range",
    "ERANGE": "output out of range",
    "EALREADY": "operation already in progress",
    "ENOTSOCK": "not a socket",
    "EDESTADDRREQ": "destination address required",
    "EMSGSIZE": "message too long",
    "EPROTOTYPE": "incorrect protocol type",
    "ENOPROTOOPT": "protocol not available",
    "EPROTONOSUPPORT": "protocol not supported",
    "ESOCKTNOSUPPORT": "socket type not supported",
    "EOPNOTSUPP": "operation not supported",
    "EPFNOSUPPORT": "protocol family not supported",
    "EAFNOSUPPORT": "address family not supported",
    "EADDRINUSE": "address already used",
    "EADDRNOTAVAIL": "address not available",
    "ENETDOWN": "network down",
    "ENETUNREACH": "network unreachable",
    "ENETRESET": "network reset",
    "ECONNABORTED": "connection aborted",
    "ECONNRESET": "connection reset",
    "ENOBUFS": "out of buffer space",
    "EISCONN": "already connected",
    "ENOTCONN": "not connected",
    "ESHUTDOWN": "socket shut down",
    "ETOOMANYREFS": "too many references",
    "ECONNREFUSED": "connection refused",
    "ELOOP": "symbolic link loop",
    "ENAMETOOLONG": "file name too long",
    "EHOSTDOWN": "host down",
    "EHOSTUNREACH": "host unreachable",
    "ENOTEMPTY": "directory not empty",
    "EUSERS": "too many users",
    "EDQUOT": "disk quota exceeded",
    "ESTALE": "stale NFS file handle",
    "EREMOTE": "too many levels of remote in path",
    "ENOLCK": "no locks available",
    "ENOSYS": "system call not available",
    "ENOSTR": "not a stream device",
    "ETIME": "timer expired",
    "ENOSR": "out of stream resources",
    "ENOMSG": "no message of desired type",
    "EBADMSG": "bad message type",
    "EIDRM": "identifier removed",
    "ENONET": "machine not on network",
    "ENOLINK": "link severed",
    "EADV": "advertise error",
    "ESRMNT": "srmount error",
    "ECOMM": "communication error",
    "EMULTIHOP": "multihop attempted",
    "EREMCHG": "remote address changed",
}
ERROR_TEXT: dict[int, str] = {0: "no error"}
for _name, _text in _DJB_TEXT.items():
    if hasattr(errno, _name):
        ERROR_TEXT.setdefault(getattr(errno, _name), _text)
del _name, _text

USAGE = 100
FATAL = 111


def error_text(number: int | None) -> str:
    """djb's wording for an errno value."""
    return ERROR_TEXT.get(number or 0, "unknown error")


def die(prog: str, code: int, *parts: str, forked: bool = False) -> "NoReturn":
    """Write `prog: <parts>` as one line on fd 2 and exit with code.

    In a forked child (forked=True) leave with os._exit: the child must never
    run the parent's exit handlers or fall back into its caller's code.
    """
    say(prog, *parts)
    if forked:
        os._exit(code)
    raise SystemExit(code)


def say(prog: str, *parts: str) -> None:
    """Write `prog: <parts>` as one line on fd 2."""
    line = (prog + ": " + "".join(parts) + "\n").encode("utf-8", "surrogateescape")
    try:
        os.write(2, line)
    except OSError:
        pass  # no stderr: the exit code still tells


def fatal_text(what: str, error: OSError) -> str:
    """`fatal: unable to <what>: <djb text>`."""
    return f"fatal: unable to {what}: {error_text(error.errno)}"


def usage(prog: str, text: str, forked: bool = False) -> "NoReturn":
    die(prog, USAGE, "usage: ", text, forked=forked)


def fatal(prog: str, what: str, error: OSError, forked: bool = False) -> "NoReturn":
    """`prog: fatal: unable to <what>: <djb text>`, exit 111."""
    die(prog, FATAL, fatal_text(what, error), forked=forked)


def move_fd(source: int, target: int) -> None:
    """Make source the inheritable descriptor target, like djb's fd_move (dup2 keeps
    no flags of source: the copy is inheritable, even when source was close-on-exec)."""
    if source == target:
        os.set_inheritable(target, True)
        return
    os.dup2(source, target)
    os.close(source)


def candidates(file: str, environ) -> list[bytes]:
    """Where djb's pathexec_run looks for file, in order.

    A name with a slash is used as it is; else each PATH element in turn (an
    empty element is the current directory), PATH defaulting to /bin:/usr/bin.
    """
    name = os.fsencode(file)
    if b"/" in name:
        return [name]
    path = os.fsencode(environ.get("PATH", "/bin:/usr/bin"))
    return [(element or b".") + b"/" + name for element in path.split(b":")]


def exec_program(argv: list[str]) -> OSError:
    """Exec argv like djb's pathexec_run, under the administrator's limits.

    Returns (never raises) the error to report when no exec succeeded: the
    last error other than "file does not exist" if any, as pathexec_run does;
    a search stops at the first error that is not ENOENT, EACCES, EPERM or
    EISDIR. The soft limits are raised again before returning, so that the
    caller can still format its message under `softlimit -m 5000000`.
    """
    saved = {r: resource.getrlimit(r) for r in limits.original_soft_limits()}
    environ = limits.child_environment()
    limits.prepare_child()
    args = [os.fsencode(arg) for arg in argv]
    if not args[0]:
        # Python refuses an empty argv[0]; with an empty name every candidate
        # is "dir/", which can never be executed, so the stand-in never runs.
        args[0] = b"-"
    found = OSError(errno.ENOENT, "file does not exist")
    for candidate in candidates(argv[0], environ):
        try:
            os.execve(candidate, args, environ)
        except OSError as error:
            if error.errno != errno.ENOENT:
                found = error
                if error.errno not in (errno.EACCES, errno.EPERM, errno.EISDIR):
                    break
    for limit, value in saved.items():
        resource.setrlimit(limit, value)
    return found


def spawn_program(argv: list[str], file_actions: list) -> int | OSError | None:
    """Start argv as a child, found and run as exec_program would (limits.spawn: no fork).

    The child's pid; or the error to report, chosen as exec_program chooses it (the child
    never ran); or None when it cannot be spawned here (the caller forks instead)."""
    environ = limits.child_environment()
    args = [os.fsencode(arg) or b"-" for arg in argv[:1]] + [os.fsencode(a) for a in argv[1:]]
    found = OSError(errno.ENOENT, "file does not exist")
    for candidate in candidates(argv[0], environ):
        try:
            return limits.spawn(candidate, args, environ, file_actions)
        except OSError as error:
            if error.errno != errno.ENOENT:
                found = error
                if error.errno not in (errno.EACCES, errno.EPERM, errno.EISDIR):
                    break
    return found

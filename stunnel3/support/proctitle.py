"""The process's name, as ps(1), pidof(8) and pgrep(1) show it: `stunnel -D 7 ...`.

Every program of ours runs as `python3 -I -S -c '<the front's script>' prog
args` (bin/), which is what ps would show, and `python3` what pidof and
`pgrep -x` match. A C program run as `stunnel -D 7 ...` shows that; so do we:

- the short name (/proc/PID/comm, what `pgrep -x`, `ps -e` and `top` show) is
  written to /proc/self/comm, as prctl(PR_SET_NAME) would set it;
- the command line (/proc/PID/cmdline, what `ps -f`, `pidof` and `pgrep -f`
  read) is the memory the kernel put argv in: we overwrite it in place
  through /proc/self/mem with the new words, NUL-padded to its old end (the
  -c script makes it long enough; longer words are cut). Python keeps its own
  copy of argv, so nothing reads the old one.

No ctypes and no new dependency: two files of our own process. Inside a jail
there is no /proc: each program names itself before it enters one. Failing
to is never an error (a kernel without /proc/self/mem writes): the process
keeps the interpreter's name.
"""

import os

COMM_MAX = 15  # TASK_COMM_LEN less its NUL
# /proc/self/stat's arg_start and arg_end, fields 48 and 49 of proc(5), counted here
# from the state (field 3), the first after the name in parentheses.
_ARG_FIELDS = slice(45, 47)


def set_title(argv: list[str]) -> None:
    """Name this process argv[0] (basename) and show argv as its command line."""
    words = [os.fsencode(word) for word in argv]
    _write("/proc/self/comm", os.path.basename(words[0])[:COMM_MAX])
    try:
        with open("/proc/self/stat", "rb", buffering=0) as file:
            fields = file.read(4096).rpartition(b")")[2].split()
        start, end = (int(field) for field in fields[_ARG_FIELDS])
    except (OSError, IndexError, ValueError):
        return
    line = b"\0".join(words)[: end - start - 1]
    fd = _open("/proc/self/mem")
    if fd is None:
        return
    try:
        os.pwrite(fd, line.ljust(end - start, b"\0"), start)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write(path: str, data: bytes) -> None:
    fd = _open(path)
    if fd is not None:
        try:
            os.write(fd, data)
        except OSError:
            pass
        finally:
            os.close(fd)


def _open(path: str) -> int | None:
    try:
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return None

"""bin/'s sh fronts, read by the code that must recognise one.

makesock (would exec'ing stunnel or fixcrio start this very Python?), the warm
helper (is the announcing process one of our fronts, on our Python?) and
stunnel3-setup (where are this installation's programs?) ask the same
questions. They are answered here by the rules the front itself follows
(bin/stunnel's comments):

- a front is a file that carries FRONT_MARK near its top, and `prog=NAME`;
- its Python is $STUNNEL3_PYTHON, else the path on the first line of
  stunnel3-python beside the front (`#!/path/to/python3`, as the installer
  wrote it); when the front was run through a symbolic link with no
  stunnel3-python beside the link, the one beside the file it leads to.
"""

import os

FRONT_MARK = b"# The front of a stunnel3 program."
RECORD = b"stunnel3-python"
PYTHON_ENV = b"STUNNEL3_PYTHON"
_HEAD = 4096  # FRONT_MARK and `prog=` are in the first lines


def program(path: bytes) -> bytes | None:
    """The program the front at path runs (`prog=`), or None if it is no front of ours."""
    try:
        with open(path, "rb") as file:
            head = file.read(_HEAD)
    except OSError:
        return None
    if FRONT_MARK not in head:
        return None
    return head.partition(b"\nprog=")[2].partition(b"\n")[0] or None


def python(path: bytes, environ, cwd: bytes = b"") -> bytes | None:
    """The interpreter the front at path would start (relative names from cwd), or None.

    environ: the front's environment (bytes keys and values); path and a relative
    interpreter are taken from cwd, the front's working directory.
    """
    chosen = environ.get(PYTHON_ENV)
    if not chosen:
        chosen = _recorded(os.path.join(cwd, path))
    return os.path.join(cwd, chosen) if chosen else None


def _recorded(path: bytes) -> bytes | None:
    """The first line of stunnel3-python as the front's `read -r` leaves it, less `#!`."""
    places = [os.path.dirname(path)]
    if os.path.islink(path):
        places.append(os.path.dirname(os.path.realpath(path)))
    for directory in places:
        try:
            with open(os.path.join(directory, RECORD), "rb") as file:
                line = file.readline(4096)
        except OSError:
            continue
        if line:  # an empty file is no line: the front goes on to the next place too
            return line.rstrip(b"\n").strip(b" \t").removeprefix(b"#!") or None
    return None


def interpreter(path: str) -> tuple[str, str]:
    """Which Python, with which packages: its binary and, for a virtual environment's
    (every venv's python is a link to the same binary), that environment."""
    venv = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    home = os.path.realpath(venv) if os.path.exists(os.path.join(venv, "pyvenv.cfg")) else ""
    return os.path.realpath(path), home

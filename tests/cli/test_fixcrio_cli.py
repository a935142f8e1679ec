"""fixcrio's command line, messages, exit codes and process shape, next to Debian's.

Every case runs our installed fixcrio and Debian's /usr/bin/fixcrio with the
same arguments and compares what a caller sees: stdout, stderr, exit status.
"""

import os
import subprocess
import sys

import pytest

DEBIAN_FIXCRIO = "/usr/bin/fixcrio"

# Lists the descriptors it has without opening any (fstat and readlink take
# none), each as `fd kind`, where kind is the part of the link before ':'.
FD_LISTER = (
    "import os\n"
    "for fd in range(256):\n"
    "    try:\n"
    "        os.fstat(fd)\n"
    "    except OSError:\n"
    "        continue\n"
    "    print(fd, os.readlink('/proc/self/fd/%d' % fd).split(':')[0])\n"
)


def run(fixcrio: str, *args: str, stdin: bytes = b"", env=None, cwd=None):
    done = subprocess.run(
        [fixcrio, *args],
        input=stdin,
        capture_output=True,
        timeout=20,
        env=env,
        cwd=cwd,
    )
    return done.returncode, done.stdout, done.stderr


def both(fixcrio_bin: str, *args: str, **kwargs):
    ours = run(fixcrio_bin, *args, **kwargs)
    theirs = run(DEBIAN_FIXCRIO, *args, **kwargs)
    assert ours == theirs
    return ours


def test_usage(fixcrio_bin):
    code, out, err = both(fixcrio_bin)
    assert (code, out, err) == (100, b"", b"fixcrio: usage: fixcrio program [ arg ... ]\n")


@pytest.fixture()
def odd_files(tmp_path):
    (tmp_path / "plain").write_text("#!/bin/sh\n")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    return tmp_path


@pytest.mark.parametrize(
    "program, text",
    [
        ("/nonexistent", "file does not exist"),
        ("no-such-program-anywhere", "file does not exist"),
        ("{dir}/plain", "access denied"),
        ("{dir}", "access denied"),
        ("{dir}/plain/x", "not a directory"),
        ("{dir}/loop", "symbolic link loop"),
        ("", "access denied"),
    ],
)
def test_unable_to_run(fixcrio_bin, odd_files, program, text):
    program = program.format(dir=odd_files)
    code, out, err = both(fixcrio_bin, program, "arg")
    assert code == 111
    assert err == f"fixcrio: fatal: unable to run {program}: {text}\n".encode()


def test_path_search_like_pathexec(fixcrio_bin, odd_files):
    """An empty PATH element is the current directory; no PATH is /bin:/usr/bin."""
    env = {"PATH": ""}
    code, _, err = both(fixcrio_bin, "plain", env=env, cwd=odd_files)
    assert (code, err) == (111, b"fixcrio: fatal: unable to run plain: access denied\n")
    code, out, _ = both(fixcrio_bin, "echo", "hi", env={})
    assert (code, out) == (0, b"hi\r\n")


@pytest.mark.parametrize("status", [0, 1, 42, 111])
def test_the_status_is_the_programs(fixcrio_bin, status):
    assert both(fixcrio_bin, "sh", "-c", f"exit {status}")[0] == status


def test_a_signal_is_the_programs(fixcrio_bin):
    assert both(fixcrio_bin, "sh", "-c", "kill -TERM $$")[0] == -15


def test_the_program_has_fixcrios_pid(fixcrio_bin):
    """The parent becomes the program: the pid a supervisor knows is the program's."""
    proc = subprocess.Popen(
        [fixcrio_bin, "sh", "-c", "echo $$ $PPID"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    out, _ = proc.communicate(timeout=20)
    assert out == f"{proc.pid} {os.getpid()}\r\n".encode()


def test_eof_on_stdin_still_drains_the_output(fixcrio_bin):
    script = "cat; sleep 0.3; echo late; printf 'no LF\\r'"
    code, out, _ = both(fixcrio_bin, "sh", "-c", script, stdin=b"a\nb\r\n")
    assert (code, out) == (0, b"a\r\nb\r\nlate\r\nno LF\r")


def test_the_program_sees_signals_as_the_caller_left_them(fixcrio_bin):
    """SIGPIPE is ignored in the pump only: the program gets the caller's dispositions."""
    code, out, _ = both(fixcrio_bin, "grep", "^SigIgn", "/proc/self/status")
    mine = subprocess.run(
        ["grep", "^SigIgn", "/proc/self/status"], capture_output=True, timeout=20
    ).stdout
    assert code == 0
    assert out == mine.replace(b"\n", b"\r\n")


def test_the_program_gets_two_pipes_and_no_other_descriptor(fixcrio_bin):
    code, out, _ = both(fixcrio_bin, sys.executable, "-I", "-S", "-c", FD_LISTER)
    assert code == 0
    assert out.split(b"\r\n")[:2] == [b"0 pipe", b"1 pipe"]
    assert len(out.split(b"\r\n")) == 4  # 0, 1, 2 and the empty tail


def test_a_closed_stdout_ends_quietly(fixcrio_bin):
    """The pump ignores SIGPIPE and exits; the program then gets SIGPIPE by default."""
    results = []
    for fixcrio in (fixcrio_bin, DEBIAN_FIXCRIO):
        reader, writer = os.pipe()
        os.close(reader)
        done = subprocess.run(
            [fixcrio, "sh", "-c", "echo x; sleep 1; echo y"],
            stdin=subprocess.DEVNULL,
            stdout=writer,
            stderr=subprocess.PIPE,
            timeout=20,
        )
        os.close(writer)
        results.append((done.returncode, done.stderr))
    assert results[0] == results[1] == (-13, b"")

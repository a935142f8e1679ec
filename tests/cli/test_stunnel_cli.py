"""The installed `stunnel` as a process: every option, every error, -h, -V, the log line.

An option that parses is shown to parse without the TLS engine: `-o` at the end
of the line names a file that cannot be opened, and the log is opened right
after the options are judged (mode rules included), so "Unable to open output
file" (exit 1) is proof that the whole line was accepted, and any option error
would have been reported first, with its own text and status.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("STUNNEL3_UPDATE_GOLDEN") == "1"  # rewrite the golden files
PREFIX = re.compile(r"^(\d{4}\.\d\d\.\d\d \d\d:\d\d:\d\d) LOG(\d)\[(\d+):(\d+)\]: ", re.M)
HINT = "\nTry 'stunnel -h' for more information.\n\n"
NOWHERE = "/nonexistent-stunnel3-dir/log"
ACCEPTED = f"Unable to open output file: {NOWHERE}"


def run(stunnel_bin, *args, cwd=None):
    return subprocess.run(
        [stunnel_bin, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
    )


def log_lines(stderr: str) -> list[tuple[int, str]]:
    """(level, text) of each 3.22 log line; fails on any other line."""
    lines = []
    for line in stderr.splitlines():
        match = PREFIX.match(line)
        assert match, f"not a 3.22 log line: {line!r}"
        lines.append((int(match.group(2)), line[match.end() :]))
    return lines


def masked(text: str) -> str:
    return PREFIX.sub("YYYY.MM.DD HH:MM:SS LOG\\2[PID:TID]: ", text)


def golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(actual)
    assert actual == path.read_text()


# Every option of SPEC §2 on a line that parses; the plaintext end added where the
# row has none.
ACCEPTED_LINES = [
    ["-c", "-r", "mail.example:465"],
    ["-T", "-r", "25"],
    ["-D", "7", "-F", "3"],
    ["-D", "mail.debug", "-F", "3"],
    ["-o", "/tmp/elsewhere.log", "-F", "3"],  # the last -o wins, as in 3.22
    ["-O", "a:SO_REUSEADDR=1", "-O", "l:SO_LINGER=1:60", "-O", "r:TCP_NODELAY=1", "-F3"],
    ["-C", "HIGH:!aNULL", "-F", "3"],
    ["-p", "stunnel.pem", "-F", "3"],
    ["-v", "3", "-A", "ca.pem", "-a", "/etc/ssl/certs", "-F", "3"],
    ["-S", "0", "-F", "3"],
    ["-t", "600", "-F", "3"],
    ["-u", "nobody", "-F", "3"],
    ["-n", "smtp", "-F", "3"],
    ["-n", "imap-", "-N", "imap", "-F", "3"],
    ["-s", "stunnel", "-g", "451", "-i", "-F", "3"],
    ["-P", "/var/run/", "-d", "127.0.0.1:4465", "-r", "25"],
    ["-P", "none", "-d", "[::1]:4465", "-l", "/bin/cat"],
    ["-R", "seed", "-B", "32", "-W", "-E", "/var/run/egd-pool", "-F", "3"],
    ["-I", "127.0.0.1", "-r", "[::1]:25"],
    ["-f", "-l", "/bin/cat", "--", "cat", "-u"],
    ["-L", "/bin/sh"],
    ["-/", "ssl", "-F", "3"],
    ["-fiF3", "-/ssl", "-nsmtp-"],
    "-D 7 -/ ssl -s 451 -g 451 -i -R seed -p stunnel.pem -n smtp- -f -F 3".split(),
]


@pytest.mark.parametrize("argv", ACCEPTED_LINES, ids=" ".join)
def test_every_option_is_accepted(stunnel_bin, argv):
    cut = argv.index("--") if "--" in argv else len(argv)  # operands follow `--`
    done = run(stunnel_bin, *argv[:cut], "-o", NOWHERE, *argv[cut:])
    assert log_lines(done.stderr) == [(3, ACCEPTED)]
    assert (done.returncode, done.stdout) == (1, "")


ERRORS = [
    (["-Q"], "Illegal option: 'Q'", 1),
    (["-fiQ"], "Illegal option: 'Q'", 1),
    (["--help"], "Illegal option: '-'", 1),
    (["-F"], "Illegal option: 'F'", 1),
    ([], "Either -r, -l (or -L) option must be used", 1),
    (["-d", "4465", "-f"], "Either -r, -l (or -L) option must be used", 1),
    (["-D", "9", "-F3"], "Illegal debug argument: 9", 1),
    (["-D", "nosuch.info", "-F3"], "Illegal debug argument: nosuch.info", 1),
    (["-O", "a:SO_NOSUCH=1", "-F3"], "Illegal socket option: a:SO_NOSUCH=1", 1),
    (["-O", "q:SO_DEBUG=1", "-F3"], "Illegal socket option: q:SO_DEBUG=1", 1),
    (["-v", "4", "-F3"], "Bad verify level", 1),
    (["-S", "7", "-F3"], "Bad -S value '7'", 1),
    (["-t", "0", "-F3"], "Illegal session timeout: 0", 1),
    (["-B", "-1", "-F3"], "Illegal number of random bytes: -1", 1),
    (["-n", "ftp", "-F3"], "Unsupported protocol: ftp", 1),
    (["-F", "three"], "Illegal file descriptor: three", 1),
    (["-d", "0", "-F3"], "Invalid port: 0", 2),
    (["-r", "mail:nosuchservice"], "Invalid port: nosuchservice", 2),
    (["-d", "[::1]:70000", "-F3"], "Invalid port: 70000", 2),
    (["-d", "1", "-d", "2", "-F3"], "Multiple -d not allowed", 1),
    (["-r", "1", "-r", "2"], "Multiple -r not allowed", 1),
    (["-l", "/bin/cat", "-L", "/bin/sh"], "Multiple -l or -L not allowed", 1),
    (
        ["-d", "1", "-r", "2", "-l", "/bin/cat"],
        "-d, -r and -l (or -L) options are not allowed together",
        1,
    ),
    (["-r", "25", "-F", "3"], "Only one of -r, -l (or -L) and -F may be used", 1),
    (["-o", NOWHERE, "-F", "3"], ACCEPTED, 1),
]


@pytest.mark.parametrize(("argv", "text", "status"), ERRORS, ids=lambda v: str(v))
def test_every_error_has_322s_words_and_status(stunnel_bin, argv, text, status):
    done = run(stunnel_bin, *argv)
    hint = status == 1 and text != ACCEPTED  # 3.22: print_info() after usage errors only
    body = done.stderr[: -len(HINT)] if hint else done.stderr
    if hint:
        assert done.stderr.endswith(HINT)
    assert log_lines(body) == [(3, text)]
    assert (done.returncode, done.stdout) == (status, "")


def test_log_line_golden(stunnel_bin):
    """3.22's line: local time, LOG<level>[<pid>:<tid>], and print_info's blank lines."""
    proc = subprocess.Popen(
        [stunnel_bin, "-Q"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    match = PREFIX.match(stderr)
    assert match and int(match.group(3)) == proc.pid  # the sh front execs Python: same pid
    golden("illegal_option.txt", masked(stderr))


def test_help_golden(stunnel_bin):
    done = run(stunnel_bin, "-h")
    assert (done.returncode, done.stdout) == (0, "")
    golden("help.txt", done.stderr)


def test_help_wins_where_getopt_meets_it(stunnel_bin):
    assert run(stunnel_bin, "-t", "5", "-h").returncode == 0  # before any mode check
    done = run(stunnel_bin, "-t", "0", "-h")  # an earlier error wins
    assert done.returncode == 1 and "Illegal session timeout: 0" in done.stderr


VERSION_FIRST = re.compile(
    r"^stunnel 3\.22 on \S+ \(stunnel3 \S+\) with Python 3\.\d+\.\d+, "
    r"pyOpenSSL \d[\w.]*, cryptography \d[\w.]*, OpenSSL \d\S* .+ "
    r"\((the system's, /\S+/libssl\.so\S*|cryptography's own copy, not the system's)\)$"
)


def test_version_golden(stunnel_bin):
    done = run(stunnel_bin, "-V")
    assert (done.returncode, done.stdout) == (0, "")
    first, rest = done.stderr.split("\n", 1)
    assert VERSION_FIRST.match(first), first
    # the table's last column is the running kernel's default: masked
    table_row = re.compile(r"^(\t(?=(?:SO|IP|TCP)_).{46}).*$", re.M)  # name + 3 columns
    assert re.search(r"^\tSO_RCVBUF\s.*\s\d+$", rest, re.M)
    golden("version.txt", "<first line>\n" + table_row.sub(r"\1 <os default>", rest))


def test_version_wins_over_later_errors(stunnel_bin):
    done = run(stunnel_bin, "-V", "-Q")
    assert done.returncode == 0 and done.stderr.startswith("stunnel 3.22 on ")


def test_startup_lines_then_the_engine(stunnel_bin, tmp_path):
    """Past the options: the service name and STUNNEL_INFO at notice, then the engine,
    whose first check (the pem, 3.22's `<pem>: <strerror> (<errno>)`) ends the run."""
    done = run(stunnel_bin, "-f", "-F", "3", "-N", "smtps", "-p", "missing.pem", cwd=tmp_path)
    lines = log_lines(done.stderr)
    assert lines[0] == (5, "Using 'smtps' as tcpwrapper service name")
    assert lines[1][0] == 5 and VERSION_FIRST.match(lines[1][1])
    assert lines[-1] == (3, "missing.pem: No such file or directory (2)")
    assert done.returncode == 1


def test_debug_level_filters_the_startup_lines(stunnel_bin, tmp_path):
    done = run(stunnel_bin, "-f", "-D", "4", "-F", "3", "-p", "missing.pem", cwd=tmp_path)
    assert [level for level, _ in log_lines(done.stderr)] == [3]
    assert done.returncode == 1

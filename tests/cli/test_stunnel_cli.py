"""The installed `stunnel` as a process: every option, every error, -h, -V, the log line.

An option that parses is shown to parse without serving anything: `-p` at the
end of the line names a pem that is not there, which 3.22 (and so ours) checks
right after the log opens, so the service-name line and then one set-up error
(exit 1, no usage hint) are proof that the whole line was accepted: any option
error would have been reported first, with its own text and status.
tests/oracle holds the same lines against the real 3.22.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

from stunnel3.engine.context import NO_TLS

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("STUNNEL3_UPDATE_GOLDEN") == "1"  # rewrite the golden files
PREFIX = re.compile(r"^(\d{4}\.\d\d\.\d\d \d\d:\d\d:\d\d) LOG(\d)\[(\d+):(\d+)\]: ", re.M)
HINT = "\nTry 'stunnel -h' for more information.\n\n"
MISSING = "/nonexistent-stunnel3-dir/stunnel.pem"


def run(stunnel_bin, *args, cwd=None, env=None):
    """stunnel with args, no input; env: variables added to ours."""
    return subprocess.run(
        [stunnel_bin, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
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
    ["-c", "-r", "localhost:465"],
    ["-T", "-r", "25"],
    ["-D", "7", "-F", "3"],
    ["-D", "mail.debug", "-F", "3"],
    ["-o", "/nonexistent-stunnel3-dir/log", "-F", "3"],  # said, and the lines go to stderr
    ["-O", "a:SO_REUSEADDR=1", "-O", "l:SO_LINGER=1:60", "-O", "r:TCP_NODELAY=1", "-F3"],
    ["-C", "HIGH:!aNULL", "-F", "3"],
    ["-p", "stunnel.pem", "-F", "3"],
    ["-v", "3", "-A", "ca.pem", "-a", "/etc/ssl/certs", "-F", "3"],
    ["-S", "0", "-F", "3"],
    ["-t", "600", "-F", "3"],
    ["-u", "nobody", "-F", "3"],
    ["-n", "smtp", "-F", "3"],
    ["-n", "imap-", "-N", "imap", "-F", "3"],
    ["-s", "nobody", "-g", "451", "-i", "-F", "3"],
    ["-P", "/var/run/", "-d", "127.0.0.1:4465", "-r", "25"],
    ["-P", "none", "-d", "[::1]:4465", "-l", "/bin/cat"],
    ["-R", "seed", "-B", "32", "-W", "-E", "/var/run/egd-pool", "-F", "3"],
    ["-I", "127.0.0.1", "-r", "[::1]:25"],
    ["-t", "-5", "-B", "-1", "-n", "ftp", "-P", "relative", "-F", "3"],  # all 3.22 took
    ["-c", "-l", "/bin/cat"],
    ["-c", "-r", "25", "-l", "/bin/cat", "--", "cat", "-u"],
    ["-l", "/bin/echo", "echo", "-c", "-r", "25"],  # glibc permutes: -c and -r count
    ["-f", "-l", "/bin/cat", "--", "cat", "-u"],
    ["-L", "/bin/sh"],
    ["-/", "ssl", "-F", "3"],
    ["-fiF3", "-/ssl", "-nsmtp-"],
    "-D 7 -/ ssl -s 451 -g 451 -i -R seed -p stunnel.pem -n smtp- -f -F 3".split(),
]


@pytest.mark.parametrize("argv", ACCEPTED_LINES, ids=" ".join)
def test_every_option_is_accepted(stunnel_bin, argv, tmp_path):
    cut = argv.index("--") if "--" in argv else len(argv)  # operands follow `--`
    done = run(stunnel_bin, "-f", *argv[:cut], "-p", MISSING, *argv[cut:], cwd=tmp_path)
    lines = [line for line in log_lines(done.stderr) if not line[1].startswith("Unable to open")]
    assert lines[0][1].startswith("Using '") and lines[0][1].endswith(
        "' as tcpwrapper service name"
    )
    jailed = "-/" in argv or "-fiF3" in argv
    wanted = "chroot ssl: No such file or directory (2)" if jailed else (
        f"{MISSING}: No such file or directory (2)")  # fmt: skip
    if not jailed and ("smtp" in argv or "imap-" in argv):  # no pem stops no STARTTLS mode
        assert lines[1:3] == [(3, wanted), (3, NO_TLS)]
        assert lines[-2:] == [(3, "-F 3: Bad file descriptor (9)"),
                              (3, "Failed to initialize remote file descriptor")]  # fmt: skip
        assert (done.returncode, done.stdout) == (0, "")
        return
    assert lines[1:] == [(3, wanted)]
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
    (["-O", "a:SO_NOSUCH=1", "-F3"], "Illegal socket option: a:SO_NOSUCH", 1),
    (["-O", "q:SO_DEBUG=1", "-F3"], "Illegal socket option: q:SO_DEBUG=1", 1),
    (["-v", "4", "-F3"], "Bad verify level", 1),
    (["-S", "7", "-F3"], "Bad -S value '7'", 1),
    (["-t", "0", "-F3"], "Illegal session timeout: 0", 1),
    (["-F", "three"], "Illegal file descriptor: three", 1),
    (["-d", "0", "-F3"], "Invalid port: 0", 2),
    (["-r", "127.0.0.1:nosuchservice"], "Invalid port: nosuchservice", 2),
    (["-r", ":25"], "Error resolving '': no address", 1),
    (["-I", "", "-r", "25"], "Error resolving '': no address", 1),
    (["-d", "[::1]:70000", "-F3"], "Invalid port: 70000", 2),
    (["-d", "1", "-d", "2", "-F3"], "Multiple -d not allowed", 1),
    (["-r", "1", "-r", "2"], "Multiple -r not allowed", 1),
    (["-l", "/bin/cat", "-L", "/bin/sh"], "Multiple -l or -L not allowed", 1),
    (
        ["-d", "1", "-r", "2", "-l", "/bin/cat"],
        "-d, -r and -l (or -L) options are not allowed together",
        1,
    ),
    (["-r", "25", "-F", "3"], "-F, -r and -l (or -L) options are not allowed together", 1),
]


@pytest.mark.parametrize(("argv", "text", "status"), ERRORS, ids=lambda v: str(v))
def test_every_error_has_322s_words_and_status(stunnel_bin, argv, text, status):
    done = run(stunnel_bin, *argv)
    hint = status == 1 and not text.startswith(
        "Error resolving"
    )  # 3.22: print_info() after usage errors
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
    r"^stunnel 3\.22 on \S+ FORK(\+LIBWRAP)? \(stunnel3 \S+\) with Python 3\.\d+\.\d+, "
    r"pyOpenSSL \d[\w.]*, cryptography \d[\w.]*, OpenSSL \d\S* .+ "
    r"\((the system's, /\S+/libssl\.so\S*|cryptography's own copy, not the system's)\)$"
)


def test_version_golden(stunnel_bin):
    done = run(stunnel_bin, "-V")
    assert (done.returncode, done.stdout) == (0, "")
    blank, first, rest = done.stderr.split("\n", 2)
    assert blank == "" and VERSION_FIRST.match(first), first  # 3.22 began with a blank line
    # the table's last column is the running kernel's default: masked
    table_row = re.compile(r"^(\t(?=(?:SO|IP|TCP)_).{46}).*$", re.M)  # name + 3 columns
    assert re.search(r"^\tSO_RCVBUF\s.*\s\d+$", rest, re.M)
    golden("version.txt", "<first line>\n" + table_row.sub(r"\1 <os default>", rest))


def test_version_wins_over_later_errors(stunnel_bin):
    done = run(stunnel_bin, "-V", "-Q")
    assert done.returncode == 0 and done.stderr.startswith("\nstunnel 3.22 on ")


def test_startup_lines_then_the_engine(stunnel_bin, tmp_path):
    """Past the options, 3.22's order: the service name (notice), then the pem's check,
    `<pem>: <strerror> (<errno>)`, which ends the run before STUNNEL_INFO."""
    done = run(stunnel_bin, "-f", "-F", "3", "-N", "smtps", "-p", "missing.pem", cwd=tmp_path)
    assert log_lines(done.stderr) == [
        (5, "Using 'smtps' as tcpwrapper service name"),
        (3, "missing.pem: No such file or directory (2)"),
    ]
    assert done.returncode == 1


def test_the_version_line_comes_once_the_context_is_made(stunnel_bin, tmp_path, pki):
    pem = tmp_path / "stunnel.pem"
    pem.write_bytes(pki["server"].read_bytes())
    pem.chmod(0o600)
    done = run(stunnel_bin, "-f", "-D", "6", "-r", "1", cwd=tmp_path)
    lines = log_lines(done.stderr)
    assert lines[:2] == [
        (5, "Using '1' as tcpwrapper service name"),
        (6, "PRNG seeded successfully"),
    ]
    assert lines[2][0] == 5 and VERSION_FIRST.match(lines[2][1])


def test_debug_level_filters_the_startup_lines(stunnel_bin, tmp_path):
    done = run(stunnel_bin, "-f", "-D", "4", "-F", "3", "-p", "missing.pem", cwd=tmp_path)
    assert [level for level, _ in log_lines(done.stderr)] == [3]
    assert done.returncode == 1


def missing_from(synopsis: str, letters: set[str]) -> set[str]:
    return {c for c in letters if not re.search(rf"[\[{{|] ?-{re.escape(c)}(?![A-Za-z])", synopsis)}


def test_every_option_of_help_is_in_its_synopsis(stunnel_bin):
    """-h once left -W out of its synopsis (issue #16); stunnel(8)'s is checked too."""
    from stunnel3.engine.usage import OPTION_LINES, SYNOPSIS
    from stunnel3.options import OPTSTRING

    listed = set(re.findall(r"^  -(\S)", OPTION_LINES, re.M))
    assert listed == set(OPTSTRING) - {":"}
    assert missing_from(SYNOPSIS, listed) == set()
    assert missing_from(SYNOPSIS.replace("-W", ""), {"W"}) == {"W"}  # the check can fail
    assert run(stunnel_bin, "-h").stderr.startswith(SYNOPSIS)

"""The command line, side by side with the real 3.22: every option letter, good,
bad and missing values, combinations, clusters and operands.

Each vector runs both programs with the same argv, stdin (empty), environment
and working directory (conftest.py), and compares exit status, stdout, stderr
and every log line (stderr, -o file, syslog through a real rsyslogd), masked
and normalised as compare.py says. `{closed}` is a port that refuses every
connection, so a line that is accepted ends at its first connection attempt.

A vector that names a deliberate difference (docs/migration.md) asserts the
other way round: the two differ, and ours does what the table says (exit
status and first error line), so that a difference no longer there is noticed.
"""

import contextlib
import shlex
import socket
from pathlib import Path

import pytest

from oracle.compare import DIFFERENCES, differences

R = "-f -D 7 -r {closed}"  # accepted: ends at the refused connection, logged on stderr
C = "-f -D 7 -c -r {closed}"  # the same in client mode (no pem needed)

# (argv, None) must be equal; (argv, (difference, our status, our first error)) must not.
VECTORS: list[tuple[str, tuple | None]] = [
    # -- unknown options, clusters, getopt's rules
    ("-Q", None),
    ("-x -h", None),
    ("-fQ", None),
    ("-fcQ -h", None),
    ("--help", None),
    ("-:", None),
    ("-1", None),
    ("-", None),
    ("-- -Q", None),
    ("", None),
    ("-f", None),
    ("-c", None),
    ("-fc", None),
    ("-V -Q", None),
    ("-t 5 -D 6 -P /run/x/ -p x.pem -O a:SO_LINGER=1:5 -O l:SO_RCVTIMEO=3 -V", None),
    ("-O r:SO_BINDTODEVICE=lo -O a:IP_TTL=9 -O a:IP_TTL=10 -O a:SO_REUSEADDR=0 -V", None),
    ("-h", ("usage text", 0, None)),
    ("-Q -h", None),
    ("-t 0 -h", None),
    # -- every option that takes a value, with the value missing
    *[(f"{R} -{letter}", None) for letter in "AapvdlLrsgtunNCDOERBPSoI"],
    # -- glibc permutes: options after operands count, -- ends them
    ("-l /bin/echo echo -x", None),
    ("-l /bin/echo echo -Q -f", None),
    ("-f -D 7 -l /bin/true true -c -r {closed}", None),
    ("-f -D 7 -l /bin/true -- true -c -r {closed}", None),
    ("true -f -D 7 -c -l /bin/true", None),
    ("-f -D 7 -r {closed} extra words -c", None),
    # -- -D: levels, names, facilities (without -f: syslog)
    ("-D 7 -r {closed}", None),
    ("-D 0 -r {closed}", None),
    ("-D 3 -r {closed}", None),
    ("-D warning -r {closed}", None),
    ("-D DEBUG -r {closed}", None),
    ("-D mail.debug -r {closed}", None),
    ("-D MAIL.Info -r {closed}", None),
    ("-D authpriv.7 -r {closed}", None),
    ("-D ftp.7 -r {closed}", None),
    ("-D local7.5 -r {closed}", None),
    ("-D auth.warning -r {closed}", None),
    ("-D mail..info.x -r {closed}", None),
    ("-D 8 -r 25", None),
    ("-D 77 -r 25", None),
    ("-D '' -r 25", None),
    ("-D loud -r 25", None),
    ("-D nosuch.7 -r 25", None),
    ("-D ntp.7 -r 25", None),
    ("-D .7 -r 25", None),
    ("-D 2 -Q", None),
    ("-D 2 -D 9", None),
    ("-D 2 -D nosuch.5", None),
    ("-D 1 -d 0 -r 25", None),
    ("-D mail. -r 25", ("crash", 1, "Illegal debug argument: mail.")),
    ("-D . -r 25", ("crash", 1, "Illegal debug argument: .")),
    # -- -v, -S, -t, -B: atoi values
    (f"{R} -v 0", None),
    (f"{R} -v 1", None),
    (f"{R} -v 2 -A ca.pem", None),
    (f"{R} -v 3 -A ca.pem -a certs", None),
    (f"{R} -v x", None),
    (f"{R} -v 2abc", None),
    (f"{R} -v 4294967297", None),
    ("-v 4 -r 25", None),
    ("-v -1 -r 25", None),
    (f"{R} -S 0 -v 1", None),
    (f"{R} -S 1 -v 1", None),
    (f"{R} -S 3", None),
    ("-S 4 -r 25", None),
    ("-S -2 -r 25", None),
    (f"{R} -t 1", None),
    (f"{R} -t -5", None),
    (f"{R} -t ' 600s'", None),
    ("-t 0 -r 25", None),
    ("-t x -r 25", None),
    (f"{R} -R seed -B 0", None),
    (f"{R} -R seed -B -1", None),
    (f"{R} -R seed -B 10 -W", None),
    # -- the pem
    (f"{R} -p missing.pem", None),
    (f"{R} -p cert.pem", None),
    (f"{R} -p key.pem", None),
    (f"{R} -p garbage.pem", None),
    (f"{R} -p world.pem", None),
    (f"{R} -p root-only.pem", None),
    (f"{R} -p certs", None),
    (f"{C} -p missing.pem", None),
    (f"{C} -p stunnel.pem", None),
    (f"{R} -p ec.pem", ("TLS keys", 0, "remote connect: Connection refused (111)")),
    (
        f"{R} -p mismatch.pem",
        ("TLS library texts", 1, "Private key does not match the certificate"),
    ),
    # a STARTTLS mode goes on without TLS (the client hears why: here -r is refused first)
    (
        f"{R} -n smtp -p missing.pem",
        ("broken certificate", 0, "missing.pem: No such file or directory (2)"),
    ),
    (
        f"{R} -n pop3 -p mismatch.pem",
        ("broken certificate", 0, "Private key does not match the certificate"),
    ),
    # -- the seed
    (f"{R} -R seed", None),
    (f"{R} -R seed -W", None),
    (f"{R} -R missing", None),
    (f"{R} -R empty", None),
    (f"{R} -R certs", None),
    (f"{R} -E /nonexistent/egd", None),
    (f"{R} -R seed -E /nonexistent/egd", None),
    # -- verification: -A and -a need -v
    (f"{R} -A missing.pem", None),
    (f"{R} -a /nonexistent", None),
    (f"{R} -v 1 -A missing.pem", None),
    (f"{R} -v 1 -a /nonexistent", None),
    (f"{R} -v 1 -A garbage.pem", None),
    (f"{R} -v 2 -S 0 -A ca.pem", None),
    (f"{C} -v 2 -A ca.pem", None),
    # -- ciphers, ident, names
    (f"{R} -C HIGH", None),
    (f"{R} -C NONSENSE", None),
    (f"{C} -C NONSENSE", None),
    (f"{R} -u nobody", None),
    (f"{R} -N smtps", None),
    (f"{R} -N smtp-tls", None),
    (f"{R} -N 'a b/c:d'", None),
    (f"{R} -N ''", None),
    ("-f -D 7 -N smtp-tls -l /bin/true", None),
    ("-f -D 7 -l /bin/true -N x.y", None),
    ("-f -D 7 -l /usr/bin/true -- argv0 -x", None),
    ("-f -D 7 -r 127.0.0.1:{closed}", None),
    ("-f -D 7 -r localhost:{closed}", None),
    # -- -s and -g outside daemon mode: 3.22 ignores them
    (f"{R} -s nobody", None),
    (f"{R} -s nobody -g nogroup", None),
    (f"{R} -s nosuchuser -g nosuchgroup", None),
    # -- -n
    (f"{R} -n smtp", None),
    (f"{R} -n pop3", None),
    (f"{R} -n nntp", None),
    (f"{R} -n ftp", None),
    (f"{R} -n smb", None),
    (f"{R} -n telnet", None),
    (f"{C} -n smtp", None),
    (f"{C} -n pop3", None),
    (f"{C} -n nntp", None),
    (f"{C} -n ftp", None),
    (f"{C} -n smb", None),
    # -- -O
    (f"{R} -O r:SO_KEEPALIVE=1", None),
    (f"{R} -O r:SO_LINGER=1:5 -O r:TCP_NODELAY=1 -O r:SO_KEEPALIVE=1", None),
    (f"{R} -O r:SO_RCVTIMEO=5 -O r:SO_SNDTIMEO=5:10", None),
    (f"{R} -O r:IP_TOS=16 -O r:IP_TTL=30", None),
    (f"{R} -O r:SO_BINDTODEVICE=lo", None),
    (f"{R} -O r:SO_BINDTODEVICE=nosuchdev0", None),
    (f"{R} -O l:SO_KEEPALIVE=1 -O a:SO_KEEPALIVE=1", None),
    (f"{R} -O r:TCP_NODELAY=x", None),
    ("-O a:SO_NOSUCH=1 -r 25", None),
    ("-O q:SO_DEBUG=1 -r 25", None),
    ("-O a -r 25", None),
    ("-O a: -r 25", None),
    ("-O a:SO_DEBUG -r 25", None),
    ("-O a:so_debug=1 -r 25", None),
    ("-O a:TCP_MAXSEG=536 -r 25", None),
    ("-O a:SO_BINDTODEVICE=0123456789abcdef -r 25", None),
    # -- -o
    (f"{R} -o out.log", None),
    ("-D 7 -r {closed} -o out.log", None),
    (f"{R} -o /nonexistent/out.log", None),
    ("-D 7 -r {closed} -o /nonexistent/out.log", None),
    (f"{R} -o first.log -o second.log", None),
    # -- -I, -T
    (f"{R} -I 127.0.0.1", None),
    (f"{R} -I localhost", None),
    (f"{R} -I 192.0.2.1", None),
    ("-I nosuch.invalid -r 25", None),
    ("-I '' -r 25", None),
    (f"{R} -T", None),
    (
        "-f -D 7 -T -l /bin/true",
        ("transparent proxy", 1, "Transparent proxy (-T) works only in server mode with -r"),
    ),
    # -- ports and hosts
    ("-r 0", None),
    ("-r x", None),
    ("-r mail:nosuchservice", None),
    ("-r 127.0.0.1:", None),
    ("-r :25", None),
    ("-r nosuch.invalid:25", None),
    ("-r nosuch.invalid:0", None),
    ("-d 0 -r 25", None),
    ("-d nosuch.invalid:25 -r 25", None),
    ("-f -D 7 -r localhost:{closed} -I nosuch.invalid", None),
    ("-r 70000", ("ports", 2, "Invalid port: 70000")),
    ("-r 65561", ("ports", 2, "Invalid port: 65561")),
    ("-r 25x", ("ports", 2, "Invalid port: 25x")),
    ("-d -1 -r 25", ("ports", 2, "Invalid port: -1")),
    # -- modes, and their combinations
    ("-d 4465", None),
    ("-d 4465 -f", None),
    ("-d 1 -d 2 -r 25", None),
    ("-r 1 -r 2", None),
    ("-l /bin/cat -L /bin/sh", None),
    ("-l /bin/cat -l /bin/sh", None),
    ("-L /bin/cat -l /bin/sh", None),
    ("-d 1 -r 2 -l /bin/cat", None),
    ("-d 1 -l /bin/cat -r 2", None),
    ("-f -D 7 -r {closed} -l /bin/true", None),
    ("-f -D 7 -c -r {closed} -l /bin/true", None),
    ("-f -D 7 -l /bin/true -r {closed}", None),
    ("-f -D 7 -c -l /bin/true", None),
    ("-f -D 7 -l /bin/true", None),
    ("-f -D 7 -L /bin/true", None),
    ("-f -D 7 -l /nonexistent/program", None),
    (f"{R} -d 127.0.0.1:1 -p missing.pem", None),
    ("-f -D 7 -d 127.0.0.1:1 -r 25 -P relative.pid", None),
    ("-f -D 7 -d 127.0.0.1:1 -r 25 -P /nonexistent/", None),
    ("-f -D 7 -d 127.0.0.1:1 -r 25 -P /nonexistent/dir/x.pid", None),
    ("-D 7 -d 127.0.0.1:1 -r 25 -P relative.pid", ("failed start", 1, None)),
    # daemon mode: 3.22 looked the names up after bind, the group first
    ("-f -D 7 -d 127.0.0.1:{free} -P none -r 25 -s nosuchuser", None),
    ("-f -D 7 -d 127.0.0.1:{free} -P none -r 25 -s nosuchuser -g nosuchgroup", None),
    ("-f -D 7 -d 127.0.0.1:{free} -P none -r 25 -O a:SO_BINDTODEVICE=nosuchdev0", None),
    # -- clusters with values
    ("-fD7 -r{closed}", None),
    ("-fcD7 -r{closed} -v1", None),
    ("-fDmail.7 -cr{closed}", None),
    ("-ft0 -r25", None),
    # -- the sg2 options: ours to define, refused by 3.22
    (
        "-f -D 7 -/ /nonexistent -F 3",
        ("sg2", 1, "chroot /nonexistent: No such file or directory (2)"),
    ),
    ("-fiF3 -p missing.pem", ("sg2", 1, "missing.pem: No such file or directory (2)")),
    ("-F three", ("sg2", 1, "Illegal file descriptor: three")),
    ("-F 3 -r {closed}", ("sg2", 1, "-F, -r and -l (or -L) options are not allowed together")),
]


def expand(argv: str, closed_port: int) -> list[str]:
    """{closed}: the refusing port; {free}: one to bind (SO_REUSEADDR lets both runs)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    return shlex.split(argv.replace("{closed}", str(closed_port)).replace("{free}", str(free)))


def test_there_are_enough_vectors_and_every_letter_is_in_one():
    assert len(VECTORS) >= 150
    words = " ".join(argv for argv, _ in VECTORS)
    for letter in "AacpvdfTlLrsgtunNhCDOERWBVPSoI":
        assert f"-{letter}" in words or any(
            word.startswith("-") and letter in word for word in words.split()
        ), letter


@pytest.mark.parametrize(("argv", "deliberate"), VECTORS, ids=[v for v, _ in VECTORS])
def test_same_as_322(pair, closed_port, argv, deliberate):
    oracle, ours = pair.both(expand(argv, closed_port))
    found = differences(oracle, ours)
    if deliberate is None:
        assert found == [], "\n".join(found)
        return
    name, status, first_error = deliberate
    assert name in DIFFERENCES
    assert found, f"3.22 now does what ours does: {name!r} is no longer a difference"
    assert ours.status == status, ours
    if first_error is not None:
        assert ours.first_error() == first_error, ours.log


def test_a_daemon_that_puts_itself_in_the_background_is_not_left_running(pair):
    """Without -f 3.22 forks into the background and its first process ends: the run
    still leaves nothing (sandbox.py ends what a program leaves, by pid)."""
    argv = expand("-D 7 -d 127.0.0.1:{free} -P none -r 25", 0)
    port = int(argv[argv.index("-d") + 1].rsplit(":", 1)[1])
    outcome = pair.run("oracle", argv)
    assert outcome.status == 0  # its foreground part ended: the daemon was under way
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nobody listens there any more
    address = argv[argv.index("-d") + 1].encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                words = (entry / "cmdline").read_bytes().split(b"\0")
                assert not (b"-d" in words and address in words)

"""A bad STUNNEL3_ bound is one fatal line at start-up, exit 1, in every mode (issue #18
item 6): before anything is read or bound, in 3.22's line style."""

import re
import socket

import pytest
from test_stunnel_cli import run

PREFIX = re.compile(r"^\d{4}\.\d\d\.\d\d \d\d:\d\d:\d\d LOG(\d)\[\d+:\d+\]: (.*)$")


def lines(stderr: str) -> list[tuple[int, str]]:
    found = []
    for line in stderr.splitlines():
        match = PREFIX.match(line)
        assert match, f"not a log line: {line!r}"
        found.append((int(match.group(1)), match.group(2)))
    return found


def stunnel(stunnel_bin, args, **env):
    return run(stunnel_bin, *args, env=env)


@pytest.mark.parametrize(
    ("name", "value", "line"),
    [
        ("STUNNEL3_IDLE_TIMEOUT", "abc", "idle timeout: {}=abc (seconds above 0)"),
        ("STUNNEL3_IDLE_TIMEOUT", "0", "idle timeout: {}=0 (seconds above 0)"),
        ("STUNNEL3_HANDSHAKE_TIMEOUT", "-1", "handshake timeout: {}=-1 (seconds above 0)"),
        ("STUNNEL3_DIALOGUE_LINES", "many", "dialogue lines: {}=many (lines above 0)"),
    ],
)
def test_inetd_mode_says_it_first_and_exits_1(stunnel_bin, pki, name, value, line):
    done = stunnel(stunnel_bin, ["-f", "-D", "7", "-p", str(pki["server"]), "-r", "1"],
                   **{name: value})  # fmt: skip
    assert done.returncode == 1
    said = lines(done.stderr)
    assert said[0] == (5, "Using '1' as tcpwrapper service name")  # the log opened: 3.22's
    assert said[-1] == (3, "Illegal " + line.format(name))
    assert not any("Certificate" in text or "PRNG" in text for _, text in said)


def test_the_same_value_within_bounds_is_taken(stunnel_bin, pki):
    done = stunnel(stunnel_bin, ["-f", "-D", "7", "-p", str(pki["server"]), "-r", "1"],
                   STUNNEL3_IDLE_TIMEOUT="0.5")  # fmt: skip
    assert done.returncode == 0  # the connection to port 1 is refused: the session ended
    assert "Illegal" not in done.stderr


def test_a_daemon_says_it_and_binds_nothing(stunnel_bin, pki):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = stunnel(stunnel_bin, ["-f", "-D", "7", "-p", str(pki["server"]), "-d",
                                 f"127.0.0.1:{port}", "-r", "1"],
                   STUNNEL3_SESSION_TIMEOUT="forever")  # fmt: skip
    assert done.returncode == 1
    assert "Illegal session timeout: STUNNEL3_SESSION_TIMEOUT=forever (seconds above 0)" in (
        done.stderr
    )
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0

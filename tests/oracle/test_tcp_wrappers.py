"""TCP wrappers as the libwrap build of 3.22 checks them, side by side with it.

hosts.allow and hosts.deny are the sandbox's (sandbox.sh bind-mounts them over
the machine's in a private mount namespace): the machine's own files are never
read or touched. The service name is -N made safe: `smtp-tls` is `smtp.tls`.
"""

import glob
import os
import shutil
import socket
import ssl

import pytest

from oracle.compare import Line, differences
from oracle.served import TIMEOUT, Served, free_port
from oracle.test_sessions import Echo, echo_once, inetd_session


@pytest.fixture
def wrappers(box):
    yield box.wrappers
    box.wrappers()  # no rules for the next test


def refused(port: int) -> bytes | None:
    """None if the connection was dropped before any TLS, else what came back."""
    try:
        return echo_once(port, b"knock\n", 6)
    except (ssl.SSLError, OSError):
        return None


ARGS = ["-D", "7", "-N", "smtp-tls", "-l", "/bin/cat"]


@pytest.mark.parametrize(
    ("allow", "deny", "served"),
    [
        ("", "smtp.tls: 127.0.0.1\n", False),  # the safe name is the one that counts
        ("", "smtp-tls: ALL\n", True),  # not the one given to -N
        ("smtp.tls: 127.0.0.1\n", "ALL: ALL\n", True),
        ("", "ALL: ALL\n", False),
        ("", "ALL EXCEPT smtp.tls: ALL\n", True),
    ],
)
def test_inetd_mode_checks_the_peer_of_fd_0(pair, wrappers, allow, deny, served):
    wrappers(allow, deny)
    (theirs, oracle), (mine, ours) = inetd_session(pair, ARGS, refused)
    assert theirs == mine == (b"knock\n" if served else None)
    assert differences(oracle, ours) == []
    refusal = Line(4, "Connection from 127.0.0.1:PORT REFUSED by libwrap", "daemon")
    assert (refusal in ours.log) is not served


def test_daemon_mode_checks_every_connection_and_serves_on(pair, wrappers):
    wrappers(deny="smtp.tls: 127.0.0.1\n")
    port = free_port()
    outcomes = {}
    for which in ("oracle", "ours"):
        served = Served.daemon(pair, which, ["-f", "-P", "none", *ARGS], port)
        try:
            assert refused(port) is None
            served.wait_said(" finished (0 left)", 1)
            wrappers()  # hosts_access reads the files at each connection
            assert refused(port) == b"knock\n"
            served.wait_said(" finished (0 left)", 2)
            wrappers(deny="smtp.tls: 127.0.0.1\n")
            assert refused(port) is None
            served.wait_said(" finished (0 left)", 3)
            assert served.said().count("REFUSED by libwrap") == 2
        finally:
            served.stop()
        outcomes[which] = served.stderr_outcome()
    assert differences(outcomes["oracle"], outcomes["ours"]) == []


def test_the_users_jailed_chain_is_checked_before_the_jail(pair, wrappers, tmp_path, makesock_bin):
    """Ours only (sg2's -/ -i -F): fd 0 is judged while /etc/hosts.deny is reachable."""
    jail = tmp_path / "ssl"
    jail.mkdir()
    shutil.copy(pair.workdir.template / "stunnel.pem", jail / "stunnel.pem")
    wrappers(deny="smtp.tls: 127.0.0.1\n")
    line = ["-f", "-D", "7", "-/", str(jail), "-s", "nobody", "-g", "nogroup", "-i"]
    line += ["-p", "stunnel.pem", "-N", "smtp-tls", "-n", "smtp-", "-F", "3"]
    line += ["-makesock_connect_to", "/bin/cat"]
    served = Served.inetd(pair, "ours", line, front=[makesock_bin])
    try:
        with socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as client:
            try:
                assert client.recv(100) == b""  # dropped: no greeting, nothing
            except ConnectionResetError:
                pass
        served.sessions_ended(1)
    finally:
        served.stop()
    said = served.said()
    assert "Connection from 127.0.0.1:" in said and "REFUSED by libwrap" in said
    assert "Entered the jail" in said  # 3.22's place for the verdict: after the start


def test_a_daemon_in_a_jail_reads_the_jails_own_rules(pair, wrappers, tmp_path):
    """Ours only (sg2's -/): clients come after the chroot, where libwrap reads jail/etc."""
    jail = tmp_path / "jail"
    (jail / "etc").mkdir(parents=True)
    shutil.copy(pair.workdir.template / "stunnel.pem", jail / "stunnel.pem")
    (jail / "etc" / "hosts.deny").write_text("echo: 127.0.0.1\n")
    echo = Echo()
    echo.start()
    port = free_port()
    args = ["-f", "-D", "7", "-P", "none", "-/", str(jail), "-p", "stunnel.pem"]
    args += ["-N", "echo", "-r", f"127.0.0.1:{echo.port}"]
    served = Served.daemon(pair, "ours", args, port)
    try:
        assert refused(port) is None
        (jail / "etc" / "hosts.deny").write_text("")
        assert refused(port) == b"knock\n"
    finally:
        served.stop()
        echo.close()


def libwrap_files() -> tuple[str, ...]:
    found = {os.path.realpath(p) for p in glob.glob("/usr/lib/*/libwrap.so.0*")}
    found |= {os.path.realpath(p) for p in glob.glob("/lib/*/libwrap.so.0*")}
    assert found, "libwrap0 is not installed (.ci/setup installs it)"
    return tuple(sorted(found))


def test_without_libwrap_nothing_claims_tcp_wrappers(pair, wrappers):
    """The library hidden (an empty file over it, in the sandbox): one warning at start,
    no `Using ... as tcpwrapper service name`, -V says FORK, and hosts.deny is not read."""
    wrappers(deny="ALL: ALL\n")
    hide = libwrap_files()
    served = Served.inetd(pair, "ours", ARGS, hide=hide)
    try:
        assert refused(served.port) == b"knock\n"
        served.sessions_ended(1)
    finally:
        served.stop()
    lines = served.outcome().log
    assert lines[0] == Line(
        4,
        "TCP wrappers are not in use: libwrap.so.0 is not installed, so /etc/hosts.allow "
        "and /etc/hosts.deny are not read (service name 'smtp.tls')",
        "daemon",
    )
    assert not any(
        "tcpwrapper" in line.text or "libwrap" in line.text.lower() for line in lines[1:]
    )
    version = pair.run("ours", ["-V"], hide=hide)
    assert " FORK (stunnel3 " in version.stderr[1] and "LIBWRAP" not in "".join(version.stderr)
    with_it = pair.run("ours", ["-V"])
    assert " FORK+LIBWRAP (stunnel3 " in with_it.stderr[1]

"""-D facility.level through a real syslog daemon: facility and severity per line.

rsyslogd, started by the sandbox with its own configuration on a private
/dev/log (sandbox.py), writes each line with the facility and severity it
received, so a `-D ftp.7` that reached syslog as daemon.* (issue #18) fails
here. Every facility of the one table (log.FACILITIES) is tried against the
real 3.22, and the users' jailed chain is run for real: its lines are sent
after the chroot, through the socket opened before it.
"""

import shutil
import smtplib

import pytest

from oracle.compare import SEVERITIES, differences
from oracle.served import Served
from stunnel3.log import FACILITIES


@pytest.mark.parametrize("facility", sorted(FACILITIES))
def test_every_facility_arrives_as_itself_at_each_level(pair, closed_port, facility):
    oracle, ours = pair.both(["-D", f"{facility.upper()}.debug", "-r", str(closed_port)])
    assert differences(oracle, ours) == []
    assert ours.log and {line.facility for line in ours.log} == {facility}
    seen = {(line.level, line.text.split(" ", 1)[0]) for line in ours.log}
    assert {(5, "Using"), (7, "RAND_status"), (6, "PRNG"), (3, "remote")} <= seen


def test_levels_keep_their_severity_names(pair, closed_port):
    for level, name in enumerate(SEVERITIES):
        oracle, ours = pair.both(["-D", f"local4.{name}", "-r", str(closed_port)])
        assert differences(oracle, ours) == []
        assert all(line.level <= level and line.facility == "local4" for line in ours.log)


def test_the_jailed_chain_logs_with_its_facility_from_inside_the_jail(
    pair, box, tmp_path, makesock_bin
):
    """The users' line with -D local3.7 and no -f: every line, from the start to the
    SMTP dialogue after the chroot and the drop to nobody, reaches syslog as local3."""
    jail = tmp_path / "ssl"
    jail.mkdir()
    shutil.copy(pair.workdir.template / "stunnel.pem", jail / "stunnel.pem")
    (jail / "stunnel.pem").chmod(0o644)
    (jail / "seed").write_bytes(bytes(64))
    line = ["-D", "local3.7", "-/", str(jail), "-s", "nobody", "-g", "nogroup", "-i"]
    line += ["-R", "seed", "-p", "stunnel.pem", "-n", "smtp-", "-F", "3"]
    line += ["-makesock_connect_to", "/usr/sbin/exim4", "-bs", "-N"]
    served = Served.inetd(pair, "ours", line, front=[makesock_bin])
    try:
        with smtplib.SMTP("127.0.0.1", served.port, timeout=20) as client:
            client.ehlo("client.example")
            client.noop()
        served.sessions_ended(1)
    finally:
        served.stop()
    lines = served.outcome().log
    assert {line.facility for line in lines} == {"local3"}
    texts = [line.text for line in lines]
    jailed = next(i for i, text in enumerate(texts) if text.startswith("Entered the jail: chroot"))
    dialogue = texts.index("C: ehlo client.example")  # smtplib's words, at debug
    assert jailed < dialogue and lines[dialogue].level == 7
    assert [line.level for line in lines if line.text.startswith("Connection closed: ")] == [5]
    assert lines[0].level == 5 and lines[0].text == "Using 'stunnel' as tcpwrapper service name"

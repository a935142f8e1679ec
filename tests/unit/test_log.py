"""log.py: 3.22's line, the sinks 3.22 chose, level filtering, and time after chroot."""

import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from conftest import RecordingLog

from stunnel3 import log as logging
from stunnel3.log import FACILITIES, TEXT_MAX, DialogueCap, Log, clip, format_line, printable
from stunnel3.options import parse

LINE = re.compile(r"^\d{4}\.\d\d\.\d\d \d\d:\d\d:\d\d LOG(\d)\[(\d+):(\d+)\]: (.*)$")


def test_line_format_is_322s():
    line = format_line(5, "hello", when=0.0)
    match = LINE.match(line)
    assert match, line
    assert match.group(1) == "5"
    assert int(match.group(2)) == os.getpid()
    assert match.group(4) == "hello"
    stamp = time.strftime("%Y.%m.%d %H:%M:%S", time.localtime(0.0))
    assert line.startswith(stamp + " LOG5[")


def test_every_character_outside_printable_ascii_becomes_a_dot():
    assert printable("a\r\nb\x00c\x1b[31md\x7f") == "a..b.c.[31md."
    assert printable("caf\u00e9") == "caf."  # one rule for every line (issue #18)
    assert printable("bad\udcffbyte") == "bad.byte"  # a surrogate-escaped argv byte
    assert printable("\u202eevil\u2028") == ".evil."  # no bidi override, no line separator
    assert format_line(3, "x\ny").endswith("]: x.y")


def test_the_dialogues_bytes_are_a_dot_each_as_322_wrote_them():
    """A layer decodes the wire as Latin-1: one character a byte (tests/oracle compares
    3.22's own lines; tests/property holds the rule for every byte string)."""
    line = "RCPT TO:<empf\u00e4nger@example.org>".encode()  # UTF-8 on the wire
    assert printable("C: " + line.decode("latin-1")) == "C: RCPT TO:<empf..nger@example.org>"


def test_syslog_gets_the_same_text(monkeypatch):
    sent = []

    class Syslog:
        @staticmethod
        def syslog(level, text):
            sent.append((level, text))

    log = Log(stderr=False)
    monkeypatch.setattr(log, "_syslog", Syslog)
    log.notice("caf\u00e9 \udcff\x1b" + "x" * 300)  # a surrogate: syslog's UTF-8 would raise
    assert sent == [(5, ("caf. .." + "x" * 300)[:TEXT_MAX])]


def test_levels_above_the_threshold_are_dropped(capsys):
    log = Log(level=logging.LOG_WARNING)
    log.debug("debug")
    log.info("info")
    log.notice("notice")
    log.warning("warning")
    log.err("err")
    log.log(logging.LOG_EMERG, "emerg")
    said = [LINE.match(line).group(4) for line in capsys.readouterr().err.splitlines()]
    assert said == ["warning", "err", "emerg"]
    assert log.level == logging.LOG_WARNING


def test_output_file_appends(tmp_path):
    path = tmp_path / "stunnel.log"
    path.write_text("earlier\n")
    log = Log(stderr=False, output_file=str(path))
    log.notice("one")
    log.info("dropped at level 5")
    log.close()
    lines = path.read_text().splitlines()
    assert lines[0] == "earlier"
    assert [LINE.match(line).group(4) for line in lines[1:]] == ["one"]


class FakeSyslog:
    """Stands for the C syslog module in this one unit test: records the calls."""

    LOG_PID, LOG_CONS, LOG_NDELAY = 1, 2, 8

    def __init__(self):
        self.calls = []

    def openlog(self, ident, logoption, facility):
        self.calls.append(("openlog", ident, logoption, facility))

    def syslog(self, priority, message):
        self.calls.append(("syslog", priority, message))

    def closelog(self):
        self.calls.append(("closelog",))


def test_syslog_is_opened_at_once_with_ident_pid_and_facility(monkeypatch, capsys):
    fake = FakeSyslog()
    monkeypatch.setitem(sys.modules, "syslog", fake)
    log = Log.from_options(parse(["-D", "mail.6", "-F3"]))
    assert fake.calls[0] == ("openlog", "stunnel", 1 | 2 | 8, 2 << 3)  # LOG_NDELAY: now
    log.info("connected\r\n")
    log.debug("dropped")
    log.close()
    assert fake.calls[1:] == [("syslog", 6, "connected.."), ("closelog",)]
    assert capsys.readouterr().err == ""  # not foreground: nothing on stderr


def test_322s_sink_rules(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "syslog", FakeSyslog())
    path = tmp_path / "out.log"
    log = Log.from_options(parse(["-f", "-o", str(path), "-F3"]))  # -o wins over -f
    log.notice("to the file")
    log.close()
    assert "to the file" in path.read_text()
    assert capsys.readouterr().err == ""
    log = Log.from_options(parse(["-f", "-F3"]))
    log.notice("to stderr")
    log.close()
    assert LINE.match(capsys.readouterr().err.strip()).group(4) == "to stderr"


def test_an_output_file_that_cannot_be_opened_is_said_where_the_lines_go(tmp_path, capsys):
    """3.22's log_open: the error, then the log as if there were no -o (stderr with -f)."""
    missing = tmp_path / "no" / "such.log"
    log = Log.from_options(parse(["-f", "-o", str(missing), "-F3"]))
    log.notice("goes on")
    log.close()
    said = [LINE.match(line).groups()[::3] for line in capsys.readouterr().err.splitlines()]
    assert said == [("3", f"Unable to open output file: {missing}"), ("5", "goes on")]


def test_texts_are_cut_at_255_bytes_as_322s_buffer_did():
    assert clip("x" * 300) == "x" * TEXT_MAX
    assert clip("x" * 255) == "x" * 255
    assert clip("\u00e9" * 200).encode() == "\u00e9".encode() * 127  # never half a character
    assert format_line(5, "y" * 400).endswith("]: " + "y" * TEXT_MAX)


def test_one_facility_table_with_linuxs_two():
    """The table options.py checks -D against is the one openlog gets (syslog.h numbers)."""
    import syslog

    from stunnel3 import options

    assert options.FACILITIES is FACILITIES
    for name, code in FACILITIES.items():
        if name != "ftp":  # Python's syslog module has no LOG_FTP
            assert getattr(syslog, f"LOG_{name.upper()}") == code, name
    assert FACILITIES["ftp"] == 11 << 3  # glibc's sys/syslog.h
    assert "ntp" not in FACILITIES  # glibc has no LOG_NTP: 3.22 refused it on Linux


JAILED = """
import os, sys
from stunnel3.log import Log
log = Log(stderr=False, output_file=sys.argv[1])
log.prepare_for_jail()
os.chroot(sys.argv[2]); os.chdir("/")
assert not os.path.exists("/usr/share/zoneinfo")
log.notice("inside")
"""


def test_local_time_survives_chroot(tmp_path):
    """The zone is read before the jail; inside it, lines are still in local time."""
    zone = tmp_path / "zone"
    zone.write_bytes(open("/usr/share/zoneinfo/Asia/Kolkata", "rb").read())  # +05:30, no DST
    jail = tmp_path / "jail"
    jail.mkdir()
    out = tmp_path / "jailed.log"
    env = dict(os.environ, TZ=f":{zone}")  # a zone file that does not exist in the jail
    subprocess.run(
        [sys.executable, "-c", JAILED, str(out), str(jail)], env=env, check=True, timeout=30
    )
    stamp = datetime.strptime(out.read_text()[:19], "%Y.%m.%d %H:%M:%S")
    now = datetime.now(ZoneInfo("Asia/Kolkata")).replace(tzinfo=None)
    assert abs(now - stamp) < timedelta(seconds=60), (stamp, now)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_dialogue_cap_per_session_exactly_at_it_and_one_over():
    log, clock = RecordingLog(), Clock()
    cap = DialogueCap(log, lines=3, rate=100, clock=clock)
    for n in range(3):
        cap.line(f"C: {n}")
    assert cap.left_out == 0
    cap.line("C: 3")
    assert cap.left_out == 1
    cap.close()
    cap.close()  # said once
    assert log.lines == [
        *[(7, f"C: {n}") for n in range(3)],
        (5, "Dialogue log: 1 lines left out (STUNNEL3_DIALOGUE_LINES a session, "
            "STUNNEL3_DIALOGUE_RATE a second)"),
    ]  # fmt: skip


def test_the_dialogue_cap_per_second_refills_with_time_but_never_above_its_rate():
    log, clock = RecordingLog(), Clock()
    cap = DialogueCap(log, lines=10_000, rate=10, clock=clock)
    for _ in range(25):
        cap.line("S: 250 ok")
    assert (len(log.lines), cap.left_out) == (10, 15)  # a burst: the bucket's 10
    clock.now += 0.5
    for _ in range(25):
        cap.line("S: 250 ok")
    assert (len(log.lines), cap.left_out) == (15, 35)  # half a second: 5 more
    clock.now += 60  # a quiet minute fills the bucket, no further
    for _ in range(25):
        cap.line("S: 250 ok")
    assert (len(log.lines), cap.left_out) == (25, 50)


def test_below_debug_level_nothing_is_left_out():
    log = RecordingLog()
    log.level = 5
    cap = DialogueCap(log, lines=1, rate=1)
    for _ in range(10):
        cap.line("C: NOOP")
    cap.close()
    assert log.lines == [] and cap.left_out == 0

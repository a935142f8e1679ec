"""stunnel 3.22's log: one line per event, to stderr, an -o file, or syslog.

The line is what 3.22's log.c printed to a file or to stderr:

    YYYY.MM.DD HH:MM:SS LOG<level>[<pid>:<tid>]: <text>

in local time. Syslog gets the text alone (syslog adds its own stamp), with
ident `stunnel`, the pid, the -D facility, and LOG_NDELAY so that the socket to
/dev/log is opened now, before a chroot makes /dev/log unreachable.

Where lines go (3.22's log_open): the -o file if it was given and opens; else
stderr with -f; else syslog. A -o file that cannot be opened is said there
(`Unable to open output file: <file>`) and the program goes on, as 3.22 did.
While options are parsed there is no Log yet and the main writes to stderr
(see `stderr_line`). A text longer than 255 bytes is cut there, as 3.22's
256-byte buffer cut it.

Security: a line is written as given. The log never carries secrets: callers
must not pass an AUTH argument, a password, a DATA line or key material, at any
level, -D 7 included.

One rule for every byte a line carries (`printable`): each character outside
printable ASCII (space to ~) becomes '.', so that a peer's bytes cannot forge
lines, drive a terminal or hide behind Unicode. The dialogue's bytes reach the
log one character each (decoded as Latin-1), so each byte outside printable
ASCII is one '.': `RCPT TO:<empf..nger@...>`, exactly what 3.22 wrote (its
safestring(), isprint() in the C locale; tests/oracle compares). 3.22 kept that
rule for the dialogue, certificate names and IDENT's reply; we keep it for every
line, so that an error naming a file or a peer's word cannot break it either.

The dialogue (the protocol layer's debug lines) goes through a `DialogueCap`:
at most so many lines a session and a second, the rest counted and said once.

Only light stdlib modules are imported here (a process starts per connection).
"""

import os
import sys
import time
from _thread import get_native_id
from typing import TextIO

LOG_EMERG = 0
LOG_ALERT = 1
LOG_CRIT = 2
LOG_ERR = 3
LOG_WARNING = 4
LOG_NOTICE = 5
LOG_INFO = 6
LOG_DEBUG = 7

LEVEL_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
# The one table of -D facility names (options.py reads it too): 3.22's, with
# the two Linux adds, authpriv and ftp; the numbers are glibc's syslog.h
# (facility << 3). glibc has no LOG_NTP, so `ntp` is refused, as by 3.22.
FACILITIES = {
    "auth": 4 << 3,
    "cron": 9 << 3,
    "daemon": 3 << 3,
    "kern": 0 << 3,
    "lpr": 6 << 3,
    "mail": 2 << 3,
    "news": 7 << 3,
    "syslog": 5 << 3,
    "user": 1 << 3,
    "uucp": 8 << 3,
    **{f"local{n}": (16 + n) << 3 for n in range(8)},
    "authpriv": 10 << 3,
    "ftp": 11 << 3,
}
# 3.22 formatted each line into 256 bytes (vsnprintf): longer texts are cut.
TEXT_MAX = 255


_DOTS = {code: "." for code in range(0x20)} | {0x7F: "."}


def printable(text: str) -> str:
    """Every character outside printable ASCII (space to ~) becomes '.' (3.22's
    safestring: isprint() in the C locale, byte by byte for the dialogue)."""
    if text.isascii():
        return text.translate(_DOTS) if not text.isprintable() else text
    return "".join(c if " " <= c <= "~" else "." for c in text)


_shown_pid: int | None = None


def show_pid(pid: int) -> None:
    """Log as pid: a stunnel3-warm worker logs under the pid of the process that
    handed it the session (the pid tcpserver reports), its own in the tid field."""
    global _shown_pid
    _shown_pid = pid


def clip(text: str) -> str:
    """The text as 3.22's vsnprintf(text, 256) left it: at most 255 bytes."""
    if len(text) <= TEXT_MAX // 4:  # no UTF-8 character is longer than 4 bytes
        return text
    encoded = text.encode(errors="surrogateescape")
    if len(encoded) <= TEXT_MAX:
        return text
    return encoded[:TEXT_MAX].decode(errors="ignore")


def format_line(level: int, text: str, when: float | None = None) -> str:
    """One line as 3.22 wrote it to a file or stderr, without the newline."""
    t = time.localtime(when)
    stamp = (
        f"{t.tm_year:04d}.{t.tm_mon:02d}.{t.tm_mday:02d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    )
    pid = _shown_pid or os.getpid()
    return f"{stamp} LOG{level}[{pid}:{get_native_id()}]: {clip(printable(text))}"


def stderr_line(level: int, text: str) -> None:
    """A line to stderr before any Log exists (option errors)."""
    _write(sys.stderr, format_line(level, text))


def _write(stream: TextIO, line: str) -> None:
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass  # nowhere left to say it; never let logging end a session


class Log:
    """Level-filtered lines to stderr, a file (append) and/or syslog."""

    def __init__(
        self,
        level: int = LOG_NOTICE,
        facility: str = "daemon",
        stderr: bool = True,
        output_file: str | None = None,
        use_syslog: bool = False,
    ):
        self.level = level
        self.facility = facility
        self._stderr = stderr
        self._file: TextIO | None = None
        self._syslog = None
        if output_file is not None:
            # line-buffered append: each line reaches the file as it is written
            self._file = open(output_file, "a", buffering=1, encoding="utf-8", errors="replace")
        if use_syslog:
            import syslog

            syslog.openlog(
                "stunnel",
                syslog.LOG_PID | syslog.LOG_CONS | syslog.LOG_NDELAY,
                FACILITIES[facility],
            )
            self._syslog = syslog
        self.prepare_for_jail()

    @classmethod
    def from_options(cls, options) -> "Log":
        """3.22's log_open: the -o file if it opens, else stderr with -f, else syslog.

        A -o file that cannot be opened is one error line where the lines go
        instead (`Unable to open output file: <file>`), as in 3.22.
        """
        level, facility = options.debug_level, options.debug_facility
        output = options.output_file
        if output is not None:
            try:
                return cls(level, facility, stderr=False, output_file=output)
            except OSError:
                pass
        log = cls(level, facility, stderr=options.foreground, use_syslog=not options.foreground)
        if output is not None:
            log.err(f"Unable to open output file: {output}")
        return log

    def prepare_for_jail(self) -> None:
        """Load the time zone now: after chroot /etc/localtime is out of reach.

        glibc reads the zone on the first localtime() and keeps it, so one call
        before the chroot keeps later lines in local time: called at creation,
        which SPEC §2's order puts before the jail (stunnel.start), so nothing
        else calls it.
        """
        time.localtime()

    def log(self, level: int, text: str) -> None:
        if level > self.level:
            return
        if self._file is not None or self._stderr:
            line = format_line(level, text)
            if self._file is not None:
                _write(self._file, line)
            if self._stderr:
                _write(sys.stderr, line)
        if self._syslog is not None:
            try:
                self._syslog.syslog(level, clip(printable(text)))
            except OSError:
                pass

    def err(self, text: str) -> None:
        self.log(LOG_ERR, text)

    def warning(self, text: str) -> None:
        self.log(LOG_WARNING, text)

    def notice(self, text: str) -> None:
        self.log(LOG_NOTICE, text)

    def info(self, text: str) -> None:
        self.log(LOG_INFO, text)

    def debug(self, text: str) -> None:
        self.log(LOG_DEBUG, text)

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        if self._syslog is not None:
            self._syslog.closelog()
            self._syslog = None


class DialogueCap:
    """The -D 7 dialogue of one session, capped: at most `lines` lines in all, and
    `rate` a second (a bucket of `rate` lines, refilled at `rate` a second).

    A client that pipelines NOOPs makes two lines per command, at whatever speed
    the backend answers (170,000 a second uncapped: multilog's whole history gone
    in under a second). A normal session logs a few dozen lines; what is left out
    is counted and said once, at close(), with the settings that allow more
    (bounds.py: STUNNEL3_DIALOGUE_LINES, STUNNEL3_DIALOGUE_RATE).
    """

    def __init__(self, log, lines: int, rate: int, clock=time.monotonic):
        self._log = log
        self._lines_left = lines
        self._rate = rate
        self._tokens = float(rate)
        self._clock = clock
        self._filled = clock()
        self.left_out = 0

    def line(self, text: str) -> None:
        """One dialogue line (debug level), if the caps allow it."""
        if self._log.level < LOG_DEBUG:
            return  # not written anyway: nothing is left out
        now = self._clock()
        self._tokens = min(self._rate, self._tokens + (now - self._filled) * self._rate)
        self._filled = now
        if self._lines_left <= 0 or self._tokens < 1:
            self.left_out += 1
            return
        self._lines_left -= 1
        self._tokens -= 1
        self._log.log(LOG_DEBUG, text)

    def close(self) -> None:
        """Say how many lines were left out, if any (once: the count starts again)."""
        if self.left_out:
            self._log.log(
                LOG_NOTICE,
                f"Dialogue log: {self.left_out} lines left out (STUNNEL3_DIALOGUE_LINES "
                "a session, STUNNEL3_DIALOGUE_RATE a second)",
            )
            self.left_out = 0

"""Run the real stunnel 3.22 and ours the same way, and say where they differ.

Both get the same argv, stdin, environment and a fresh copy of the same working
directory, inside the same sandbox (../sandbox.py: a private /dev/log served by
rsyslogd, TCP wrappers' files and a resolver of the test's own). An Outcome is
what a person would see: the exit status, stdout, stderr, and every log line
with its level, wherever it went (stderr, the -o file, syslog).

What varies from run to run is masked on both sides alike: dates, pids and
thread ids, the working directory, ephemeral ports, descriptor numbers. What
differs on purpose is normalised only by a named rule in DIFFERENCES, each of
which docs/migration.md's table of deliberate differences names (a test holds
the two together); everything else must be equal.
"""

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import Sandbox, clean_environment

ORACLE_DIR = Path(os.environ.get("STUNNEL3_ORACLE_DIR", "/opt/stunnel-3.22"))
STAMP = re.compile(r"^\d{4}\.\d\d\.\d\d \d\d:\d\d:\d\d LOG(\d)\[\d+:\d+\]: (.*)$")
SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
INFO = re.compile(r"^stunnel 3\.22 on .*$")
MASKS = [
    (re.compile(r"\(PID=\d+\)"), "(PID=N)"),
    (re.compile(r"\bFD=\d+"), "FD=N"),
    (re.compile(r"(\bfrom [0-9a-f.:]+):\d+"), r"\1:PORT"),  # the client's ephemeral port
    (re.compile(r"\[\d+\] (finished|terminated)"), r"[N] \1"),
    (re.compile(r"/dev/(\.real/)?pts/\d+"), "/dev/pts/N"),  # sandbox.sh's /dev/.real
]


def oracle_binary() -> Path:
    """The built oracle, or a loud failure: these tests never skip."""
    binary = ORACLE_DIR / "stunnel"
    if not os.access(binary, os.X_OK):
        raise RuntimeError(
            f"the oracle {binary} is not built: .ci/setup builds it from the project's "
            "shared folder (../shared/oracle beside the clone, or STUNNEL3_ORACLE_SRC)"
        )
    version = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10)
    if not version.stderr.startswith("\nstunnel 3.22 on ") or "LIBWRAP" not in version.stderr:
        raise RuntimeError(f"{binary} is not stunnel 3.22 with libwrap: {version.stderr[:200]!r}")
    return binary


@dataclass(frozen=True)
class Line:
    level: int
    text: str
    facility: str = ""  # syslog's, for a line that went there


@dataclass
class Outcome:
    status: int | str
    stdout: bytes
    stderr: list[str]  # what is not a log line: print_info's hint, a program's own words
    log: list[Line]

    def first_error(self) -> str | None:
        return next((line.text for line in self.log if line.level <= 3), None)


@dataclass(frozen=True)
class Difference:
    """A deliberate difference from 3.22: its row in docs/migration.md, and the rule
    that makes both sides' lines comparable despite it (or None: vectors name it)."""

    row: str  # the words of its row in migration.md's table
    normalise: Callable[[Line], Line | None] | None = None


def _library_text(line: Line) -> Line | None:
    # OpenSSL's own error strings (3.22 printed ERR_error_string; other versions,
    # other words), and the key function: 3.22 took RSA keys only
    text = line.text.replace("SSL_CTX_use_RSAPrivateKey_file:", "SSL_CTX_use_PrivateKey_file:")
    match = re.match(r"^(SSL_\w+|Negotiated ciphers): ", text)
    if match:
        text = f"{match.group(1)}: <TLS library text>"
    return Line(line.level, text, line.facility)


def _library_trace(line: Line) -> Line | None:
    # 3.22 installed OpenSSL's info callback at -D 7: each handshake state, alert,
    # and the session cache's counters; ours has none
    trace = ("SSL state (", "SSL alert (")
    counters = re.compile(r"^ *\d+ (items in the session cache|client |server |session cache )")
    if line.level == 7 and (line.text.startswith(trace) or counters.match(line.text)):
        return None
    return line


TRANSFER = (
    "Socket closed on read",
    "Socket write shutdown",
    "SSL write shutdown",
    "SSL closed on SSL_",
    "SSL socket closed on SSL_",
    "SSL_read returned WANT_",
    "SSL_write returned WANT_",
    "select timeout",
    "Closing: ",
    "Timeout waiting for the peer to close",
)


def _transfer_loop(line: Line) -> Line | None:
    # 3.22's transfer() said at -D 7 how each side shut down; our relay is one loop
    # for every mode and protocol, with events of its own
    return None if line.level == 7 and line.text.startswith(TRANSFER) else line


def _local_process_end(line: Line) -> Line | None:
    # 3.22's daemon ran clients as threads and its SIGCHLD handler saw each -l program
    # end; ours runs a process per connection, which the program outlives
    if line.level == 7 and re.match(
        r"^Local process .* \(PID=N\) (finished|terminated)", line.text
    ):
        return None
    return line


def _engine(line: Line) -> Line | None:
    # the STARTTLS proxies say which policy a client gets (issue #15): 3.22 had none
    return None if line.level == 6 and line.text.startswith("Client policy: ") else line


def _ignored_ids(line: Line) -> Line | None:
    # 3.22 ignored -s and -g in inetd mode without -i and said nothing; ours warns
    # that the TLS code runs as root
    ignored = line.level == 4 and line.text.startswith("-s and -g are ignored in inetd mode")
    return None if ignored else line


def _resolver(line: Line) -> Line | None:
    if re.match(r"^(gethostbyname: |Error resolving ')", line.text):
        return Line(line.level, "<resolver error>", line.facility)
    return line


def _info(line: Line) -> Line | None:
    return Line(line.level, "<stunnel info>", line.facility) if INFO.match(line.text) else line


DIFFERENCES: dict[str, Difference] = {
    "version line": Difference("The version line", _info),
    "TLS library texts": Difference("OpenSSL's own words", _library_text),
    "TLS library trace": Difference("OpenSSL's trace at -D 7", _library_trace),
    "transfer loop": Difference("The relay's debug lines", _transfer_loop),
    "resolver errors": Difference("A name that does not resolve", _resolver),
    "ports": Difference("Ports"),
    "crash": Difference("Where 3.22 crashed"),
    "sg2": Difference("The sg2 options"),
    "usage text": Difference("The usage text (-h)"),
    "failed start": Difference("A daemon that cannot start"),
    "TLS keys": Difference("TLS"),
    "alert after a failed handshake": Difference("A failed handshake"),
    "transparent proxy": Difference("Transparent proxy (-T)"),
    "EOF without close_notify": Difference("A client that closes without close_notify"),
    "SMTP engine": Difference("The SMTP engine", _engine),
    "daemon workers": Difference("Daemon mode's workers", _local_process_end),
    "pty EOF": Difference("A -L program that exits"),
    "ignored ids": Difference("-s and -g without -i in inetd mode", _ignored_ids),
    "encrypted key": Difference("An encrypted private key"),
    "broken certificate": Difference("A certificate that cannot be used, with -n"),
}


def normalise(lines: list[Line]) -> list[Line]:
    rules = [d.normalise for d in DIFFERENCES.values() if d.normalise is not None]
    kept = []
    for line in lines:
        current: Line | None = line
        for rule in rules:
            if current is None:
                break
            current = rule(current)
        if current is not None:
            kept.append(current)
    return kept


@dataclass
class Workdir:
    """The files both programs find in their working directory (a fresh copy each run)."""

    template: Path
    copies: list[Path] = field(default_factory=list)

    def fresh(self, parent: Path, name: str) -> Path:
        target = parent / name
        shutil.copytree(self.template, target, symlinks=True)
        for path in (target / "stunnel.pem", target / "root-only.pem"):
            if path.exists():
                os.chmod(path, 0o600)
        self.copies.append(target)
        return target


class Pair:
    """Both programs, one sandbox, one working-directory template."""

    def __init__(self, oracle: Path, ours: str, box: Sandbox, workdir: Workdir, scratch: Path):
        self.programs = {"oracle": str(oracle), "ours": ours}
        self.box = box
        self.workdir = workdir
        self.scratch = scratch
        self._runs = 0

    def prepare(self, which: str, env: dict | None = None) -> tuple[Path, dict]:
        """A fresh working directory for `which`, and the environment it gets."""
        self._runs += 1
        cwd = self.workdir.fresh(self.scratch, f"{which}-{self._runs}")
        return cwd, clean_environment(cwd, **(env or {}))

    def run(
        self,
        which: str,
        argv: list[str],
        stdin: bytes = b"",
        env: dict | None = None,
        timeout: float = 20,
        hide: tuple[str, ...] = (),
    ) -> Outcome:
        cwd, environment = self.prepare(which, env)
        command = [self.programs[which], *argv]
        done = self.box.run(command, cwd, environment, stdin, timeout, hide)
        outcome = outcome_of(done, cwd)
        shutil.rmtree(cwd, ignore_errors=True)
        return outcome

    def both(self, argv: list[str], **kwargs) -> tuple[Outcome, Outcome]:
        return self.run("oracle", argv, **kwargs), self.run("ours", argv, **kwargs)


def mask(text: str, cwd: Path) -> str:
    text = text.replace(str(cwd), "DIR")
    for pattern, replacement in MASKS:
        text = pattern.sub(replacement, text)
    return text


def outcome_of(done, cwd: Path) -> Outcome:
    other, log = [], []
    for raw in done.stderr.splitlines():
        match = STAMP.match(raw)
        if match:
            log.append(Line(int(match.group(1)), mask(match.group(2), cwd)))
        else:
            other.append(mask(raw, cwd))
    for path in sorted(cwd.glob("*.log")):  # -o files: the vectors name them *.log
        for raw in path.read_text(errors="replace").splitlines():
            match = STAMP.match(raw)
            log.append(
                Line(int(match.group(1)), mask(match.group(2), cwd)) if match else Line(9, raw)
            )
    for entry in done.syslog:
        log.append(Line(SEVERITIES.index(entry.severity), mask(entry.text, cwd), entry.facility))
    return Outcome(done.status, done.stdout, other, log)


def eof_without_close_notify(lines: list[Line]) -> list[Line]:
    """3.22 on OpenSSL 0.9 took a TCP EOF without close_notify for a close, as ours
    does; the oracle, on OpenSSL 3, calls it an SSL_read error and the session a reset.
    For the oracle's lines, in sessions whose client closes that way."""
    kept: list[Line] = []
    for line in lines:
        if (
            line.text.startswith("Connection reset: ")
            and kept
            and kept[-1].text.startswith("SSL_read: ")
        ):
            kept[-1] = Line(line.level, line.text.replace("reset", "closed", 1), line.facility)
        else:
            kept.append(line)
    return kept


def pty_eof(lines: list[Line]) -> list[Line]:
    """A -L program that exits: 3.22 read the pty's EIO as an error and reset the
    connection (the client could lose the program's last words); ours reads it as
    the program's end. For the oracle's lines."""
    kept: list[Line] = []
    for line in lines:
        if line.text == "read: Input/output error (5)" or line.text.startswith("linger ("):
            continue
        kept.append(Line(line.level, line.text.replace("Connection reset", "Connection closed"),
                         line.facility))  # fmt: skip
    return kept


OPTIONAL = {"EOF without close_notify": eof_without_close_notify, "pty EOF": pty_eof}


def differences(oracle: Outcome, ours: Outcome, allow: tuple[str, ...] = ()) -> list[str]:
    """What a person would see differ, after masks and the named rules; [] if nothing.

    `allow` names the optional rules (OPTIONAL) a session needs."""
    found = []
    if oracle.status != ours.status:
        found.append(f"exit status: 3.22 {oracle.status}, ours {ours.status}")
    if oracle.stdout != ours.stdout and not _alert_only(oracle.stdout, ours.stdout):
        found.append(f"stdout: 3.22 {oracle.stdout[:100]!r}, ours {ours.stdout[:100]!r}")
    theirs_said, mine_said = (
        [INFO.sub("<stunnel info>", line) for line in side.stderr] for side in (oracle, ours)
    )  # the version line of -V: `version line`
    if theirs_said != mine_said:
        found.append(f"stderr: 3.22 {theirs_said}, ours {mine_said}")
    theirs, mine = normalise(oracle.log), normalise(ours.log)
    for name in allow:
        assert name in DIFFERENCES
        theirs = OPTIONAL[name](theirs)
    if theirs != mine:
        found.append("log:\n" + _side_by_side(theirs, mine))
    return found


def _alert_only(theirs: bytes, mine: bytes) -> bool:
    """3.22's alert to a peer that had gone (`alert after a failed handshake`)."""
    return mine == b"" and len(theirs) == 7 and theirs[:1] == b"\x15"


def _side_by_side(theirs: list[Line], mine: list[Line]) -> str:
    import difflib

    left = [f"{line.facility}LOG{line.level}: {line.text}" for line in theirs]
    right = [f"{line.facility}LOG{line.level}: {line.text}" for line in mine]
    return "\n".join(difflib.unified_diff(left, right, "3.22", "ours", lineterm="", n=2))

"""Every bound of a session, from the environment, checked once at start-up.

3.22 has no flags for these; each is a STUNNEL3_ variable (seconds, or lines):

    STUNNEL3_HANDSHAKE_TIMEOUT      60  from StartTls (or the connection, without -n)
                                        to an established TLS session
    STUNNEL3_IDLE_TIMEOUT          600  no byte moving either way (twice RFC 5321's
                                        5-minute command timeout)
    STUNNEL3_EXCHANGE_TIMEOUT      600  one command/reply exchange, bytes moving or
                                        not: from a command's first byte, or a reply
                                        owed, to the backend's next bytes (RFC 5321
                                        4.5.3.2: a client waits 10 minutes at most
                                        for the reply to the end of the data)
    STUNNEL3_SESSION_TIMEOUT     14400  the whole session: 4 hours carry a 50 MB
                                        message at 28 kbit/s
    STUNNEL3_BACKEND_EXIT_TIMEOUT   10  after the session, for the program we started
                                        to exit on its EOF, then again after SIGTERM
    STUNNEL3_DIALOGUE_LINES       1000  -D 7 dialogue lines logged per session
    STUNNEL3_DIALOGUE_RATE         100  ... and per second (log.DialogueCap)

The exchange and session bounds apply to a protocol layer that has exchanges
(protocol.py: `awaiting`): the SMTP proxy; `Exchanges` keeps them for the relay.
Plain TLS (no -n) has none: a tunnel may carry anything for as long as it
likes, as under 3.22.

A value that is not a number above 0 (`abc`, `0`, `-5`, `inf`) is refused at
start-up with one line naming the variable, `Illegal idle timeout:
STUNNEL3_IDLE_TIMEOUT=abc (seconds above 0)`, and exit 1 (3.22's wording for
its own `Illegal session timeout: %s`): a typo must not quietly become the
default.

Light on purpose (os and math, and errors.py: os only): makesock's process reads the
backend's grace here.
"""

import math
import os

from stunnel3.engine.errors import SetupError

# name: (what it bounds, its unit, the default)
SETTINGS = {
    "STUNNEL3_HANDSHAKE_TIMEOUT": ("handshake timeout", "seconds", 60.0),
    "STUNNEL3_IDLE_TIMEOUT": ("idle timeout", "seconds", 600.0),
    "STUNNEL3_EXCHANGE_TIMEOUT": ("exchange timeout", "seconds", 600.0),
    "STUNNEL3_SESSION_TIMEOUT": ("session timeout", "seconds", 14400.0),
    "STUNNEL3_BACKEND_EXIT_TIMEOUT": ("backend exit timeout", "seconds", 10.0),
    "STUNNEL3_DIALOGUE_LINES": ("dialogue lines", "lines", 1000),
    "STUNNEL3_DIALOGUE_RATE": ("dialogue rate", "lines a second", 100),
}


class SettingError(SetupError):
    """A STUNNEL3_ setting that cannot be used; `text` is the log line, exit status 1."""


def value(name: str, environ=os.environ) -> float:
    """The setting `name` (a key of SETTINGS): its default when unset, else its
    value, a finite number above 0 (whole for lines); SettingError otherwise."""
    what, unit, default = SETTINGS[name]
    text = environ.get(name)
    if text is None:
        return default
    whole = isinstance(default, int)
    try:
        number = int(text) if whole else float(text)
    except ValueError:
        number = 0
    if not (number > 0 and math.isfinite(number)):
        raise SettingError(f"Illegal {what}: {name}={text} ({unit} above 0)")
    return number


class Bounds:
    """The values of SETTINGS for one process, by short name (`bounds.idle`)."""

    __slots__ = ("handshake", "idle", "exchange", "session", "backend_exit", "lines", "rate")

    def __init__(self, environ=os.environ):
        self.handshake = value("STUNNEL3_HANDSHAKE_TIMEOUT", environ)
        self.idle = value("STUNNEL3_IDLE_TIMEOUT", environ)
        self.exchange = value("STUNNEL3_EXCHANGE_TIMEOUT", environ)
        self.session = value("STUNNEL3_SESSION_TIMEOUT", environ)
        self.backend_exit = value("STUNNEL3_BACKEND_EXIT_TIMEOUT", environ)
        self.lines = int(value("STUNNEL3_DIALOGUE_LINES", environ))
        self.rate = int(value("STUNNEL3_DIALOGUE_RATE", environ))


def backend_exit(environ=os.environ) -> float:
    """The backend's grace, for makesock's keeper: a bad value is stunnel's to say
    (it exits 1 at start-up), so the default serves meanwhile."""
    try:
        return value("STUNNEL3_BACKEND_EXIT_TIMEOUT", environ)
    except SettingError:
        return SETTINGS["STUNNEL3_BACKEND_EXIT_TIMEOUT"][2]


class Exchanges:
    """The exchange and session bounds of one session with a command/reply layer.

    The relay says when the layer awaits (`track`, after each settle) and when the
    backend's bytes came (`moved`); `nearest` adds these bounds to the relay's own."""

    def __init__(self, bounds: Bounds, now: float):
        self.bounds = bounds
        self.session_ends = now + bounds.session
        self.since: float | None = None  # awaiting since, without the backend's bytes

    def track(self, awaiting: bool, now: float) -> None:
        if not awaiting:
            self.since = None
        elif self.since is None:
            self.since = now

    def moved(self) -> None:
        self.since = None  # the next track() starts the exchange anew, if still awaiting

    def nearest(self, other: tuple[float, str]) -> tuple[float, str]:
        """The earliest of `other` (deadline, what to say) and these bounds."""
        found = [other, (self.session_ends, self._said("session"))]
        if self.since is not None:
            found.append((self.since + self.bounds.exchange, self._said("exchange")))
        return min(found)

    def _said(self, bound: str) -> str:
        if bound == "session":
            seconds, what = self.bounds.session, "Session time limit reached"
        else:
            seconds, what = self.bounds.exchange, "Command/reply exchange timed out"
        return f"{what} ({seconds:g} s, STUNNEL3_{bound.upper()}_TIMEOUT)"

"""The DATA phase: message bytes pass through uninterpreted until CRLF.CRLF.

RFC 5321 section 4.1.1.4: only CRLF "." CRLF ends the data. But the backend in
the users' chain is `fixcrio qmail-smtpd`: fixcrio puts a CR before every bare
LF, and qmail-smtpd itself also ends lines at a bare LF. So a dot line with a
bare LF on either side (`\\n.\\n`, `\\r\\n.\\n`, `\\n.\\r\\n`) would end the message
at the backend while the client, rightly, thinks it is still sending one: the
bytes after it would run as commands (SMTP smuggling: a second, forged message).

Such a dot line is dot-stuffed: one "." is added in front of it, so the backend
un-stuffs it to a "." content line (RFC 5321 section 4.5.2) and never sees an end
there. The message arrives whole, once, with that line reading "." as the
client's bytes literally say. Refusing the message instead would reject mail
from sloppy but innocent clients; stuffing costs nothing and keeps both ends in
step. A bare CR is not a line end for qmail-smtpd, fixcrio or exim, so `\\r.\\r`
is left alone.

Bulk bytes are scanned with bytes.find for "\\n." only: no per-line Python work.
The last two bytes already passed on are kept as context, because whether a dot
line is preceded by CRLF or by a bare LF crosses feed boundaries; a "." or ".\\r"
at the very end of a feed is held back until the next byte decides it.
"""

from stunnel3.layers.runs import Scan

CRLF = b"\r\n"


class MessageData(Scan):
    """Client bytes of one message in; bytes for the backend out, up to end-of-data
    (a runs.Run: the DATA state's)."""

    def __init__(self) -> None:
        # The start of the data is the start of a line, as after CRLF: a first
        # line of "." CRLF is an empty message (RFC 5321 section 4.1.1.4).
        self._context = CRLF
        self._held = b""
        self.size = 0  # client bytes taken, for the log (never the content)
        self.stuffed = 0  # ambiguous dot lines neutralised

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """(bytes for the backend, None) while the message goes on; at its end,
        (the last bytes including CRLF.CRLF, the client bytes that follow it)."""
        if not self._held and data[:1] != b"." and data.find(b"\n.") < 0:
            self._context = (self._context + data[-2:])[-2:]
            self.size += len(data)
            return data, None
        window = self._context + self._held + data
        base = len(self._context)
        out: list[bytes] = []
        emitted = base  # window[base:emitted] has been appended to out
        search = base - 1
        cut = len(window)  # everything before cut is decided
        rest: bytes | None = None
        while (lf := window.find(b"\n.", search)) >= 0:
            dot = lf + 1
            after = window[dot + 1 : dot + 3]
            search = dot + 1
            if after == b"" or after == b"\r":
                cut = dot  # "." or ".\r" at the end: the next byte decides
                break
            if after == CRLF and window[lf - 1 : lf] == b"\r":
                cut = dot + 3  # CRLF . CRLF: the one true end of the data
                rest = window[cut:]
                break
            if after[:1] == b"\n" or after == CRLF:
                out.append(window[emitted:dot])
                out.append(b".")  # stuff: the backend reads a "." content line
                emitted = dot
                self.stuffed += 1
        out.append(window[emitted:cut])
        self._held = window[cut:] if rest is None else b""
        self._context = window[cut - 2 : cut]
        self.size += cut - base
        return b"".join(out), rest

    def flush(self) -> bytes:
        """At the client's EOF: what was held back goes on as it is."""
        held, self._held = self._held, b""
        return held

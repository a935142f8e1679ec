"""SMTP replies from the backend: framing (RFC 5321 section 4.2) and the EHLO rewrite.

A reply is one or more lines `ddd-text` ending with a line `ddd text` (or `ddd`).
The reader is lenient the way clients are: a line that is not `ddd-...` ends the
reply, so a broken backend cannot make the proxy wait forever for a last line.
Lines are split at LF, CR optional (by line_proxy.LineProxy, which also bounds them),
and kept byte for byte: what is not rewritten reaches the client unchanged.
"""

from stunnel3.layers.smtp_text import KEPT_EXTENSIONS, STARTTLS_CAPABILITY
from stunnel3.support.record import record


@record(frozen=True)
class Reply:
    lines: tuple[bytes, ...]  # each with its own line ending, as received

    @property
    def code(self) -> bytes:
        return self.lines[-1][:3]

    @property
    def positive(self) -> bool:
        return self.code[:1] == b"2"

    @property
    def raw(self) -> bytes:
        return b"".join(self.lines)


class ReplyReader:
    """Backend lines in (line_proxy.LineProxy splits them at LF and bounds them), whole
    replies out."""

    def __init__(self) -> None:
        self._lines: list[bytes] = []

    def add(self, line: bytes) -> Reply | None:
        """The reply this line ends, or None while it goes on (`ddd-...`)."""
        self._lines.append(line)
        if line[3:4] == b"-":
            return None
        reply, self._lines = Reply(tuple(self._lines)), []
        return reply

    def leftover(self) -> bytes:
        """What an EOF cuts off: an unfinished reply, passed on as it is."""
        rest = b"".join(self._lines)
        self._lines = []
        return rest


def keyword(line: bytes) -> bytes:
    """The EHLO keyword of a reply line: `250-AUTH=LOGIN PLAIN` -> `AUTH`."""
    text = line[4:].strip()
    for separator in (b" ", b"="):
        text = text.split(separator, 1)[0]
    return text.upper()


def rewrite_ehlo(reply: Reply, offer_starttls: bool, offer_auth: bool = True) -> Reply:
    """The backend's EHLO reply as the client must see it through the proxy.

    The first line (the server's name) stays first. Extensions the proxy cannot
    follow are dropped (smtp_text.KEPT_EXTENSIONS), and AUTH where it may not be
    used (before TLS: RFC 4954 section 4 lets a server offer it only where it
    accepts it). STARTTLS, when offered, goes
    just before the last line (skarnet's smtpd-starttls-proxy does the same), so
    the backend's own last line stays last and the reply's end is unchanged.
    Lines are rebuilt only where their `-`/` ` separator must change.
    """
    code = reply.code
    greeting, capabilities = reply.lines[0], reply.lines[1:]
    kept = [
        line
        for line in capabilities
        if keyword(line) in KEPT_EXTENSIONS and (offer_auth or keyword(line) != b"AUTH")
    ]
    if offer_starttls:
        kept.insert(max(len(kept) - 1, 0), code + b"-" + STARTTLS_CAPABILITY + b"\r\n")
    lines = [greeting, *kept]
    rebuilt = []
    for index, line in enumerate(lines):
        separator = b" " if index == len(lines) - 1 else b"-"
        if line[3:4] == separator:
            rebuilt.append(line)
        else:  # `250-x` <-> `250 x`; a bare `250\r\n` keeps its (empty) text
            text = line[4:] if line[3:4] in (b"-", b" ") else line[3:]
            rebuilt.append(code + separator + text)
    return Reply(tuple(rebuilt))

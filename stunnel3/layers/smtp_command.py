"""SMTP command lines: verbs, which ones the proxy lets through when, and what the log may say.

Also the one line the proxy writes into a message: the Received: trace line that
tells the backend (and the mailbox) that TLS was used, README bug 4.
"""

import time

from stunnel3.layers.lines import first_word, loggable
from stunnel3.layers.protocol import TlsInfo

# -n smtp: what a client may say before STARTTLS (RFC 3207 section 4: 530 to the rest).
ALLOWED_BEFORE_TLS = frozenset({b"EHLO", b"HELO", b"NOOP", b"RSET", b"QUIT", b"STARTTLS"})
# After STARTTLS, RFC 3207 section 4.2: the client greets again before anything else.
ALLOWED_BEFORE_HELO = frozenset({b"EHLO", b"HELO", b"NOOP", b"RSET", b"QUIT"})
# After these the bytes stop being SMTP commands and replies (TURN and ATRN
# reverse the roles, XEXCH50 sends a binary blob): answered 502 by the proxy.
NOT_FOLLOWABLE = frozenset({b"TURN", b"ATRN", b"XEXCH50"})
# Commands no backend answers by taking something other than commands next (no
# 354, no 334): the proxy parses on past them without waiting (RFC 2920
# pipelining). After any other forwarded command it waits for the reply, which
# says what comes next whatever the command was (smtp.py, "the backend decides").
FOLLOWED = frozenset(
    {b"EHLO", b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP", b"QUIT", b"VRFY", b"EXPN", b"HELP"}
    | {b"ETRN", b"SEND", b"SOML", b"SAML"}
)
# What the debug log shows as it came (AUTH: the mechanism only; the rest by size).
KNOWN = FOLLOWED | NOT_FOLLOWABLE | {b"DATA", b"BDAT", b"STARTTLS"}
SASL_COMMANDS = frozenset({b"AUTH"})


def split_command(line: bytes) -> tuple[bytes, bytes]:
    """`mail FROM:<a>\\r\\n` -> (b"MAIL", b"FROM:<a>"); the verb ends at any blank a
    backend ends it at (lines.BLANKS: `DATA<TAB>` is DATA); a line may end in LF alone."""
    verb, argument = first_word(line)
    return verb.upper(), argument


def shown(verb: bytes, argument: bytes, line: bytes) -> bytes:
    """The command as the debug log may show it: never an AUTH initial response,
    never a line the proxy does not know (lines.loggable)."""
    return loggable(verb, argument, line, KNOWN, frozenset(), SASL_COMMANDS).encode("latin-1")


def received_line(info: TlsInfo, authenticated: bool, now: float) -> bytes:
    """The trace line put first in each message after TLS.

    RFC 5321 section 4.4 trace syntax, every clause of which is optional; the
    protocol names are RFC 3848's (ESMTPS, ESMTPSA after AUTH). The client's EHLO
    name is left out on purpose: it is the client's text, unchecked, and
    qmail-smtpd's own Received: line (which follows ours) records it anyway.
    The date is built by hand: strftime's %a and %b follow the locale.
    """
    protocol = "ESMTPSA" if authenticated else "ESMTPS"
    stamp = time.gmtime(now)
    day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[stamp.tm_wday]
    month = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()[stamp.tm_mon - 1]
    clock = f"{stamp.tm_hour:02d}:{stamp.tm_min:02d}:{stamp.tm_sec:02d}"
    date = f"{day}, {stamp.tm_mday:02d} {month} {stamp.tm_year} {clock} +0000"
    line = (
        f"Received: (stunnel3 STARTTLS proxy) with {protocol}"
        f" ({info.version} cipher={info.cipher} bits={info.bits});\r\n\t{date}\r\n"
    )
    return line.encode("ascii", "replace")

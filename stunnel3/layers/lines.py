"""How a dialogue line reads, for every layer: where words end, and what the debug
log may show of it. Sans-I/O, like the layers (line_proxy.py).

The proxy's idea of a command must be the backend's: a verb ends at any blank
some backend ends it at, and a line the proxy does not know may be anything (a
password sent where a command was due included), so the log shows it only by
its size. Dialogue bytes become log text here and nowhere else (log_text).
"""

import re

# Where a verb ends and words part, for some backend: every server splits at SP;
# exim, Postfix and mailfront also at TAB (exim strips trailing white space, so
# `DATA<TAB>` is DATA to it, and mailfront takes `AUTH<TAB>LOGIN`); the other C
# isspace() bytes for servers that split with isspace(). Reading a verb in more
# lines than a backend does is safe (the reply decides what follows); fewer is not.
BLANKS = b" \t\v\f\r"
_BLANK = re.compile(rb"[ \t\v\f\r]")
# SASL mechanism names the debug log may show (RFC 4422 registry, and common X- ones).
SASL_MECHANISMS = frozenset(
    b"PLAIN LOGIN CRAM-MD5 DIGEST-MD5 GSSAPI GS2-KRB5 NTLM EXTERNAL ANONYMOUS XOAUTH2"
    b" OAUTHBEARER SCRAM-SHA-1 SCRAM-SHA-1-PLUS SCRAM-SHA-256 SCRAM-SHA-256-PLUS".split()
)


def log_text(data: bytes) -> str:
    """Dialogue bytes as the debug log shows them: the one place they are decoded
    (Latin-1, so every byte is a character), without the line end."""
    return data.rstrip(b"\r\n").decode("latin-1")


def first_word(text: bytes) -> tuple[bytes, bytes]:
    """`mail\\tFROM:<a>\\r\\n` -> (b"mail", b"FROM:<a>"): the first word (leading
    blanks skipped; it ends at any of BLANKS) and the rest, without the blanks
    around it or the line end. Callers upper-case a verb themselves. Linear in
    the line, whatever its blanks (a regular expression that backtracks over
    them cost seconds for one 16 KiB line)."""
    body = text.rstrip(BLANKS + b"\n").lstrip(BLANKS)
    blank = _BLANK.search(body)
    if blank is None:
        return body, b""
    return body[: blank.start()], body[blank.end() :].lstrip(BLANKS)


def loggable(
    verb: bytes, argument: bytes, line: bytes, known, secret, sasl, tag: bytes = b""
) -> str:
    """How the debug log shows a command line whose upper-cased verb is `verb`.

    sasl (AUTH, AUTHENTICATE): the verb, the mechanism if it is a registered
    one, *** for whatever else follows. secret (LOGIN, USER, PASS, APOP): the
    verb and ***. Another verb in `known`: the line as it came. Anything else
    only by its size: a line the proxy does not understand may be anything,
    a password sent where a command was due included. `tag` (IMAP's) goes first."""
    shown = log_text(tag) + " " if tag else ""
    if verb in sasl:
        mechanism, rest = first_word(argument)
        if mechanism.upper() not in SASL_MECHANISMS:
            return shown + verb.decode() + (" ***" if argument else "")
        return shown + f"{verb.decode()} {mechanism.upper().decode()}" + (" ***" if rest else "")
    if verb in secret:
        return shown + verb.decode() + (" ***" if argument else "")
    if verb in known:
        return log_text(line)
    return f"({len(line)} bytes: not a command this proxy knows)"

"""Every reply the SMTP proxy writes itself, the limits it enforces, and the error
family that carries a reply to the client, in one place.

Codes and wording follow RFC 5321 (basic codes), RFC 3463 (enhanced codes),
RFC 3207 (STARTTLS) and RFC 3030 (BDAT). Each reply is a whole CRLF line.
"""

from stunnel3.layers.line_proxy import ProxyError

# RFC 3207 section 4: the only positive answer to STARTTLS.
READY_TO_START_TLS = b"220 2.0.0 Ready to start TLS\r\n"
# RFC 3207 section 4: STARTTLS takes no parameters.
STARTTLS_PARAMETERS = b"501 5.5.4 Syntax error (no parameters allowed)\r\n"
STARTTLS_BEFORE_HELO = b"503 5.5.1 Send EHLO or HELO first\r\n"
STARTTLS_IN_TRANSACTION = b"503 5.5.1 STARTTLS not allowed during a mail transaction\r\n"
STARTTLS_TWICE = b"503 5.5.1 TLS already active\r\n"
# A plaintext AUTH must not survive STARTTLS: a man in the middle could have logged
# the session into an account of his before the client asked for TLS. RFC 3207 names
# no reply for it; IMAP and POP3 refuse the same way (RFC 2595).
STARTTLS_AFTER_AUTH = b"503 5.5.1 STARTTLS is only allowed before authentication\r\n"
# CVE-2011-0411: bytes pipelined after STARTTLS are never executed. The session
# ends, because those bytes may have been injected by a man in the middle and
# nothing the client sends in plaintext afterwards can be trusted to be its own.
STARTTLS_INJECTION = (
    b"421 4.5.0 Commands pipelined after STARTTLS are refused (CVE-2011-0411),"
    b" closing connection\r\n"
)
# -n smtp: RFC 3207 section 4 suggests 530 for commands refused before TLS.
MUST_STARTTLS = b"530 5.7.0 Must issue a STARTTLS command first\r\n"
# RFC 3207 section 4: STARTTLS when TLS cannot be had here (this client's policy says
# STUNNEL3_STARTTLS=off, or the certificate cannot be used).
TLS_NOT_AVAILABLE = b"454 4.7.0 TLS not available due to temporary reason\r\n"
# TLS required and not available (the certificate cannot be used, or the policy says
# both): said instead of the backend's greeting (RFC 5321 section 3.1), then the end.
TLS_REQUIRED_UNAVAILABLE = (
    b"421 4.7.0 TLS is required but not available here, closing connection\r\n"
)
# RFC 4954 section 6: AUTH before TLS, while credentials are refused in plaintext
# (the default); also to what a client sent behind it without waiting.
ENCRYPTION_REQUIRED = b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"
# RFC 3207 section 4.2: after TLS the client must discard what it knew and greet again.
HELO_AFTER_TLS = b"503 5.5.1 Send EHLO or HELO first (the session was reset by STARTTLS)\r\n"
LINE_TOO_LONG = b"500 5.5.2 Line too long\r\n"
# The proxy does not offer CHUNKING (it would have to frame BDAT chunks through
# fixcrio and qmail-smtpd, which do not know BDAT): refuse, and skip the chunk
# unread (RFC 3030 section 2: the chunk follows the command without a wait).
BDAT_REFUSED = b"502 5.5.1 BDAT not supported (CHUNKING is not offered)\r\n"
BDAT_BAD_SIZE = b"501 5.5.4 Syntax error in BDAT chunk size, closing connection\r\n"
# Commands after which the bytes on the wire stop being SMTP commands and replies
# (TURN and ATRN reverse the roles, XEXCH50 sends a binary blob): the proxy
# could not follow them, and qmail-smtpd implements none of them.
NOT_IMPLEMENTED = b"502 5.5.1 Command not implemented\r\n"
TOO_MUCH_PIPELINING = b"421 4.7.0 Too many pipelined commands, closing connection\r\n"
BACKEND_RESET_FAILED = b"421 4.3.0 Server did not accept the reset after STARTTLS, closing\r\n"
BACKEND_LINE_TOO_LONG = b"421 4.3.0 Server reply line too long, closing connection\r\n"
# A 354 or 334 to a command followed by others already forwarded as commands: the
# backend now reads them as message data or SASL, and no later reply can be matched.
BACKEND_OUT_OF_STEP = b"421 4.3.0 Server reply out of step with the commands, closing\r\n"

STARTTLS_CAPABILITY = b"STARTTLS"

# RFC 5321 section 4.5.3.1.4 says 512 octets for a command line, but AUTH with
# an initial response and SASL continuation lines carry GSSAPI tokens: RFC 4954
# section 4 asks servers to accept 12288 octets there. 16 KiB covers both with
# room, and bounds what one client line can make the proxy hold.
MAX_LINE = 16384
# RFC 5321 section 4.5.3.1.8 requires 100 recipients per message; a pipelining
# client may send them in one write. Past this many unanswered commands the
# proxy stops reading commands until replies come back.
MAX_PENDING = 1000
# Bytes held unparsed while waiting (for a reply, for the handshake): past this
# the relay should stop reading the client (SmtpProxy.client_paused); past
# MAX_HELD the session ends.
PAUSE_HELD = 65536
MAX_HELD = 1 << 20

# EHLO keywords passed through to the client. Each of these is a one-command,
# one-reply extension (or a MAIL/RCPT parameter), which the proxy's reply FIFO
# tracks without knowing more. Everything else is dropped: CHUNKING and
# BINARYMIME (BDAT framing), PRDR (several replies to one end-of-data), STARTTLS
# (the proxy's own), ATRN/TURN (role reversal), XEXCH50 (binary blob), and any
# extension not known here, whose framing the proxy cannot promise to follow.
KEPT_EXTENSIONS = frozenset(
    {
        b"8BITMIME",
        b"AUTH",
        b"DELIVERBY",
        b"DSN",
        b"ENHANCEDSTATUSCODES",
        b"ETRN",
        b"EXPN",
        b"FUTURERELEASE",
        b"HELP",
        b"LIMITS",
        b"MT-PRIORITY",
        b"MTRK",
        b"NO-SOLICITING",
        b"ONEX",
        b"PIPELINING",
        b"REQUIRETLS",
        b"SIZE",
        b"SMTPUTF8",
        b"VERB",
        b"VRFY",
    }
)


class SmtpError(ProxyError):
    """The SMTP layer's error family (line_proxy.ProxyError): the reply ends the session."""


class ClientError(SmtpError):
    """The client broke the protocol or a bound."""


class BackendError(SmtpError):
    """The backend answered something the proxy cannot carry on from."""

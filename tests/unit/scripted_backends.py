"""Scripted SMTP, IMAP and POP3 servers for the relay's reply table (test_reply_table.py).

Each is sans-I/O: `greeting`, then `feed(bytes) -> bytes` answers what it was sent
(b"" is EOF); `closed` turns True when it hangs up (QUIT, LOGOUT, or its input
ended). They split verbs at any run of blanks, as mailfront does (the most liberal
backend the proxy must agree with), and know a few test-only commands:

    XSTALL   never answered, nor is anything after it (a backend that hangs)
    XHUGE    answered with a line far over the proxy's bound for backend lines
"""

import re

BLANKS = re.compile(rb"[ \t]+")
HUGE = 2 << 20  # over every layer's bound for a backend line


class Scripted:
    greeting = b""

    def __init__(self) -> None:
        self.buffer = b""
        self.closed = False
        self.stalled = False  # XSTALL came: nothing is answered any more
        self.received: list[bytes] = []

    def feed(self, data: bytes) -> bytes:
        if not data:
            self.closed = True
            return b""
        self.buffer += data
        out = []
        while not self.closed:
            line = self.take()
            if line is None:
                break
            self.received.append(line)
            self.stalled = self.stalled or b"XSTALL" in [w.upper() for w in words(line, 3)[:2]]
            out.append(b"" if self.stalled else self.answer(line))
        return b"".join(out)

    def take(self) -> bytes | None:
        end = self.buffer.find(b"\n")
        if end < 0:
            return None
        line, self.buffer = self.buffer[: end + 1], self.buffer[end + 1 :]
        return line

    def answer(self, line: bytes) -> bytes:
        raise NotImplementedError


def words(line: bytes, count: int) -> list[bytes]:
    """The line's first `count` blank-separated words (fewer if it has fewer)."""
    return BLANKS.split(line.strip(b"\r\n").strip(b" \t"), count - 1)


class SmtpBackend(Scripted):
    greeting = b"220 backend ESMTP\r\n"
    EHLO = b"250-backend\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250-CHUNKING\r\n250 HELP\r\n"

    def __init__(self, refuse_rset: bool = False, data_verb: bytes = b"DATA") -> None:
        super().__init__()
        self.refuse_rset = refuse_rset
        self.data_verb = data_verb  # what this server takes as DATA
        self.mode = "command"
        self.sasl_left = 0

    def answer(self, line: bytes) -> bytes:
        if self.mode == "data":
            if line.rstrip(b"\r\n") == b".":
                self.mode = "command"
                return b"250 OK queued\r\n"
            return b""
        if self.sasl_left:
            self.sasl_left -= 1
            return b"334 UGFzc3dvcmQ6\r\n" if self.sasl_left else b"235 2.7.0 Authenticated\r\n"
        first = words(line, 3)
        verb = first[0].upper()
        if verb == self.data_verb:
            self.mode = "data"
            return b"354 go ahead\r\n"
        if verb == b"AUTH":
            if len(first) > 2:
                return b"235 2.7.0 Authenticated\r\n"
            self.sasl_left = 2
            return b"334 VXNlcm5hbWU6\r\n"
        if verb == b"QUIT":
            self.closed = True
            return b"221 bye\r\n"
        if verb == b"RSET" and self.refuse_rset:
            return b"421 shutting down\r\n"
        if verb == b"XHUGE":
            return b"250 " + b"x" * HUGE + b"\r\n"
        replies = {b"EHLO": self.EHLO, b"HELO": b"250 backend\r\n", b"VRFY": b"252 maybe\r\n"}
        if verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
            return b"250 OK\r\n"
        return replies.get(verb, b"502 5.5.2 unrecognised\r\n")


class ImapBackend(Scripted):
    CAPABILITY = b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN COMPRESS=DEFLATE IDLE LITERAL+\r\n"

    def __init__(self, preauth: bool = False) -> None:
        super().__init__()
        self.greeting = b"* PREAUTH ready\r\n" if preauth else b"* OK backend ready\r\n"
        self.literal = 0  # bytes of a literal still to take
        self.command = b""  # a command line whose literal is being read
        self.waiting: tuple[bytes, bytes] | None = None  # (tag, verb) after a `+`

    def take(self) -> bytes | None:
        if self.literal:  # a literal's bytes belong to the command line they follow
            taken = self.buffer[: self.literal]
            self.buffer = self.buffer[len(taken) :]
            self.literal -= len(taken)
            self.command += taken
            if self.literal:
                return None
        return super().take()

    def answer(self, line: bytes) -> bytes:
        line = self.command + line
        self.command = b""
        announced = re.search(rb"\{([0-9]+)(\+?)\}\r?\n\Z", line)
        if announced:
            self.command = line
            self.literal = int(announced.group(1))
            return b"" if announced.group(2) else b"+ go ahead\r\n"
        if self.waiting is not None:
            tag, verb = self.waiting
            self.waiting = None
            return tag + b" OK " + verb + b" done\r\n"
        first = words(line, 3)
        tag, verb = first[0], first[1].upper() if len(first) > 1 else b""
        if verb == b"CAPABILITY":
            return self.CAPABILITY + tag + b" OK done\r\n"
        if verb == b"LOGIN":
            return tag + b" OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"
        if verb == b"AUTHENTICATE":
            if len(first) > 2 and b" " in first[2].strip():
                return tag + b" OK Logged in\r\n"
            self.waiting = (tag, verb)
            return b"+ \r\n"
        if verb == b"IDLE":
            self.waiting = (tag, verb)
            return b"+ idling\r\n"
        if verb == b"LOGOUT":
            self.closed = True
            return b"* BYE bye\r\n" + tag + b" OK done\r\n"
        if verb == b"SELECT":
            return b"* 1 EXISTS\r\n" + tag + b" OK [READ-WRITE] selected\r\n"
        if verb == b"FETCH":
            return b"* 1 FETCH (BODY[] {11}\r\na1 OK fake)\r\n" + tag + b" OK done\r\n"
        if verb == b"XHUGE":
            return b"* " + b"x" * HUGE + b"\r\n"
        if verb == b"NOOP":
            return tag + b" OK done\r\n"
        return tag + b" BAD unknown command\r\n"


class Pop3Backend(Scripted):
    greeting = b"+OK backend ready\r\n"
    CAPA = b"+OK\r\nUSER\r\nSASL PLAIN\r\nPIPELINING\r\nSTLS\r\nX-UNKNOWN\r\n.\r\n"
    BODIES = {b"LIST": b"1 5\r\n", b"UIDL": b"1 a\r\n", b"RETR": b"hello\r\n.. dot\r\n"}

    def __init__(self) -> None:
        super().__init__()
        self.sasl = False

    def answer(self, line: bytes) -> bytes:
        if self.sasl:
            self.sasl = False
            return b"+OK logged in\r\n"
        first = words(line, 3)
        verb, argument = first[0].upper(), b" ".join(first[1:])
        if verb == b"CAPA":
            return self.CAPA
        if verb == b"AUTH":
            if not argument:
                return b"+OK\r\nPLAIN\r\n.\r\n"
            if len(first) > 2:
                return b"+OK logged in\r\n"
            self.sasl = True
            return b"+ \r\n"
        if verb in (b"LIST", b"UIDL") and not argument or verb in (b"RETR", b"TOP"):
            return b"+OK\r\n" + self.BODIES.get(verb, b"hello\r\n") + b".\r\n"
        if verb == b"QUIT":
            self.closed = True
            return b"+OK bye\r\n"
        if verb == b"XHUGE":
            return b"+OK " + b"x" * HUGE + b"\r\n"
        if verb in (b"USER", b"PASS", b"APOP", b"STAT", b"LIST", b"UIDL", b"NOOP", b"RSET"):
            return b"+OK\r\n"
        return b"-ERR unknown command\r\n"

"""Every reply reaches the client at once, in every state, through the relay with real TLS.

For SMTP, IMAP and POP3 the table is generated: every state (before and after TLS,
-n smtp and -n pop3 too) crossed with every command, including the ones the proxy
answers itself (a second STARTTLS, STARTTLS with arguments, BDAT, TURN, a line too
long, pipelined injection) and backends that misbehave. For each cell:

1. the layer alone (no I/O, tests/unit/scripted_backends.py behind it) says what
   the client must receive after each of its writes, and whether the session ends;
2. the same writes go through a real Relay (relay.py) in a thread: socket pairs,
   our TlsSession on the proxy's side and Python's ssl as the client after
   STARTTLS, the scripted backend on its own socket. After each write the client
   sends nothing more, and what the layer said must arrive within REPLY_BOUND;
   a session the layer ended must reach EOF, and the relay must finish by itself.

A last test per protocol checks that the table met every reply the layer can
write itself (its reply constants), so a new reply cannot be left out.
"""

import base64
import itertools
import select
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass

import pytest
import trustme
from scripted_backends import ImapBackend, Pop3Backend, SmtpBackend

from stunnel3.engine.endpoints import Endpoint
from stunnel3.layers import imap, pop3, smtp_text
from stunnel3.layers.imap import ImapProxy
from stunnel3.layers.pop3 import Pop3Proxy
from stunnel3.layers.protocol import Close, StartTls, TlsInfo, ToBackend, ToClient
from stunnel3.options import Options
from stunnel3.relay import Relay
from stunnel3.smtp import SmtpProxy
from stunnel3.tls import TlsSession, make_context

REPLY_BOUND = 3.0  # seconds: the stall this guards against lasted the 600 s idle timeout
SEND_BOUND = 30.0  # for the test's biggest writes (a few MiB) to be taken
TLS = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)
SECRET = base64.b64encode(b"\0alice\0s3cret").decode().encode()


class Quiet:
    level = 7

    def log(self, level, text):
        pass

    err = warning = notice = info = debug = lambda self, text: None


# -- the table -------------------------------------------------------------------------
# A state: (layer options, backend options, the writes that lead there).
# A command: the bytes of one client write.

EHLO, STARTTLS = b"EHLO x\r\n", b"STARTTLS\r\n"
# This client's policy (policy.py): logins allowed before TLS; STARTTLS not offered;
# TLS required and not offered (the session ends at once).
PLAINTEXT, NOT_OFFERED = {"plaintext_auth": True}, {"offer_tls": False}
UNAVAILABLE = {"require_tls": True, "offer_tls": False}
SMTP_STATES = {
    "fresh": ({}, {}, []),
    "greeted": ({}, {}, [EHLO]),
    "transaction": ({}, {}, [EHLO, b"MAIL FROM:<a@x>\r\n"]),
    "auth refused": ({}, {}, [EHLO, b"AUTH LOGIN\r\n"]),
    "plaintext auth": (PLAINTEXT, {}, [EHLO]),
    "authenticated": (PLAINTEXT, {}, [EHLO, b"AUTH PLAIN " + SECRET + b"\r\n"]),
    "rset refused": ({}, {"refuse_rset": True}, [EHLO]),
    "VRFY is DATA": ({}, {"data_verb": b"VRFY"}, [EHLO]),
    "tls": ({}, {}, [EHLO, STARTTLS]),
    "tls greeted": ({}, {}, [EHLO, STARTTLS, EHLO]),
    "tls transaction": ({}, {}, [EHLO, STARTTLS, EHLO, b"MAIL FROM:<a@x>\r\n"]),
    "tls authenticated": ({}, {}, [EHLO, STARTTLS, EHLO, b"AUTH PLAIN " + SECRET + b"\r\n"]),
    "required": ({"require_tls": True}, {}, []),
    "required greeted": ({"require_tls": True}, {}, [EHLO]),
    "required tls": ({"require_tls": True}, {}, [EHLO, STARTTLS]),
    "not offered": (NOT_OFFERED, {}, [EHLO]),
    "required unavailable": (UNAVAILABLE, {}, []),
}
SMTP_COMMANDS = {
    "EHLO": EHLO,
    "HELO": b"HELO x\r\n",
    "MAIL": b"MAIL FROM:<a@x>\r\n",
    "RCPT": b"RCPT TO:<b@x>\r\n",
    "DATA": b"DATA\r\n",
    "DATA tab": b"DATA\t\r\n",
    "RSET": b"RSET\r\n",
    "NOOP": b"NOOP\r\n",
    "QUIT": b"QUIT\r\n",
    "VRFY": b"VRFY a\r\n",
    "VRFY pipelined": b"VRFY a\r\nNOOP\r\n",
    "AUTH PLAIN": b"AUTH PLAIN " + SECRET + b"\r\n",
    "AUTH tab": b"AUTH\tPLAIN\t" + SECRET + b"\r\n",
    "AUTH LOGIN": b"AUTH LOGIN\r\n",
    "STARTTLS": STARTTLS,
    "starttls": b"starttls\r\n",
    "STARTTLS argument": b"STARTTLS x\r\n",
    "STARTTLS tab argument": b"STARTTLS\tx\r\n",
    "BDAT": b"BDAT 4 LAST\r\nabcd",
    "BDAT no size": b"BDAT\r\n",
    "BDAT bad size": b"BDAT x LAST\r\n",
    "TURN": b"TURN\r\n",
    "ATRN": b"ATRN\r\n",
    "XEXCH50": b"XEXCH50 2 2\r\n",
    "unknown": b"XYZZY\r\n",
    "empty": b"\r\n",
    "line too long": b"NOOP " + b"a" * smtp_text.MAX_LINE + b"\r\n",
    "injection": STARTTLS + b"NOOP\r\n",
    "huge reply": b"XHUGE\r\n",
}

LOGIN = b"a LOGIN alice s3cret\r\n"
IMAP_STATES = {
    "fresh": ({}, {}, []),
    "authenticate refused": ({}, {}, [b"a AUTHENTICATE PLAIN\r\n"]),
    "plaintext auth": (PLAINTEXT, {}, []),
    "authenticated": (PLAINTEXT, {}, [LOGIN]),
    "preauth": ({}, {"preauth": True}, []),
    "tls": ({}, {}, [b"s STARTTLS\r\n"]),
    "tls authenticated": ({}, {}, [b"s STARTTLS\r\n", LOGIN]),
    "required": ({"require_tls": True}, {}, []),
    "not offered": (NOT_OFFERED, {}, []),
    "required unavailable": (UNAVAILABLE, {}, []),
}
IMAP_COMMANDS = {
    "CAPABILITY": b"c CAPABILITY\r\n",
    "NOOP": b"c NOOP\r\n",
    "LOGIN": LOGIN,
    "LOGIN literal": b"c LOGIN {5+}\r\nalice s3cret\r\n",
    "AUTHENTICATE": b"c AUTHENTICATE PLAIN\r\n",
    "AUTHENTICATE initial": b"c AUTHENTICATE PLAIN " + SECRET + b"\r\n",
    "IDLE": b"c IDLE\r\n",
    "SELECT": b"c SELECT INBOX\r\n",
    "FETCH": b"c FETCH 1 BODY[]\r\n",
    "LOGOUT": b"c LOGOUT\r\n",
    "STARTTLS": b"c STARTTLS\r\n",
    "starttls": b"c starttls\r\n",
    "STARTTLS argument": b"c STARTTLS x\r\n",
    "STARTTLS literal": b"c STARTTLS {3+}\r\nabc\r\n",
    "COMPRESS": b"c COMPRESS DEFLATE\r\n",
    "unknown": b"c XYZZY\r\n",
    "bare": SECRET + b"\r\n",
    "line too long": b"c NOOP " + b"a" * imap.MAX_LINE + b"\r\n",
    "injection": b"c STARTTLS\r\nd NOOP\r\n",
    # XSTALL as the tag: a NOOP, which passes in every state, that the backend never answers
    "flood": b"XSTALL NOOP\r\n" + b"d NOOP\r\n" * (imap.MAX_HELD // 8 + imap.MAX_PENDING + 1),
    "huge reply": b"c XHUGE\r\n",
}

USER_PASS = [b"USER alice\r\n", b"PASS s3cret\r\n"]
POP3_STATES = {
    "fresh": ({}, {}, []),
    "auth refused": ({}, {}, [b"AUTH PLAIN\r\n"]),
    "plaintext auth": (PLAINTEXT, {}, []),
    "logged in": (PLAINTEXT, {}, USER_PASS),
    "tls": ({}, {}, [b"STLS\r\n"]),
    "tls logged in": ({}, {}, [b"STLS\r\n", *USER_PASS]),
    "required": ({"require_tls": True}, {}, []),
    "required tls": ({"require_tls": True}, {}, [b"STLS\r\n"]),
    "not offered": (NOT_OFFERED, {}, []),
    "required unavailable": (UNAVAILABLE, {}, []),
}
POP3_COMMANDS = {
    "CAPA": b"CAPA\r\n",
    "USER": b"USER alice\r\n",
    "PASS": b"PASS s3cret\r\n",
    "AUTH list": b"AUTH\r\n",
    "AUTH PLAIN": b"AUTH PLAIN\r\n",
    "AUTH initial": b"AUTH PLAIN " + SECRET + b"\r\n",
    "STAT": b"STAT\r\n",
    "LIST": b"LIST\r\n",
    "LIST 1": b"LIST 1\r\n",
    "RETR": b"RETR 1\r\n",
    "TOP": b"TOP 1 0\r\n",
    "UIDL": b"UIDL\r\n",
    "NOOP": b"NOOP\r\n",
    "QUIT": b"QUIT\r\n",
    "STLS": b"STLS\r\n",
    "stls": b"stls\r\n",
    "STLS argument": b"STLS x\r\n",
    "unknown": b"XYZZY\r\n",
    "line too long": b"NOOP " + b"a" * pop3.MAX_LINE + b"\r\n",
    "injection": b"STLS\r\nNOOP\r\n",
    # a NOOP the backend never answers (nor anything after it): a command in every state
    "flood": b"NOOP XSTALL\r\n" + b"NOOP\r\n" * (pop3.MAX_HELD // 6 + pop3.MAX_PENDING + 1),
    "huge reply": b"XHUGE\r\n",
}

PROTOCOLS = {
    "smtp": (SmtpProxy, SmtpBackend, SMTP_STATES, SMTP_COMMANDS),
    "imap": (ImapProxy, ImapBackend, IMAP_STATES, IMAP_COMMANDS),
    "pop3": (Pop3Proxy, Pop3Backend, POP3_STATES, POP3_COMMANDS),
}
CELLS = [
    (protocol, state, command)
    for protocol, (_, _, states, commands) in PROTOCOLS.items()
    for state, command in itertools.product(states, commands)
]


def cell_parts(protocol: str, state: str, command: str):
    layer_class, backend_class, states, commands = PROTOCOLS[protocol]
    layer_options, backend_options, writes = states[state]

    def layer():
        return layer_class(log_dialogue=True, **layer_options)

    def backend():
        return backend_class(**backend_options)

    return layer, backend, [b"", *writes, commands[command]]


# -- what the layer alone says -------------------------------------------------------


@dataclass
class Segment:
    """What the client receives after one of its writes."""

    before: bytes = b""  # in the clear, or through TLS if it is already on
    tls: bool = False  # the layer started TLS: the client's handshake follows `before`
    after: bytes = b""  # through the TLS that this write started
    closed: bool = False  # the session ends (EOF to the client)


def offline(layer, backend, writes) -> list[Segment]:
    """Run the layer against the scripted backend with no I/O: one Segment per write
    (writes[0] is b"": what the client gets before it says anything)."""
    segments = []
    queue: deque = deque(layer.start())
    for number, data in enumerate(writes):
        segment = Segment()
        before: list[bytes] = []
        after: list[bytes] = []
        if number == 0:
            queue.extend(layer.feed_backend(backend.greeting))
        else:
            queue.extend(layer.feed_client(data))
        while queue:
            action = queue.popleft()
            if isinstance(action, ToClient):
                if not action.data:
                    segment.closed = True
                else:
                    (after if segment.tls else before).append(action.data)
            elif isinstance(action, ToBackend):
                was_closed = backend.closed
                replies = backend.feed(action.data)
                if replies:
                    queue.extend(layer.feed_backend(replies))
                if backend.closed and not was_closed:
                    queue.extend(layer.feed_backend(b""))
            elif isinstance(action, StartTls):
                segment.tls = True
                queue.extend(layer.tls_started(TLS))
            elif isinstance(action, Close):
                segment.closed = True
        segment.before, segment.after = b"".join(before), b"".join(after)
        segments.append(segment)
        if segment.closed:
            break
    return segments


# -- the same through the relay ---------------------------------------------------------


class Client:
    """The client's end of the network socket pair: plaintext, then Python's ssl."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.conn: socket.socket = sock
        self.got = bytearray()
        self.eof = False
        sock.setblocking(False)

    def start_tls(self, context: ssl.SSLContext) -> None:
        self.sock.settimeout(REPLY_BOUND)
        self.sock = self.conn = context.wrap_socket(self.sock)  # the plain one is detached
        self.conn.setblocking(False)

    def exchange(self, data: bytes, want: int, eof: bool) -> bytes:
        """Send data (reading meanwhile), then read until `want` bytes (and EOF if
        asked) are in, or REPLY_BOUND passes after the last byte went; the first
        `want` bytes received."""
        deadline = time.monotonic() + (SEND_BOUND if data else REPLY_BOUND)
        view = memoryview(data)
        while view or len(self.got) < want or (eof and not self.eof):
            left = deadline - time.monotonic()
            if left <= 0 or (self.eof and not view):
                break
            sending = [self.sock] if view else []
            readable, writable, _ = select.select([self.sock], sending, [], left)
            if writable:
                try:
                    view = view[self.conn.send(view[:65536]) :]
                except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    pass
                except OSError:  # the proxy has hung up: what it said is still to read
                    view = view[:0]
                if not view:
                    deadline = time.monotonic() + REPLY_BOUND
            if readable:
                self._read()
        taken = bytes(self.got[:want])
        del self.got[:want]
        return taken

    def _read(self) -> None:
        while not self.eof:
            try:
                chunk = self.conn.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError):
                chunk = b""
            if not chunk:
                self.eof = True
            self.got += chunk


def serve_backend(sock: socket.socket, backend) -> None:
    """The scripted backend on its socket, until its input ends or it hangs up."""
    try:
        sock.sendall(backend.greeting)
        while data := sock.recv(65536):
            sock.sendall(backend.feed(data))
            if backend.closed:
                sock.shutdown(socket.SHUT_WR)
                break
    except OSError:
        pass


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    pem = tmp_path_factory.mktemp("table") / "server.pem"
    cert = trustme.CA(key_type=trustme.KeyType.ECDSA).issue_cert("localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return make_context(Options(pem=str(pem)), Quiet()), client


def through_relay(contexts, layer, backend, writes, segments) -> None:
    server_context, client_context = contexts
    net_ours, net_theirs = socket.socketpair()
    back_ours, back_theirs = socket.socketpair()
    net_fd, back_fd = net_theirs.detach(), back_theirs.detach()
    relay = Relay(
        Endpoint(net_fd, net_fd, "network"),
        Endpoint(back_fd, back_fd, "backend"),
        layer,
        lambda: TlsSession(server_context, server=True),
        Quiet(),
    )
    failures: list[BaseException] = []

    def run_relay():
        try:
            relay.run()
        except BaseException as error:  # shown by the test, not lost in a thread
            failures.append(error)

    threads = [
        threading.Thread(target=run_relay, daemon=True),
        threading.Thread(target=serve_backend, args=(back_ours, backend), daemon=True),
    ]
    for thread in threads:
        thread.start()
    client = Client(net_ours)
    try:
        for number, (data, segment) in enumerate(zip(writes, segments, strict=False)):
            got = client.exchange(data, len(segment.before), segment.closed and not segment.tls)
            assert got == segment.before, f"write {number} {data[:60]!r}: {got[-300:]!r}"
            if segment.tls:
                client.start_tls(client_context)
                got = client.exchange(b"", len(segment.after), segment.closed)
                assert got == segment.after, f"after TLS on write {number}: {got[-300:]!r}"
            if segment.closed:
                assert client.eof, f"write {number} {data[:60]!r}: the session did not end"
                threads[0].join(REPLY_BOUND)
                assert not threads[0].is_alive(), "the relay did not finish after Close"
    finally:
        net_ours.close()
        back_ours.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(10)
        back_ours.close()
        relay.client.close()
        relay.backend.close()
    assert not failures, failures
    assert not any(thread.is_alive() for thread in threads)


@pytest.mark.parametrize("protocol,state,command", CELLS, ids=["/".join(c) for c in CELLS])
def test_every_reply_arrives_without_more_input(contexts, protocol, state, command):
    layer, backend, writes = cell_parts(protocol, state, command)
    segments = offline(layer(), backend(), writes)
    assert len(segments) == len(writes) or segments[-1].closed
    through_relay(contexts, layer(), backend(), writes, segments)


# -- the table covers every reply the layers write themselves ---------------------------


def replies_of(module, exempt=()) -> dict[str, bytes]:
    return {
        name: value
        for name, value in vars(module).items()
        if name.isupper() and isinstance(value, bytes) and value.endswith(b"\r\n")
        if name not in exempt
    }


# The relay stops reading a client while SmtpProxy.client_paused (PAUSE_HELD), far
# below MAX_HELD: through the relay that reply cannot come (test_smtp tests it alone).
REPLIES = {
    "smtp": replies_of(smtp_text, exempt={"TOO_MUCH_PIPELINING"}),
    "imap": replies_of(imap),
    "pop3": replies_of(pop3, exempt={"STLS_CAPABILITY"}),  # a CAPA line, not a reply
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_table_meets_every_reply_of_the_layer(protocol):
    seen = b""
    for cell in CELLS:
        if cell[0] == protocol:
            layer, backend, writes = cell_parts(*cell)
            seen += b"".join(s.before + s.after for s in offline(layer(), backend(), writes))
    missing = [name for name, reply in REPLIES[protocol].items() if reply.rstrip() not in seen]
    assert not missing, f"no cell of the {protocol} table gets {missing}"

"""The one client every server is measured with: Python's ssl on blocking sockets.

A session is what a mail client does for STARTTLS: read the greeting, EHLO, STARTTLS, handshake,
EHLO again, QUIT. Threads, not asyncio: the handshake and the socket calls release the GIL, and
asyncio's SSL goes through memory BIOs in Python, which would make the client the bottleneck.
The caller measures this process's CPU (RUSAGE_SELF) to show that it is not.
"""

import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

TIMEOUT = 20.0
CHUNK = 256 * 1024


class SessionError(Exception):
    """A server answered something a STARTTLS session cannot go on from."""


@dataclass
class Session:
    """Seconds from connect() to the greeting, to TLS ready and to the end; the TLS used."""

    greeting: float
    tls_ready: float
    total: float
    version: str
    cipher: str
    tls_session: ssl.SSLSession | None = None  # what the server gave to resume with
    resumed: bool = False  # this session was resumed from the one offered


def client_context() -> ssl.SSLContext:
    # No verification: the certificate is the same for every server, and verifying it would only
    # add the same client cost to all of them.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def read_reply(sock, buffer: bytearray) -> bytes:
    """One whole (maybe multi-line) SMTP reply; leftover bytes stay in buffer."""
    while True:
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start : end + 1])
            start = end + 1
            if len(line) >= 4 and line[3:4] != b"-":
                reply = bytes(buffer[:start])
                del buffer[:start]
                return reply
        data = sock.recv(4096)
        if not data:
            raise SessionError(f"connection closed after {bytes(buffer)!r}")
        buffer += data


def expect(sock, buffer: bytearray, code: bytes) -> bytes:
    reply = read_reply(sock, buffer)
    if not reply.startswith(code):
        raise SessionError(f"expected {code.decode()}, got {reply[:200]!r}")
    return reply


def starttls_session(port: int, context: ssl.SSLContext, resume=None) -> Session:
    """One session; `resume`: a ssl.SSLSession to offer (Session.tls_session, .resumed)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        expect(raw, buffer, b"220")
        greeting = time.perf_counter()
        raw.sendall(b"EHLO client.invalid\r\n")
        if b"STARTTLS" not in expect(raw, buffer, b"250").upper():
            raise SessionError("STARTTLS not advertised")
        raw.sendall(b"STARTTLS\r\n")
        expect(raw, buffer, b"220")
        tls = context.wrap_socket(raw, server_hostname="localhost", session=resume)
        tls_ready = time.perf_counter()
        buffer.clear()
        tls.sendall(b"EHLO client.invalid\r\n")
        expect(tls, buffer, b"250")
        tls.sendall(b"QUIT\r\n")
        expect(tls, buffer, b"221")
        version, cipher = tls.version() or "", (tls.cipher() or ("",))[0]
        ticket, resumed = tls.session, tls.session_reused  # TLS 1.3: after the first read
        tls.close()
    end = time.perf_counter()
    return Session(greeting - start, tls_ready - start, end - start, version, cipher, ticket,
                   resumed)  # fmt: skip


@dataclass
class LoadResult:
    sessions: int  # completed before the deadline
    errors: int
    completed: int  # all completed, also those in flight at the deadline
    seconds: float
    elapsed: float = 0.0  # from the start to the last completed session
    first_error: str = ""
    versions: set[str] = field(default_factory=set)


def saturate(port: int, clients: int, seconds: float) -> LoadResult:
    """`clients` threads start sessions for `seconds`, and finish those in flight. Sessions per
    second are all completed sessions over the time to the last one: a server slower than
    `seconds` per session under this load still gets a true rate, not zero."""
    context = client_context()
    start = time.perf_counter()
    deadline = start + seconds
    lock = threading.Lock()
    result = LoadResult(0, 0, 0, seconds)

    def worker() -> None:
        while time.perf_counter() < deadline:
            try:
                session = starttls_session(port, context)
            except (OSError, SessionError) as error:
                with lock:
                    result.errors += 1
                    result.first_error = result.first_error or repr(error)
                time.sleep(0.05)
                continue
            with lock:
                result.sessions += time.perf_counter() <= deadline
                result.completed += 1
                result.elapsed = time.perf_counter() - start
                result.versions.add(f"{session.version} {session.cipher}")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 3 * TIMEOUT)
    return result


def resumptions(port: int, count: int) -> int:
    """How many of `count` reconnections resume the session (ticket) of the one before."""
    context = client_context()
    offered = starttls_session(port, context).tls_session
    resumed = 0
    for _ in range(count):
        session = starttls_session(port, context, offered)
        resumed += session.resumed
        offered = session.tls_session or offered
    return resumed


def one_by_one(port: int, count: int) -> list[Session]:
    """count sessions in a row with one client: latency without queueing."""
    context = client_context()
    return [starttls_session(port, context) for _ in range(count)]


def bulk_upload(port: int, nbytes: int) -> float:
    """Seconds to push nbytes through a plain TLS relay to a backend that reads exactly nbytes
    and then says `done` (no half-close: servers differ in how they pass one on)."""
    context = client_context()
    block = bytes(CHUNK)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            start = time.perf_counter()
            left = nbytes
            while left > 0:
                tls.sendall(block[: min(left, CHUNK)])
                left -= CHUNK
            answer = tls.recv(64)
            seconds = time.perf_counter() - start
    if not answer.startswith(b"done"):
        raise SessionError(f"bulk upload: backend said {answer!r}")
    return seconds


def bulk_download(port: int, nbytes: int) -> float:
    """Seconds to receive nbytes from a backend that writes them at once."""
    context = client_context()
    buffer = bytearray(CHUNK)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            start = time.perf_counter()
            got = 0
            while got < nbytes:
                n = tls.recv_into(buffer)
                if not n:
                    break
                got += n
            seconds = time.perf_counter() - start
    if got < nbytes:
        raise SessionError(f"bulk download: {got} of {nbytes} bytes")
    return seconds

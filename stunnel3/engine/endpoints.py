"""The two ends of a session as the relay sees them: a read fd and a write fd.

An end may be one socket (fds 0 and 1 from tcpserver, an accepted socket, a
-r connection, a socketpair to a -l program), two pipes, or a pty master (-L).
What differs is only how its write side is closed and how errors read:

- a socket half-closes with shutdown(SHUT_WR), whatever fd names it;
- a pipe's write side is closed; two different fds are two pipes;
- a pty cannot half-close (its EOF is the child's exit: read gives EIO).

What waits for an end to become writable sits in a `ByteQueue`: the chunks as
they came (no copying them into one buffer), written with one writev().
"""

import collections
import errno
import os
import socket
import stat
import struct


class PeerError(Exception):
    """An fd failed (reset, broken pipe): the session ends with a reset."""


def is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def _on_socket(fd: int, action) -> None:
    sock = socket.socket(fileno=fd)
    try:
        action(sock)
    finally:
        sock.detach()


def set_nodelay(fd: int) -> None:
    """No Nagle delay: SMTP is a dialogue of small lines."""
    try:
        _on_socket(fd, lambda s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
    except OSError:
        pass  # a unix socket has no Nagle


def reset(fd: int) -> None:
    """Make close() send RST (SO_LINGER 0), as 3.22 did on an error."""
    try:
        linger = struct.pack("ii", 1, 0)
        _on_socket(fd, lambda s: s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger))
    except OSError:
        pass


def peer_address(fd: int) -> tuple[str, int] | None:
    """(ip, port) of the peer of a TCP socket; None for pipes and unix sockets."""
    try:
        peer: list = []
        _on_socket(fd, lambda s: peer.append(s.getpeername()))
    except OSError:
        return None
    address = peer[0]
    if not isinstance(address, tuple):
        return None
    host = address[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, address[1]


IOV_MAX = 64  # chunks per writev: far below the kernel's 1024, and enough for a burst


class ByteQueue:
    """Bytes in order, kept as the chunks they were queued in; len() is the byte count."""

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes | memoryview] = collections.deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iadd__(self, data) -> "ByteQueue":
        if data:
            # Only immutable bytes are kept as they are: a caller may reuse its bytearray.
            self._chunks.append(data if isinstance(data, bytes) else bytes(data))
            self._size += len(data)
        return self

    def front(self, limit: int) -> list[bytes | memoryview]:
        """The first chunks, about `limit` bytes of them (at least one chunk)."""
        chunks: list[bytes | memoryview] = []
        total = 0
        for chunk in self._chunks:
            if chunks and (total + len(chunk) > limit or len(chunks) == IOV_MAX):
                break
            chunks.append(chunk)
            total += len(chunk)
        return chunks

    def consume(self, count: int) -> None:
        """Drop the first `count` bytes (a partial write cuts a chunk with a view)."""
        self._size -= count
        while count:
            chunk = self._chunks[0]
            if count < len(chunk):
                self._chunks[0] = memoryview(chunk)[count:]
                return
            count -= len(chunk)
            self._chunks.popleft()


class Endpoint:
    """One side of the relay: non-blocking reads and writes on its fds."""

    def __init__(self, rfd: int, wfd: int, label: str, pty: bool = False):
        self.rfd = rfd
        self.wfd = wfd
        self.label = label
        self.pty = pty
        self.program: tuple[int, int] | None = None  # (pid, pidfd): the -l program here
        self.socket = is_socket(wfd)
        for fd in {rfd, wfd}:
            os.set_blocking(fd, False)

    def read(self, size: int) -> bytes | None:
        """Bytes, b"" at EOF, None if nothing is there yet."""
        try:
            return os.read(self.rfd, size)
        except BlockingIOError:
            return None
        except OSError as error:
            if self.pty and error.errno == errno.EIO:
                return b""  # the program on the pty has exited
            raise PeerError(f"read ({self.label}): {error.strerror} ({error.errno})") from None

    def write(self, data) -> int:
        try:
            return os.write(self.wfd, data)
        except BlockingIOError:
            return 0
        except OSError as error:
            raise PeerError(f"write ({self.label}): {error.strerror} ({error.errno})") from None

    def write_from(self, queue: ByteQueue, limit: int) -> int:
        """Write up to about `limit` bytes from the front of queue; drop what was written."""
        chunks = queue.front(limit)
        try:
            sent = os.writev(self.wfd, chunks) if len(chunks) > 1 else os.write(self.wfd, chunks[0])
        except BlockingIOError:
            return 0
        except OSError as error:
            raise PeerError(f"write ({self.label}): {error.strerror} ({error.errno})") from None
        queue.consume(sent)
        return sent

    def shut_write(self) -> None:
        """Tell the peer we are done writing; reading goes on."""
        if self.pty:
            return
        if self.socket:
            try:
                _on_socket(self.wfd, lambda s: s.shutdown(socket.SHUT_WR))
            except OSError:
                pass  # already gone: the read side will say so
        elif self.wfd != self.rfd:
            os.close(self.wfd)
            self.wfd = -1

    def reset(self) -> None:
        for fd in {self.rfd, self.wfd}:
            if fd >= 0 and is_socket(fd):
                reset(fd)

    def close(self) -> None:
        """Close both fds; 0, 1 and 2 are left on an empty pipe instead, so that no
        later open takes their numbers (stdin and stdout of a process are never free)."""
        for fd in {self.rfd, self.wfd}:
            if fd < 0:
                continue
            try:
                if fd > 2:
                    os.close(fd)
                else:
                    empty, other = os.pipe()
                    os.close(other)
                    os.dup2(empty, fd, inheritable=False)
                    os.close(empty)
            except OSError:
                pass
        self.rfd = self.wfd = -1


SOCKET_KIND = {"a": "accept", "l": "local", "r": "remote"}  # 3.22's names in its log line


def apply_socket_options(fd: int, socket_options, where: str, log) -> bool:
    """-O a|l|r:NAME=value on this socket, as 3.22's set_socket_options: "a" is the
    listening (accepting) socket, "l" the local one (fd 0, an accepted connection),
    "r" the remote one. In 3.22's table order, the last -O for a name winning.
    False after the first that fails (`NAME: <strerror> (<errno>)`)."""
    from stunnel3.options import SOCKET_OPTIONS

    latest = {option.name: option for option in socket_options if option.where == where}
    for option in sorted(latest.values(), key=lambda o: list(SOCKET_OPTIONS).index(o.name)):
        level = socket.IPPROTO_TCP if option.name.startswith("TCP_") else socket.SOL_SOCKET
        if option.name.startswith("IP_"):
            level = socket.IPPROTO_IP
        number = getattr(socket, option.name, None)
        if option.name == "SO_LINGER":
            value: int | bytes = struct.pack("ii", option.value[0], option.value[1])
        elif option.name.endswith("TIMEO"):
            value = struct.pack("ll", option.value[0], option.value[1])
        elif option.text is not None:
            value = option.text.encode() + b"\0"
        else:
            value = option.value[0]
        try:
            if number is None:
                raise OSError(errno.ENOPROTOOPT, os.strerror(errno.ENOPROTOOPT))
            _on_socket(fd, lambda s, lv=level, n=number, v=value: s.setsockopt(lv, n, v))
        except OSError as error:
            log.err(f"{option.name}: {error.strerror} ({error.errno})")
            return False
        log.debug(f"{option.name} option set on {SOCKET_KIND[where]} socket")
    return True

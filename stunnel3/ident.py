"""-u user: ask the client's ident server (RFC 1413) who owns the connection.

3.22 asked `<remote port> , <local port>` on the client's port 113, read one
line `<ports> : USERID : <os> : <user>`, and let the connection in only if the
user matched; every failure (no ident server, a timeout, an ERROR reply)
refuses it. The port is 113 (3.22 asked /etc/services for "auth", which the
jail does not hold).
"""

import socket

IDENT_PORT = 113
TIMEOUT = 10.0  # seconds for the whole query: a dead ident server must not hold a worker
MAX_REPLY = 1000  # RFC 1413 §6: replies fit well under this


def ident_user(local: tuple, remote: tuple) -> str | None:
    """The user the ident server names for this connection, None if it says nothing."""
    try:
        with socket.create_connection((remote[0], IDENT_PORT), TIMEOUT, (local[0], 0)) as query:
            query.sendall(f"{remote[1]} , {local[1]}\r\n".encode())
            reply = b""
            while b"\n" not in reply and len(reply) < MAX_REPLY:
                chunk = query.recv(MAX_REPLY)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    fields = reply.split(b"\n")[0].decode("latin-1").rstrip("\r").split(":", 3)
    if len(fields) != 4 or fields[1].strip().upper() != "USERID":
        return None
    return fields[3].strip()


def check(fd: int, wanted: str, log) -> bool:
    """True if the ident server names `wanted` as the owner of the connection on fd."""
    sock = socket.socket(fileno=fd)
    try:
        local, remote = sock.getsockname(), sock.getpeername()
    finally:
        sock.detach()
    user = ident_user(local, remote)
    if user is not None:
        log.info(f"IDENT resolved remote user to {user}")
    if user == wanted:
        return True
    host = remote[0].removeprefix("::ffff:")
    log.warning(f"Connection from {host}:{remote[1]} REFUSED by IDENT")
    return False

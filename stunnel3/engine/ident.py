"""-u user: ask the client's ident server (RFC 1413) who owns the connection.

3.22 asked `<remote port> , <local port>` on the client's port 113, read one
line `<ports> : USERID : <os> : <user>`, and let the connection in only if the
user matched; every failure (no ident server, a timeout, an ERROR reply)
refuses it. The port is 113 (3.22 asked /etc/services for "auth", which the
jail does not hold). The local port asked about is the connection's own (3.22
asked about its -d port, 0 in inetd mode, which no ident server can answer).
"""

import socket

from stunnel3.log import printable

IDENT_PORT = 113
TIMEOUT = 10.0  # seconds for the whole query: a dead ident server must not hold a worker
MAX_REPLY = 1000  # RFC 1413 §6: replies fit well under this


def ident_user(local: tuple, remote: tuple, log) -> str | None:
    """The user the ident server names for this connection, None if it says nothing.

    3.22's lines: the connection, the query and the reply at debug, a failure as
    an error (`connect#1 (auth_user): <strerror> (<errno>)`)."""
    try:
        query = socket.create_connection((remote[0], IDENT_PORT), TIMEOUT, (local[0], 0))
    except OSError as error:
        log.err(f"connect#1 (auth_user): {error.strerror or error} ({error.errno or 0})")
        return None
    with query:
        log.debug("IDENT server connected (#1)")
        asked = f"{remote[1]} , {local[1]}"
        reply = b""
        try:
            query.sendall(f"{asked}\r\n".encode())
            log.debug(f" -> {asked}")
            while b"\n" not in reply and len(reply) < MAX_REPLY:
                chunk = query.recv(MAX_REPLY)
                if not chunk:
                    break
                reply += chunk
        except OSError as error:
            log.err(f"fdscanf (auth_user): {error.strerror or error} ({error.errno or 0})")
            return None
    line = reply.split(b"\n")[0].decode("latin-1").rstrip("\r")
    log.debug(f" <- {printable(line)}")
    fields = line.split(":", 3)
    if len(fields) != 4 or fields[1].strip().upper() != "USERID":
        log.err("Incorrect data from IDENT server")
        return None
    return fields[3].strip()


def check(fd: int, wanted: str, log) -> bool:
    """True if the ident server names `wanted` as the owner of the connection on fd."""
    sock = socket.socket(fileno=fd)
    try:
        local, remote = sock.getsockname(), sock.getpeername()
    finally:
        sock.detach()
    user = ident_user(local, remote, log)
    if user is not None:
        log.info(f"IDENT resolved remote user to {printable(user)}")
    if user == wanted:
        return True
    host = remote[0].removeprefix("::ffff:")
    log.warning(f"Connection from {host}:{remote[1]} REFUSED by IDENT")
    return False

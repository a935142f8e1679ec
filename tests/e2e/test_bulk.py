"""1 GiB through one connection, byte-identical, through the real chain.

tcpserver + makesock + `stunnel -F 3` + a backend that hashes what it reads and
sends 16 MiB back; the client hashes what it sent and what came back. The speed
is printed (run with -s to see it). STUNNEL3_BULK_MIB changes the size.
"""

import hashlib
import os
import socket
import sys
import time

import pytest
from helpers import (  # noqa: F401  (no_leftovers is a fixture)
    TIMEOUT,
    half_close,
    no_leftovers,
    read_to_eof,
    tcpserver,
    tls_client,
)

pytestmark = pytest.mark.usefixtures("no_leftovers")

MIB = 1 << 20
BACK_MIB = 16

# The backend: read to EOF hashing, then answer the digest and BACK_MIB of data.
BACKEND = f"""
import hashlib, os, sys
digest = hashlib.sha256()
total = 0
while chunk := os.read(0, 1 << 20):
    digest.update(chunk)
    total += len(chunk)
block = bytes(range(256)) * 4096
out = (digest.hexdigest() + " " + str(total) + "\\n").encode() + block * {BACK_MIB}
view = memoryview(out)
while view:
    view = view[os.write(1, view):]
"""


def blocks(count: int):
    """`count` distinct MiB blocks (a counter in each), cheap to make."""
    base = os.urandom(MIB)
    for n in range(count):
        yield n.to_bytes(8, "big") + base[8:]


def test_one_gib_through_one_connection(tmp_path, stunnel_bin, makesock_bin, pki):
    count = int(os.environ.get("STUNNEL3_BULK_MIB", "1024"))
    program = [
        makesock_bin,
        stunnel_bin,
        "-f",
        "-p",
        str(pki["server"]),
        "-F",
        "3",
        "-makesock_connect_to",
        sys.executable,
        "-c",
        BACKEND,
    ]
    with tcpserver(tmp_path, program) as server:
        sent = hashlib.sha256()
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT * 6) as raw:
            with tls_client().wrap_socket(raw) as conn:
                started = time.monotonic()
                for block in blocks(count):
                    sent.update(block)
                    conn.sendall(block)
                half_close(conn)
                reply = read_to_eof(conn)
                elapsed = time.monotonic() - started
        log = server.wait_log("Connection closed")
    line, back = reply.split(b"\n", 1)
    assert line.decode() == f"{sent.hexdigest()} {count * MIB}"
    assert back == bytes(range(256)) * 4096 * BACK_MIB
    rate = count * MIB / elapsed / 1e6
    print(f"\nbulk: {count} MiB in {elapsed:.1f} s = {rate:.0f} MB/s through one connection")
    assert f"{count * MIB} bytes sent to socket" in log

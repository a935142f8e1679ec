"""Issue #18 side by side with the real 3.22: what the log makes of a peer's bytes
(the same), an encrypted key (a deliberate difference: 3.22 read its passphrase from
descriptor 0), and -s/-g without -i in inetd mode (the same, but for our warning)."""

import socket
import subprocess
import threading
from pathlib import Path

import pytest

from oracle.compare import DIFFERENCES, differences

# A greeting with UTF-8, control bytes, a DEL, a tab and a Latin-1 byte; LF alone ends
# it (3.22's reader kept a CR, and the dot it made of it, where ours strips the line end).
GREETING = "220 empfänger \x01\x7f\tok é ".encode() + b"\xe9\xff\n"


class Greeter(threading.Thread):
    """One greeting, then EOF, to each of `count` connections (the smtp client of -c)."""

    def __init__(self, count: int):
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        self.port = self.listener.getsockname()[1]
        self.count = count
        self.start()

    def run(self):
        with self.listener:
            for _ in range(self.count):
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    return
                with conn:
                    conn.sendall(GREETING)


def test_the_dialogues_bytes_are_logged_as_322_logged_them(pair):
    greeter = Greeter(2)
    argv = ["-f", "-D", "7", "-c", "-n", "smtp", "-r", f"127.0.0.1:{greeter.port}"]
    received = {}
    for which in ("oracle", "ours"):
        outcome = pair.run(which, argv)
        received[which] = [line.text for line in outcome.log if line.text.startswith(" <- ")]
    greeter.join(20)
    assert received["oracle"][:1] == [" <- 220 empf..nger ...ok .. .."]
    assert received["ours"][:1] == received["oracle"][:1]


@pytest.fixture(scope="module")
def encrypted_pem(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("encrypted")
    key, cert = base / "key.pem", base / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", key, "-out", cert,
         "-days", "1", "-subj", "/CN=localhost", "-passout", "pass:secret"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    pem = base / "encrypted.pem"
    pem.write_bytes(key.read_bytes() + cert.read_bytes())
    pem.chmod(0o600)
    return pem


def test_an_encrypted_key_is_never_unlocked_from_descriptor_0(pair, closed_port, encrypted_pem):
    """3.22 (OpenSSL's prompt, no terminal) reads the passphrase from fd 0, which in inetd
    mode is the client's connection, and goes on; ours refuses at start-up."""
    argv = ["-f", "-D", "7", "-p", str(encrypted_pem), "-r", f"127.0.0.1:{closed_port}"]
    oracle, ours = pair.both(argv, stdin=b"secret\n")
    assert "encrypted key" in DIFFERENCES
    assert differences(oracle, ours)
    assert oracle.status == 0 and oracle.first_error() == "remote connect: Connection refused (111)"
    assert any("pass phrase" in said for said in oracle.stderr)  # it asked, and read fd 0
    assert ours.status == 1
    assert ours.first_error() == (
        f"{encrypted_pem}: the private key is encrypted and no passphrase is asked: "
        f"decrypt it (openssl pkey -in {encrypted_pem} -out key.pem) and put key.pem in its "
        "place"
    )
    assert not any("pass phrase" in said for said in ours.stderr)


def test_ignored_ids_are_322s_but_for_our_warning(pair, closed_port):
    argv = ["-f", "-D", "7", "-s", "nobody", "-g", "nogroup", "-r", f"127.0.0.1:{closed_port}"]
    oracle, ours = pair.both(argv)
    assert differences(oracle, ours) == []  # with the named rule, `ignored ids`
    warnings = [line.text for line in ours.log if line.level == 4]
    assert warnings == [
        "-s and -g are ignored in inetd mode without -i (as in 3.22): the TLS code runs as "
        "uid 0; add -i to switch before the first byte is read"
    ]
    assert not [line for line in oracle.log if line.level == 4]

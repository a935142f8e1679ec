"""Fixtures of the differential tests: the oracle, the sandbox, the working directory.

The working directory both programs start in holds, fresh for every run:
stunnel.pem (an RSA key and its certificate chain, 0600: 3.22 reads RSA keys
only), root-only.pem (the same, 0600), world.pem (the same, 0644), cert.pem
(the certificate alone), key.pem (the key alone), mismatch.pem (a key and
another key's certificate), ec.pem (an EC key), garbage.pem, ca.pem, certs/
(a directory), seed (64 bytes) and empty (0 bytes).
"""

import socket
from pathlib import Path

import pytest
from sandbox import Sandbox

from oracle.compare import Pair, Workdir, oracle_binary


@pytest.fixture(scope="session")
def oracle() -> Path:
    return oracle_binary()


@pytest.fixture(scope="session")
def box(tmp_path_factory):
    sandbox = Sandbox(tmp_path_factory.mktemp("sandbox"))
    yield sandbox
    sandbox.close()


def _pems(base: Path) -> None:
    import trustme

    rsa = trustme.KeyType.RSA
    ca = trustme.CA(key_type=rsa)
    server = ca.issue_cert("localhost", "127.0.0.1", key_type=rsa)
    other = ca.issue_cert("other.example", key_type=rsa)
    ec = ca.issue_cert("localhost", key_type=trustme.KeyType.ECDSA)
    key = server.private_key_pem.bytes()
    chain = b"".join(blob.bytes() for blob in server.cert_chain_pems)
    files = {
        "stunnel.pem": key + chain,
        "root-only.pem": key + chain,
        "world.pem": key + chain,
        "cert.pem": chain,
        "key.pem": key,
        "mismatch.pem": other.private_key_pem.bytes() + chain,
        "ec.pem": ec.private_key_and_cert_chain_pem.bytes(),
        "garbage.pem": b"this is not a pem\n",
        "ca.pem": ca.cert_pem.bytes(),
        "seed": bytes(range(64)),
        "empty": b"",
    }
    for name, data in files.items():
        (base / name).write_bytes(data)
        (base / name).chmod(0o644)
    (base / "certs").mkdir()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Workdir:
    template = tmp_path_factory.mktemp("workdir")
    _pems(template)
    return Workdir(template)


@pytest.fixture(scope="session")
def pair(oracle, stunnel_bin, box, workdir, tmp_path_factory) -> Pair:
    return Pair(oracle, stunnel_bin, box, workdir, tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def closed_port():
    """A port on 127.0.0.1 that refuses every connection: bound, never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]

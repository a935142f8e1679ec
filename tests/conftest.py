"""Shared fixtures: our installed programs, certificates made per run, free ports.

Tests run the programs as installed (`pip install .`), by their installed path:
Debian's stunnel4 also puts a `stunnel` on PATH.
"""

import os
import socket
import sysconfig
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")

SCRIPTS = Path(sysconfig.get_path("scripts"))


def installed(program: str) -> str:
    """The installed path of one of our programs; fails loudly if it is not ours."""
    path = SCRIPTS / program
    if not path.is_file() or b"stunnel3" not in path.read_bytes()[:400]:
        raise RuntimeError(f"{path} is not stunnel3's {program}: run `pip install .` first")
    return str(path)


@pytest.fixture(scope="session")
def stunnel_bin() -> str:
    return installed("stunnel")


@pytest.fixture(scope="session")
def makesock_bin() -> str:
    return installed("makesock")


@pytest.fixture(scope="session")
def fixcrio_bin() -> str:
    return installed("fixcrio")


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A CA, a server pem (key + chain) for localhost, and a client pem, made with trustme."""
    import trustme

    base = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    client = ca.issue_cert("client.example")
    paths = {
        "ca": base / "ca.pem",
        "server": base / "server.pem",
        "client": base / "client.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(paths["server"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    for path in paths.values():
        path.chmod(0o644)
    return paths


def free_port(family: int = socket.AF_INET) -> int:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class RecordingLog:
    """A stunnel Log (log.py's interface) that keeps (level, text) for each line."""

    level = 7

    def __init__(self):
        self.lines: list[tuple[int, str]] = []

    def log(self, level, text):
        self.lines.append((level, text))

    def err(self, text):
        self.log(3, text)

    def warning(self, text):
        self.log(4, text)

    def notice(self, text):
        self.log(5, text)

    def info(self, text):
        self.log(6, text)

    def debug(self, text):
        self.log(7, text)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

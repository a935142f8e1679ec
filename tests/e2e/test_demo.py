"""The README's first command: `./demo` delivers a message over STARTTLS, then cleans up."""

import pwd
import subprocess
from pathlib import Path

import pytest
from helpers import accounts_lock  # noqa: F401, F811  (a fixture)

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("accounts_lock")


def test_demo_delivers_over_starttls_and_leaves_nothing_behind():
    users = {u.pw_name for u in pwd.getpwall()}
    done = subprocess.run([str(ROOT / "demo")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "The message was delivered over STARTTLS through the unchanged run script." in out
    assert "Negotiated ciphers: " in out  # the proxy's own log line, shown to the user
    assert "The connection was handed over to the warm helper's worker, pid " in out
    assert "=== try it by hand" in out
    assert "Traceback" not in out + done.stderr
    base = out.split("removed ", 1)[1].split("\n", 1)[0]  # `removed /tmp/stunnel3-demo.XXXX`
    assert base.startswith("/tmp/stunnel3-demo.") and not Path(base).exists()
    assert {u.pw_name for u in pwd.getpwall()} == users  # the accounts it made are gone


def test_demo_usage():
    done = subprocess.run([str(ROOT / "demo"), "--bogus"], capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert done.returncode == 100
    assert done.stderr == "demo: usage: demo [--keep]\n"

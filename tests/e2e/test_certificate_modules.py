"""The certificate modules a session never uses are not imported (on_demand.py), and one
that does use them has them inside its jail, where nothing can be imported any more.

stunnel.defer_unused leaves cryptography.x509 and serialization to first use unless the
options can reach them (-v, -l, -c, -d), and typing_extensions always (pyOpenSSL takes only
its `deprecated`). A mistake there shows only in a jailed session
that inspects a certificate: -v 3 compares the client's with the -A file (serialization)
and logs its subject (x509), after the chroot.
"""

import os
import shutil
import socket
import ssl
import subprocess
import sys

import pytest
from helpers import TIMEOUT, environment, no_leftovers  # noqa: F401  (a fixture)
from test_jail import (
    account,  # noqa: F401  (a fixture, asked for by name)
    args_for,
    chain,
    make_jail,
    wait_for,
    wait_gone,
)
from test_warm import helper  # noqa: F401  (a fixture, asked for by name)

pytestmark = pytest.mark.usefixtures("no_leftovers")

LOADED = """
import sys
from stunnel3.support import on_demand
from stunnel3 import stunnel
from stunnel3.options import parse
stunnel.defer_unused(parse(sys.argv[1:]))
from stunnel3.engine import service  # what the session imports
print(*(on_demand.deferred(name) for name in on_demand.CERTIFICATE_MODULES))
print(on_demand.deferred("typing_extensions"), "inspect" in sys.modules)
"""


@pytest.mark.parametrize(
    "args, deferred",
    [
        (["-f", "-F", "3", "-n", "smtp-"], True),
        (["-f", "-F", "3", "-v", "1"], False),
        (["-f", "-l", "/bin/cat"], False),
        (["-f", "-c", "-r", "25"], False),
        (["-f", "-d", "2525", "-l", "/bin/cat"], False),
    ],
)
def test_only_a_session_that_may_inspect_a_certificate_loads_them(args, deferred):
    done = subprocess.run([sys.executable, "-c", LOADED, *args], capture_output=True,
                          text=True, timeout=TIMEOUT, env=environment())  # fmt: skip
    lines = done.stdout.splitlines()
    assert lines[0].split() == [str(deferred)] * 2, done.stderr
    # pyOpenSSL's typing_extensions.deprecated is ours: the real module never loads on the
    # direct path, whatever the options; nor inspect, which it imports, unless the
    # certificate modules load (serialization imports dataclasses, and so inspect)
    assert lines[1].split() == ["True", str(not deferred)], done.stderr


@pytest.mark.parametrize("warm", [False, True])
def test_a_jailed_session_verifies_its_client(
    request, tmp_path, pki, stunnel_bin, makesock_bin, monkeypatch, warm
):
    """Directly, and through the warm helper, which leaves the certificate modules unloaded:
    its worker loads them before the jail (service._load_modules)."""
    user, _uid, gid = request.getfixturevalue("account")
    warm_helper = request.getfixturevalue("helper") if warm else None
    monkeypatch.setenv("STUNNEL3_WARM", "1" if warm else "0")
    jail = make_jail(tmp_path, pki, gid)
    trusted = jail / "trusted.pem"  # -v 3: the client's own certificate must be in -A
    trusted.write_bytes(
        pki["ca"].read_bytes()
        + pki["client"].read_bytes().split(b"-----END PRIVATE KEY-----\n")[-1]
    )
    os.chown(trusted, 0, gid)
    trusted.chmod(0o640)
    args = args_for(jail, user, user, "-v", "3", "-A", "trusted.pem", "-D", "7")
    with chain(tmp_path, stunnel_bin, makesock_bin, args) as (port, _server, errors):
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        context.load_cert_chain(str(pki["client"]))
        with socket.create_connection(("127.0.0.1", port), TIMEOUT) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"verified\n")
                assert tls.recv(100) == b"verified\n"
                assert warm_helper is None or len(warm_helper.workers()) == 1
        log = wait_for(errors, "Connection closed")
        assert wait_gone(user) == []
    assert "VERIFY OK: depth=0, /O=trustme" in log, log
    assert "Traceback" not in log and "ModuleNotFoundError" not in log, log
    shutil.rmtree(jail)

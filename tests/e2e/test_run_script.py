"""compat/smtp-tls-run itself, unchanged but for its variables, with every client.

The service directory is made by hand the way smtp-tls.README says (steps 5,
6a, 6c, 6e), so that this proves what existing users have keeps working. The
chain is the script's own: softlimit -m 5000000, tcpserver as root with a
tcprules file, our makesock and stunnel, setuidgid qmaild, Debian's fixcrio.
The backend is Debian's exim4 in `-bs -N` mode (SMTP on stdin/stdout, delivers
nothing) behind ucspi-tcp's recordio, so the test reads exactly what the
backend was given; exim, not ours, raises its own soft limits first.
"""

import os
import pwd
import re
import shutil
import signal
import smtplib
import ssl
import subprocess
import sysconfig
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import free_port
from helpers import accounts_lock  # noqa: F401, F811  (a fixture)

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30
BACKEND = """#!/bin/sh
echo "backend: user=$(id -un) as=$(ulimit -S -v) remote=$TCPREMOTEIP relay=${RELAYCLIENT-unset}\
 rules=${STUNNEL3_RULES-unset}" >&2
ulimit -S -v "$(ulimit -H -v)"; ulimit -S -d "$(ulimit -H -d)"
exec recordio /usr/sbin/exim4 -bs -N
"""
RECEIVED_TLS = "Received: (stunnel3 STARTTLS proxy) with ESMTPS (TLSv1."
BODY = [
    "First line of the body.",
    ".A line that starts with a dot (the client doubles it, the backend sees two).",
    "A long line: " + "0123456789" * 90,
    "Last line.",
]


pytestmark = pytest.mark.usefixtures("accounts_lock")


def readme_jail(service: Path, pem: Path) -> None:
    """README steps 6, 6a, 6c and 6e, as an administrator types them."""
    script = f"""set -e
mkdir ssl
cp {pem} ssl/stunnel.pem
dd if=/dev/urandom of=ssl/seed count=1 2>/dev/null
chgrp -R stunnel ssl
chmod -R u=rwX,g=rX,o= ssl
"""
    subprocess.run(["sh", "-c", script], cwd=service, check=True, timeout=TIMEOUT)


def make_accounts() -> list[str]:
    """README step 5 (stunnel, primary group stunnel) and qmail's qmaild, when missing."""
    made = []
    for name in ("stunnel", "qmaild"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--system", "-U", "-M", "-s", "/usr/sbin/nologin", name],
                           check=True, timeout=TIMEOUT)  # fmt: skip
            made.append(name)
    return made


def run_file(variables: dict[str, str]) -> str:
    """compat/smtp-tls-run with the administrator's variables set, nothing else."""
    text = (ROOT / "compat" / "smtp-tls-run").read_text()
    for name, value in variables.items():
        text, count = re.subn(rf"^{name}=.*$", f"{name}={value}", text, flags=re.M)
        assert count == 1, name
    return text


class Chain:
    def __init__(self, base: Path, port: int, server: subprocess.Popen, log: Path, ca: Path):
        self.base, self.port, self.server, self.log, self.ca = base, port, server, log, ca

    def text(self) -> str:
        return self.log.read_bytes().decode(errors="replace")  # keep CRs: recordio shows them

    def session(self, client) -> tuple[object, str]:
        """Run one client; return its result and the log lines of its connection."""
        start = len(self.text())
        result = client(self)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:  # tcpserver -v logs `end` once all is over
            part = self.text()[start:]
            if part.count("tcpserver: end ") >= part.count("tcpserver: ok ") > 0:
                return result, part
            time.sleep(0.05)
        raise AssertionError(f"the connection did not end:\n{self.text()[start:]}")


@pytest.fixture(scope="module")
def chain(pki):
    made = make_accounts()
    base = Path(tempfile.mkdtemp(prefix="stunnel3-run."))
    server = None
    try:
        base.chmod(0o755)  # qmaild runs the backend from here
        service = base / "smtp-tls"
        service.mkdir()
        readme_jail(service, pki["server"])
        backend = base / "backend"
        backend.write_text(BACKEND)
        backend.chmod(0o755)
        rules = base / "tcp.smtp"
        rules.write_text('127.0.0.1:allow,RELAYCLIENT="",STUNNEL3_RULES="read"\n:allow\n')
        subprocess.run(["tcprules", f"{rules}.cdb", f"{rules}.tmp"], input=rules.read_bytes(),
                       check=True, timeout=TIMEOUT)  # fmt: skip
        port = free_port()
        scripts = sysconfig.get_path("scripts")
        variables = {
            "PATH": f"{scripts}:/usr/local/bin:/var/qmail/bin:/usr/bin:/bin",
            "IP": "127.0.0.1",
            "PORT": str(port),
            "RULES": f"{rules}.cdb",
            "SMTPD": str(backend),
        }
        (service / "run").write_text(run_file(variables))
        (service / "run").chmod(0o755)
        log = base / "log"
        with open(log, "wb") as out:
            server = subprocess.Popen(["./run"], cwd=service, stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + TIMEOUT
        while "tcpserver: status: 0/" not in log.read_text():
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "tcpserver did not start"
            time.sleep(0.05)
        yield Chain(base, port, server, log, pki["ca"])
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # tcpserver leads its own group
            server.wait(timeout=TIMEOUT)
        shutil.rmtree(base, ignore_errors=True)
        for name in made:
            subprocess.run(["userdel", name], capture_output=True, timeout=TIMEOUT)


def message(token: str) -> str:
    head = f"From: e2e@example.org\nTo: postmaster@localhost\nSubject: stunnel3 e2e {token}\n"
    return head + "\n" + "\n".join(BODY) + "\n"


# -- the clients: each sends message(token) to postmaster@localhost ---------------


def swaks(tls: bool, token: str):
    def client(chain: Chain):
        command = ["swaks", "--server", "127.0.0.1", "--port", str(chain.port)]
        command += ["--from", "e2e@example.org", "--to", "postmaster@localhost", "--data", "-"]
        if tls:
            command += ["--tls", "--tls-verify", "--tls-ca-path", str(chain.ca)]
        return subprocess.run(command, input=message(token), capture_output=True, text=True,
                              timeout=TIMEOUT)  # fmt: skip

    return client


def curl(tls: bool, token: str):
    def client(chain: Chain):
        command = ["curl", "-sS", "--max-time", str(TIMEOUT), f"smtp://127.0.0.1:{chain.port}"]
        command += ["--mail-from", "e2e@example.org", "--mail-rcpt", "postmaster@localhost"]
        command += ["--upload-file", "-"]
        if tls:
            command += ["--ssl-reqd", "--cacert", str(chain.ca)]
        # curl doubles a leading dot only after CRLF: give it the wire's line ends
        text = message(token).replace("\n", "\r\n")
        return subprocess.run(command, input=text.encode(), capture_output=True, timeout=TIMEOUT)

    return client


def msmtp(tls: bool, token: str):
    def client(chain: Chain):
        command = ["msmtp", "--host=127.0.0.1", f"--port={chain.port}", "--auth=off"]
        command += ["--from=e2e@example.org", f"--timeout={TIMEOUT}"]
        if tls:
            command += ["--tls=on", "--tls-starttls=on", f"--tls-trust-file={chain.ca}"]
        else:
            command += ["--tls=off"]
        return subprocess.run([*command, "postmaster@localhost"], input=message(token),
                              capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip

    return client


def python_smtplib(tls: bool, token: str):
    def client(chain: Chain):
        with smtplib.SMTP("127.0.0.1", chain.port, timeout=TIMEOUT) as smtp:
            smtp.ehlo("e2e.example")
            assert smtp.has_extn("starttls")
            if tls:
                smtp.starttls(context=ssl.create_default_context(cafile=str(chain.ca)))
                smtp.ehlo("e2e.example")
                assert not smtp.has_extn("starttls")  # not offered twice
            refused = smtp.sendmail("e2e@example.org", ["postmaster@localhost"], message(token))
        return subprocess.CompletedProcess([], 0 if refused == {} else 1, "", "")

    return client


def openssl_s_client(tls: bool, token: str):
    """s_client does EHLO + STARTTLS itself; then we talk, one reply at a time."""
    assert tls

    def client(chain: Chain):
        command = ["openssl", "s_client", "-starttls", "smtp", "-crlf", "-quiet"]
        command += ["-connect", f"127.0.0.1:{chain.port}", "-CAfile", str(chain.ca)]
        command += ["-verify_return_error", "-verify_ip", "127.0.0.1"]
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        killer = threading.Timer(TIMEOUT, proc.kill)
        killer.start()
        replies = []

        def say(line: str) -> None:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            while not re.match(r"\d{3} ", reply := proc.stdout.readline()):
                assert reply, "s_client: the connection ended"
            replies.append(reply)

        try:
            for line in ("EHLO e2e.example", "MAIL FROM:<e2e@example.org>",
                         "RCPT TO:<postmaster@localhost>", "DATA"):  # fmt: skip
                say(line)
            lines = message(token).split("\n")[:-1]
            say("\n".join("." + line if line.startswith(".") else line for line in lines) + "\n.")
            say("QUIT")
            proc.wait(timeout=TIMEOUT)
        finally:
            killer.cancel()
            proc.kill()
            proc.wait()
        codes = [reply[:3] for reply in replies]
        ok = codes == ["250", "250", "250", "354", "250", "221"]
        return subprocess.CompletedProcess(command, 0 if ok else 1, "".join(replies), "")

    return client


CLIENTS = [
    (swaks, True), (swaks, False), (curl, True), (curl, False), (msmtp, True), (msmtp, False),
    (python_smtplib, True), (python_smtplib, False), (openssl_s_client, True),
]  # fmt: skip


def backend_input(log: str) -> list[str]:
    """What went into exim, as lines without CRLF, rebuilt from recordio's `pid < chunk`.

    recordio ends a chunk that ended a line with a space, one cut short by a
    read with `+`.
    """
    chunks = re.findall(r"^\d+ < (.*)$", log, flags=re.M)
    stream = "".join(c[:-1] + ("\n" if c.endswith(" ") else "") for c in chunks if c != "[EOF]")
    return [line.removesuffix("\r") for line in stream.split("\n")]


@pytest.mark.parametrize(
    "make_client, tls", CLIENTS, ids=[f"{c.__name__}-{'tls' if t else 'plain'}" for c, t in CLIENTS]
)
def test_client_delivers_through_the_unchanged_run_script(chain, make_client, tls):
    token = uuid.uuid4().hex
    done, log = chain.session(make_client(tls, token))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{log}"
    assert "Traceback" not in log
    given = backend_input(log)
    subject = [i for i, line in enumerate(given) if token in line]
    assert len(subject) == 1, log  # arrived once
    body = given[subject[0] + 1 :]
    stuffed = ["." + line if line.startswith(".") else line for line in BODY]
    assert body[1 : 1 + len(BODY)] == stuffed, log  # intact, in order
    end = body[1 + len(BODY) :]
    # swaks and curl end a message that ends with a bare LF with CRLF before the dot
    assert end[:1] == ["."] or end[:2] == ["", "."], log
    assert "STARTTLS" not in [line.upper() for line in given]  # the proxy's business only
    assert log.count("Negotiated ciphers: ") == (1 if tls else 0), log  # stunnel's own word
    # how qmail-smtpd learns about TLS (README bug 4): the proxy's trace line, first
    trace = [i for i, line in enumerate(given) if line.startswith(RECEIVED_TLS)]
    data = [line.upper() for line in given].index("DATA")  # smtplib says `data`
    assert trace == ([data + 1] if tls else []), log
    assert len(re.findall(r"^\s*<= e2e@example\.org U=qmaild ", log, flags=re.M)) == 1, (
        log
    )  # exim took it


def test_the_backend_gets_the_qmail_environment_and_the_5_mb_limit(chain):
    done, log = chain.session(python_smtplib(True, uuid.uuid4().hex))
    assert done.returncode == 0
    # tcpserver's variables and the rules file's reach qmail-smtpd's place, as qmaild,
    # under softlimit's 5,000,000 bytes (4882 KiB), not the floor our programs raised
    assert "backend: user=qmaild as=4882 remote=127.0.0.1 relay= rules=read" in log, log


def test_the_chain_runs_under_softlimit_as_written(chain):
    limits = Path(f"/proc/{chain.server.pid}/limits").read_text()  # tcpserver, exec'd by softlimit
    assert re.search(r"^Max address space\s+5000000\s", limits, flags=re.M), limits
    assert re.search(r"^Max data size\s+5000000\s", limits, flags=re.M), limits
    assert Path(f"/proc/{chain.server.pid}/exe").resolve().name == "tcpserver"


def test_the_run_file_differs_from_compat_only_in_its_variables():
    compat = (ROOT / "compat" / "smtp-tls-run").read_text().splitlines()
    ours = run_file({"PATH": "/x", "IP": "127.0.0.1", "PORT": "2525", "RULES": "/r",
                     "SMTPD": "/b"}).splitlines()  # fmt: skip
    changed = {a.split("=")[0] for a, b in zip(compat, ours, strict=True) if a != b}
    assert changed == {"PATH", "IP", "PORT", "RULES", "SMTPD"}

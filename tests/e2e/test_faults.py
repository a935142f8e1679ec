"""Faults and misconfigurations through the users' chain, for real (issue #18).

    tcpserver -v ... makesock stunnel -D 7 -/ ssl -s ACCOUNT -g ACCOUNT -i -R seed
        -p stunnel.pem -n smtp- -f -F 3 -makesock_connect_to
        setuidgid Debian-exim fixcrio recordio exim4 -bs -N

The README's chain, jail included (an account made for this module), with Debian's
exim4 as the backend behind ucspi-tcp's recordio (so the test reads what the
backend received and answered), or a backend that hangs (greets, then ignores its
input's end and SIGTERM) behind Debian's fixcrio (a real pump process, where ours
is left out by makesock). Clients are raw sockets and Python's ssl, so that each
can stop at any stage: before EHLO, after it, in the TLS handshake, after it, in
the middle of the data, after the final dot; with or without close_notify, or with
a reset. Each numbered item of the issue has its case here.

After every case: nothing delivered twice or in part (exim's `250 OK id=` replies
in recordio's record, and what it received), no process of the chain left, the
backend included (every process that carries the test's marker, tcpserver aside),
and tcpserver's count back to 0 (its -v status line). Loopback only; bounds are
made short where a case waits for one; processes are ended by pid.
"""

import contextlib
import grp
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest
from helpers import children, environment, free_port, strays

TIMEOUT = 20
EXIM = ["setuidgid", "Debian-exim", "fixcrio", "recordio", "exim4", "-bs", "-N"]
# A backend that greets, then never reads, never answers and ignores SIGTERM.
HANG = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "sys.stdout.write('220 hung.example ESMTP\\r\\n'); sys.stdout.flush()\n"
    "while True: time.sleep(1)\n"
)
HUNG = ["setuidgid", "nobody", "/usr/bin/fixcrio", "python3", "-c", HANG]
# mailfront's smtpfront: answers any number of NOOPs (exim drops a client after 10)
MAILFRONT = ["setuidgid", "nobody", "fixcrio", "/usr/sbin/mailfront", "smtp", "echo"]
SERVERS: set[int] = set()  # the tcpservers of the chains running: not left over
MESSAGE = b"From: a@example.org\r\nSubject: fault\r\n\r\nline one\r\n..dotted\r\nlast\r\n"


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, timeout=TIMEOUT, capture_output=True)


@pytest.fixture(scope="module")
def account():
    """stunnel's account and group, made for this module (README step 5), removed after."""
    name = f"st3f{secrets.token_hex(4)}"
    run("groupadd", name)
    try:
        run("useradd", "-M", "-N", "-g", name, "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
            name)  # fmt: skip
    except BaseException:
        run("groupdel", name)
        raise
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], timeout=TIMEOUT, capture_output=True)
        subprocess.run(["groupdel", name], timeout=TIMEOUT, capture_output=True)


@pytest.fixture(scope="module")
def service(tmp_path_factory, pki, account) -> Path:
    """A service directory with README step 6's ssl/ (6e's modes) and an encrypted pem."""
    base = tmp_path_factory.mktemp("faults")
    base.chmod(0o755)
    gid = grp.getgrnam(account).gr_gid
    jail = base / "ssl"
    jail.mkdir()
    shutil.copyfile(pki["server"], jail / "stunnel.pem")
    (jail / "seed").write_bytes(os.urandom(256))
    key = subprocess.run(
        ["openssl", "pkey", "-in", str(pki["server"]), "-aes128", "-passout", "pass:secret"],
        check=True, capture_output=True, timeout=TIMEOUT,
    ).stdout  # fmt: skip
    chain = pki["server"].read_bytes()
    chain = chain[chain.index(b"-----BEGIN CERTIFICATE-----") :]
    (jail / "encrypted.pem").write_bytes(key + chain)
    for path in (jail, *jail.iterdir()):
        os.chown(path, 0, gid)
        path.chmod(0o750 if path.is_dir() else 0o640)
    return base


class Chain:
    """tcpserver -v on a loopback port, the README's stunnel line, a backend."""

    def __init__(self, service: Path, account: str, backend: list[str], env: dict,
                 stunnel: list[str] | None = None, pass_fds=()):  # fmt: skip
        self.port = free_port()
        self.log_path = service / f"chain-{self.port}.log"
        stunnel = stunnel or ["-/", "ssl", "-s", account, "-g", account, "-i", "-R", "seed",
                              "-p", "stunnel.pem", "-n", "smtp-"]  # fmt: skip
        argv = ["tcpserver", "-v", "-R", "-H", "-l", "localhost", "-c", "8", "127.0.0.1",
                str(self.port), "makesock", "stunnel", "-D", "7", *stunnel, "-f", "-F", "3",
                "-makesock_connect_to", *backend]  # fmt: skip
        with open(self.log_path, "wb") as out:
            self.server = subprocess.Popen(
                argv, cwd=service, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env=environment(PATH=f"{_scripts()}:/usr/sbin:/usr/bin:/sbin:/bin", **env),
                start_new_session=True, pass_fds=pass_fds,
            )  # fmt: skip
        SERVERS.add(self.server.pid)
        deadline = time.monotonic() + TIMEOUT
        while "tcpserver: status: 0/" not in self.text():
            assert self.server.poll() is None, self.text()
            assert time.monotonic() < deadline, "tcpserver did not start"
            time.sleep(0.02)

    def text(self) -> str:
        return self.log_path.read_bytes().decode("latin-1")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.server.pid, signal.SIGTERM)
        self.server.wait(TIMEOUT)
        SERVERS.discard(self.server.pid)

    @contextlib.contextmanager
    def session(self):
        """A case: yields a Case; after it, waits for the connection's end and checks
        that nothing of the chain is left and tcpserver's count is 0 again."""
        case = Case(self, len(self.text()))
        yield case
        case.finish()


def _scripts() -> str:
    import sysconfig

    return sysconfig.get_path("scripts")


class Case:
    def __init__(self, chain: Chain, start: int):
        self.chain, self.start = chain, start
        self.said = ""

    def new(self) -> str:
        return self.chain.text()[self.start :]

    def pid(self) -> int:
        """makesock's process (stunnel runs in it): the one tcpserver started."""
        deadline = time.monotonic() + TIMEOUT
        while not (found := re.search(r"tcpserver: pid (\d+) ", self.new())):
            assert time.monotonic() < deadline, self.new()
            time.sleep(0.02)
        return int(found.group(1))

    def finish(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            said = self.new()
            ends, oks = said.count("tcpserver: end "), said.count("tcpserver: ok ")
            if oks and ends >= oks:
                break
            assert time.monotonic() < deadline, f"the connection did not end:\n{said}"
            time.sleep(0.05)
        time.sleep(0.1)  # recordio's last lines, tcpserver's status line
        self.said = self.new()
        statuses = re.findall(r"tcpserver: status: (\d+)/", self.said)
        assert statuses and statuses[-1] == "0", self.said
        left = []
        while time.monotonic() < deadline:
            left = [line for line in strays() if int(line.split()[0]) not in SERVERS]
            if not left:
                break
            time.sleep(0.05)
        for line in left:  # the next case must not inherit them; this one fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        assert not left, f"processes of the chain left: {left}"
        assert children(self.chain.server.pid) == []

    def records(self) -> tuple[list[bytes], list[bytes]]:
        """What the backend received and sent, line by line (recordio)."""
        got, sent = [], []
        for line in self.said.encode("latin-1").split(b"\n"):
            found = re.match(rb"^\d+ ([<>]) (.*)$", line)
            if found:
                (got if found.group(1) == b"<" else sent).append(found.group(2).rstrip(b" \r+"))
        return got, sent

    def deliveries(self) -> int:
        return sum(line.startswith(b"250 OK id=") for line in self.records()[1])

    def log(self) -> list[str]:
        return [line.split("]: ", 1)[1] for line in self.said.splitlines() if " LOG" in line[:25]]


class Client:
    """An SMTP client that can stop anywhere: plaintext, then TLS after STARTTLS."""

    def __init__(self, port: int, ca: Path, implicit: bool = False):
        self.raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.conn: socket.socket = self.raw
        self.ca = ca
        self.buffer = b""
        if implicit:
            self._wrap()

    def _wrap(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca))
        self.conn = context.wrap_socket(self.raw, server_hostname="localhost")

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def reply(self) -> bytes:
        """One whole reply (all its lines); b"" if the server ended first."""
        while True:
            lines = self.buffer.split(b"\n")
            for n, line in enumerate(lines[:-1]):
                if line[3:4] != b"-":
                    reply = b"\n".join(lines[: n + 1]) + b"\n"
                    self.buffer = self.buffer[len(reply) :]
                    return reply
            try:
                chunk = self.conn.recv(65536)
            except (ConnectionError, ssl.SSLError):
                chunk = b""
            if not chunk:
                return b""
            self.buffer += chunk

    def command(self, line: bytes) -> bytes:
        """The reply to one command line; b"" if the server ended first."""
        try:
            self.send(line + b"\r\n")
        except (ConnectionError, ssl.SSLError):
            return b""
        return self.reply()

    def starttls(self) -> None:
        assert self.command(b"STARTTLS").startswith(b"220 ")
        self._wrap()

    def until_end(self) -> bytes:
        """Everything until the server's end (EOF, close_notify or a reset)."""
        got = b""
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            while chunk := self.conn.recv(65536):
                got += chunk
        return got

    def end(self, how: str) -> None:
        """fin: TCP EOF (no close_notify); rst: a reset; close_notify: TLS's own close."""
        conn = self.conn  # after wrap_socket, the TLS socket holds the descriptor
        if how == "close_notify":
            assert isinstance(conn, ssl.SSLSocket)
            with contextlib.suppress(OSError, ssl.SSLError):
                conn = conn.unwrap()
        elif how == "rst":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif how == "fin":
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(conn.fileno())) as twin:
                twin.shutdown(socket.SHUT_WR)  # ssl's own shutdown() would not leave TLS out
        conn.close()


@pytest.fixture(scope="module")
def exim(service, account):
    chain = Chain(service, account, EXIM, {"STUNNEL3_EXCHANGE_TIMEOUT": "4",
                                           "STUNNEL3_BACKEND_EXIT_TIMEOUT": "1"})  # fmt: skip
    yield chain
    chain.stop()


@pytest.fixture(scope="module")
def hung(service, account):
    chain = Chain(service, account, HUNG, {"STUNNEL3_EXCHANGE_TIMEOUT": "2",
                                           "STUNNEL3_BACKEND_EXIT_TIMEOUT": "1"})  # fmt: skip
    yield chain
    chain.stop()


def greeted(chain: Chain, pki, tls: bool = False) -> Client:
    client = Client(chain.port, pki["ca"])
    assert client.reply().startswith(b"220 ")
    assert client.command(b"EHLO client.example").startswith(b"250")
    if tls:
        client.starttls()
        assert client.command(b"EHLO client.example").startswith(b"250")
    return client


def transaction(client: Client) -> None:
    assert client.command(b"MAIL FROM:<a@example.org>").startswith(b"250")
    assert client.command(b"RCPT TO:<root@localhost>").startswith(b"250")
    assert client.command(b"DATA").startswith(b"354")


def assert_whole(case: Case, delivered: int) -> None:
    """`delivered` messages, each received whole by the backend."""
    assert case.deliveries() == delivered, case.said
    got = case.records()[0]
    if delivered:
        assert got.count(b"last") == delivered and b"..dotted" in got


# -- the happy path, as every case below is checked -------------------------------------


def test_a_whole_message_over_starttls_once(exim, pki):
    with exim.session() as case:
        client = greeted(exim, pki, tls=True)
        transaction(client)
        client.send(MESSAGE + b".\r\n")
        assert client.reply().startswith(b"250 OK id=")
        assert client.command(b"QUIT").startswith(b"221")
        client.end("close_notify")
    assert_whole(case, 1)


# -- client death at each stage ---------------------------------------------------------

STAGES = [
    ("greeted", "fin"), ("greeted", "rst"), ("ehlo", "fin"), ("ehlo", "rst"),
    ("handshake", "fin"),
    *[(stage, how) for stage in ("tls", "data", "dot") for how in ("fin", "rst", "close_notify")],
]  # fmt: skip


@pytest.mark.parametrize(("stage", "how"), STAGES, ids=[f"{s}-{h}" for s, h in STAGES])
def test_the_client_dies(exim, pki, stage, how):
    with exim.session() as case:
        client = Client(exim.port, pki["ca"])
        assert client.reply().startswith(b"220 ")
        if stage != "greeted":
            assert client.command(b"EHLO client.example").startswith(b"250")
        if stage == "handshake":
            assert client.command(b"STARTTLS").startswith(b"220")
            client.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
        elif stage in ("tls", "data", "dot"):
            client.starttls()
            assert client.command(b"EHLO client.example").startswith(b"250")
        if stage in ("data", "dot"):
            transaction(client)
            client.send(MESSAGE[: len(MESSAGE) // 2] if stage == "data" else MESSAGE + b".\r\n")
            time.sleep(0.2)
        client.end(how)
    if stage == "dot" and how != "rst":
        assert_whole(case, 1)  # the dot arrived before the end: the message, once
    elif stage == "dot":
        assert case.deliveries() <= 1  # a reset may throw away what the kernel held
        assert_whole(case, case.deliveries())
    else:
        assert_whole(case, 0)


# -- backend death at each stage --------------------------------------------------------


def kill_backend(case: Case) -> None:
    """SIGKILL the exim4 of this connection, by pid."""
    top = case.pid()
    pending, found = [top], []
    while pending:
        for pid in children(pending.pop()):
            pending.append(pid)
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "exim4":
                    found.append(pid)
    assert found, "no exim4 below the connection"
    for pid in found:
        with contextlib.suppress(ProcessLookupError):  # a delivery child that just ended
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("stage", ["greeted", "ehlo", "tls", "data", "dot"])
def test_the_backend_dies(exim, pki, stage):
    with exim.session() as case:
        client = Client(exim.port, pki["ca"])
        assert client.reply().startswith(b"220 ")
        if stage != "greeted":
            assert client.command(b"EHLO client.example").startswith(b"250")
        if stage in ("tls", "data", "dot"):
            client.starttls()
            assert client.command(b"EHLO client.example").startswith(b"250")
        if stage in ("data", "dot"):
            transaction(client)
            client.send(MESSAGE[:20] if stage == "data" else MESSAGE + b".\r\n")
        kill_backend(case)
        began = time.monotonic()
        client.until_end()  # the client learns the end at once, not after a timeout
        assert time.monotonic() - began < 5
        client.end("fin")
    assert case.deliveries() <= (1 if stage == "dot" else 0)
    assert_whole(case, case.deliveries())


# -- hostile and odd input --------------------------------------------------------------


def test_a_1_mb_line_is_refused_and_the_session_goes_on(exim, pki):
    with exim.session() as case:
        client = greeted(exim, pki)
        assert client.command(b"NOOP " + b"x" * 1_000_000).startswith(b"500 5.5.2")
        assert client.command(b"NOOP").startswith(b"250")
        assert client.command(b"QUIT").startswith(b"221")
        client.end("fin")
    got = case.records()[0]
    assert max(len(line) for line in got) < 100  # the backend never saw it
    assert_whole(case, 0)


def test_nul_bytes_in_a_command_and_in_the_data(exim, pki):
    with exim.session() as case:
        client = greeted(exim, pki, tls=True)
        assert client.command(b"NO\x00OP").startswith(b"5")  # exim's own refusal
        transaction(client)
        client.send(MESSAGE.replace(b"line one", b"line\x00one") + b".\r\n")
        assert client.reply().startswith(b"250 OK id=")
        assert client.command(b"QUIT").startswith(b"221")
        client.end("close_notify")
    assert_whole(case, 1)
    assert b"line\x00one" in case.records()[0]


def test_garbage_after_starttls_ends_the_session_and_never_reaches_the_backend(exim, pki):
    with exim.session() as case:
        client = greeted(exim, pki)
        assert client.command(b"STARTTLS").startswith(b"220")
        client.send(b"MAIL FROM:<injected@example.org>\r\nRSET\r\n")
        client.until_end()
        client.end("fin")
    assert not [line for line in case.records()[0] if b"injected" in line]
    assert any(line.startswith("SSL_accept: ") for line in case.log())
    assert_whole(case, 0)


def test_implicit_tls(exim, pki):
    with exim.session() as case:
        client = Client(exim.port, pki["ca"], implicit=True)  # a ClientHello first (port 465)
        assert client.reply().startswith(b"220 ")
        assert client.command(b"EHLO client.example").startswith(b"250")
        transaction(client)
        client.send(MESSAGE + b".\r\n")
        assert client.reply().startswith(b"250 OK id=")
        assert client.command(b"QUIT").startswith(b"221")
        client.end("close_notify")
    assert "P: implicit TLS: the client sent a TLS handshake first" in case.log()
    assert_whole(case, 1)


# -- item 1: an encrypted key -----------------------------------------------------------


def test_1_an_encrypted_key_is_never_unlocked_by_the_client(service, account, pki):
    stunnel = ["-/", "ssl", "-s", account, "-g", account, "-i", "-R", "seed",
               "-p", "encrypted.pem", "-n", "smtp-"]  # fmt: skip
    chain = Chain(service, account, EXIM, {}, stunnel)
    try:
        with chain.session() as case:
            client = Client(chain.port, pki["ca"])
            client.send(b"secret\n")  # the passphrase, where OpenSSL would have read it
            said = client.until_end()
            client.end("fin")
        assert b"STARTTLS" not in said  # whatever else it was told, no TLS with that key
        assert "Negotiated ciphers" not in case.said
        # -n smtp-: the session goes on in plaintext (item 2), the client's line is no passphrase
        no_tls = "TLS is not available (the certificate above cannot be used): STARTTLS is not"
        no_tls += " offered"
        assert no_tls in case.log()
        assert "pass phrase" not in case.said
        assert (
            "encrypted.pem: the private key is encrypted and no passphrase is asked: decrypt "
            "it (openssl pkey -in encrypted.pem -out key.pem) and put key.pem in its place"
        ) in case.log()
    finally:
        chain.stop()


def test_1_through_the_warm_helper_too(service, account, pki, tmp_path, stunnel_bin):
    """The helper's worker reads the pem in the jail as stunnel's main would."""
    from test_warm import Helper

    directory = tmp_path / "warm"
    directory.mkdir(mode=0o700)
    helper = Helper(directory, str(Path(stunnel_bin).with_name("stunnel3-warm")))
    SERVERS.add(helper.process.pid)
    stunnel = ["-/", "ssl", "-s", account, "-g", account, "-i", "-R", "seed",
               "-p", "encrypted.pem", "-n", "smtp-"]  # fmt: skip
    try:
        helper.wait_serving()
        chain = Chain(service, account, EXIM, {"STUNNEL3_WARM_DIR": str(directory)}, stunnel)
        try:
            with chain.session() as case:
                client = Client(chain.port, pki["ca"])
                client.send(b"secret\n")
                said = client.until_end()
                client.end("fin")
        finally:
            chain.stop()
        assert b"STARTTLS" not in said and "Negotiated ciphers" not in case.said
        (line,) = [line for line in case.said.splitlines() if "private key is encrypted" in line]
        pid, tid = re.search(r"LOG3\[(\d+):(\d+)\]", line).groups()
        assert pid != tid  # the front's pid, the worker's tid: the helper's worker said it
    finally:
        helper.stop()
        SERVERS.discard(helper.process.pid)


# -- item 3: slow clients and hung backends meet the exchange and session bounds --------


def test_3_a_client_sending_a_byte_a_second_meets_the_exchange_bound(hung, pki):
    with hung.session() as case:
        client = Client(hung.port, pki["ca"])
        assert client.reply().startswith(b"220 ")
        began = time.monotonic()
        with contextlib.suppress(OSError):
            for byte in b"NOOP NOOP NOOP NOOP":  # never a line end, 0.2 s a byte
                client.send(bytes([byte]))
                time.sleep(0.2)
        client.until_end()
        assert time.monotonic() - began < 6
        client.end("fin")
    assert "Command/reply exchange timed out (2 s, STUNNEL3_EXCHANGE_TIMEOUT)" in case.log()


def test_3_noops_at_a_backend_that_hangs_meet_the_exchange_bound(hung, pki):
    with hung.session() as case:
        client = Client(hung.port, pki["ca"])
        assert client.reply().startswith(b"220 ")
        began = time.monotonic()
        with contextlib.suppress(OSError):
            for _ in range(30):
                client.send(b"NOOP\r\n")  # each one moves bytes: the idle timer never fires
                time.sleep(0.2)
        client.until_end()
        assert time.monotonic() - began < 6
        client.end("fin")
    assert "Command/reply exchange timed out (2 s, STUNNEL3_EXCHANGE_TIMEOUT)" in case.log()


def test_3_the_whole_session_is_bounded(service, account, pki):
    chain = Chain(service, account, MAILFRONT, {"STUNNEL3_SESSION_TIMEOUT": "3"})
    try:
        with chain.session() as case:
            client = greeted(chain, pki)
            began = time.monotonic()
            for _ in range(40):  # each NOOP answered: every exchange is short
                if not client.command(b"NOOP"):
                    break
                time.sleep(0.2)
            assert 1.5 < time.monotonic() - began < 6  # 3 s from the session's start
            client.end("fin")
        assert "Session time limit reached (3 s, STUNNEL3_SESSION_TIMEOUT)" in case.log()
    finally:
        chain.stop()


def test_3_a_slow_message_is_not_an_exchange(exim, pki):
    """Message data, a line every 0.3 s for longer than the exchange bound (4 s)."""
    with exim.session() as case:
        client = greeted(exim, pki, tls=True)
        transaction(client)
        began = time.monotonic()
        for n in range(18):
            client.send(b"X-Slow: %d\r\n" % n)
            time.sleep(0.3)
        assert time.monotonic() - began > 5
        client.send(MESSAGE + b".\r\n")
        assert client.reply().startswith(b"250 OK id=")
        assert client.command(b"QUIT").startswith(b"221")
        client.end("close_notify")
    assert_whole(case, 1)


# -- item 4: a backend that ignores its EOF and SIGTERM ---------------------------------


def test_4_a_hung_backend_is_terminated_then_killed_and_counted_until_then(hung, pki):
    with hung.session() as case:
        client = Client(hung.port, pki["ca"])
        assert client.reply().startswith(b"220 ")
        client.send(b"QUIT\r\n")  # never answered: the exchange bound ends the session
        client.until_end()
        client.end("fin")
    said = case.said
    term = said.index("did not exit 1 s after its session ended: sent SIGTERM")
    kill = said.index("did not exit 1 s after SIGTERM: sent SIGKILL")
    assert term < kill < said.index("tcpserver: end ")  # counted until it was gone


def test_4_the_same_through_the_warm_helper(service, account, pki, tmp_path, stunnel_bin):
    """The warm helper's worker runs makesock's main and PROG2 is its child, with no keeper:
    the helper keeps it (TERM, then KILL, said on the chain's stderr) and the front's status
    waits until it has gone, so tcpserver counts the connection until then."""
    from test_warm import Helper

    directory = tmp_path / "warm"
    directory.mkdir(mode=0o700)
    helper = Helper(directory, str(Path(stunnel_bin).with_name("stunnel3-warm")))
    SERVERS.add(helper.process.pid)
    try:
        helper.wait_serving()
        env = {"STUNNEL3_WARM_DIR": str(directory), "STUNNEL3_EXCHANGE_TIMEOUT": "2",
               "STUNNEL3_BACKEND_EXIT_TIMEOUT": "1"}  # fmt: skip
        chain = Chain(service, account, HUNG, env)
        try:
            with chain.session() as case:
                client = Client(chain.port, pki["ca"])
                assert client.reply().startswith(b"220 ")
                served_by = helper.workers()
                (worker,) = served_by
                (second,) = children(worker)  # PROG2 itself (nobody's), no root keeper between
                status = Path(f"/proc/{second}/status").read_text()
                assert f"\nUid:\t{pwd.getpwnam('nobody').pw_uid}\t" in status
                client.send(b"QUIT\r\n")
                client.until_end()
                client.end("fin")
        finally:
            chain.stop()
        assert len(served_by) == 1  # a worker served it, not the direct path
        said = case.said
        term = said.index("did not exit 1 s after its session ended: sent SIGTERM")
        assert term < said.index("sent SIGKILL") < said.index("tcpserver: end ")
        assert said.index("tcpserver: end ") < said.rindex("tcpserver: status: 0/")
        assert helper.process.poll() is None
    finally:
        helper.stop()
        SERVERS.discard(helper.process.pid)


def test_4_without_the_helper_a_hung_backend_is_left_alone(service, account, pki, tmp_path,
                                                           stunnel_bin):  # fmt: skip
    """The helper killed mid-session (svc -k): nobody outside the jail keeps PROG2 any
    more. It gets its EOF but no signal; the worker waits for it (2 x 1 s + 5 s), then
    writes the session's own status, and PROG2 is left alone (docs/warm.md)."""
    from test_warm import Helper

    directory = tmp_path / "warm"
    directory.mkdir(mode=0o700)
    helper = Helper(directory, str(Path(stunnel_bin).with_name("stunnel3-warm")))
    helper.wait_serving()
    env = {"STUNNEL3_WARM_DIR": str(directory), "STUNNEL3_EXCHANGE_TIMEOUT": "2",
           "STUNNEL3_BACKEND_EXIT_TIMEOUT": "1"}  # fmt: skip
    chain = Chain(service, account, HUNG, env)
    left: list[int] = []
    try:
        start = len(chain.text())
        client = Client(chain.port, pki["ca"])
        assert client.reply().startswith(b"220 ")
        (worker,) = helper.workers()
        (second,) = children(worker)
        left = [second, *children(second)]
        helper.process.kill()
        helper.process.wait(TIMEOUT)
        client.send(b"QUIT\r\n")
        client.until_end()
        ended = time.monotonic()
        client.end("fin")
        deadline = ended + TIMEOUT
        while "tcpserver: end " not in (said := chain.text()[start:]):
            assert time.monotonic() < deadline, said
            time.sleep(0.05)
        assert time.monotonic() - ended > 5  # the worker waited for PROG2 first
        assert "without a status" not in said and "status 256" not in said
        assert "sent SIGTERM" not in said
        os.kill(second, 0)  # still there: nobody may signal it but root
    finally:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        chain.stop()
        with contextlib.suppress(ProcessLookupError):
            helper.process.kill()
        helper.process.wait(TIMEOUT)


def test_4_a_hung_local_program_is_terminated_then_killed(service, pki):
    port = free_port()
    log = service / f"local-{port}.log"
    argv = ["tcpserver", "-v", "-R", "-H", "-l", "localhost", "-c", "4", "127.0.0.1", str(port),
            "stunnel", "-f", "-D", "7", "-p", str(pki["server"]), "-n", "smtp-",
            "-l", "/usr/bin/python3", "--", "python3", "-c", HANG]  # fmt: skip
    env = environment(PATH=f"{_scripts()}:/usr/bin:/bin", STUNNEL3_EXCHANGE_TIMEOUT="2",
                      STUNNEL3_BACKEND_EXIT_TIMEOUT="1")  # fmt: skip
    with open(log, "wb") as out:
        server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                  env=env, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        while "tcpserver: status: 0/" not in log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        client = Client(port, pki["ca"])
        assert client.reply().startswith(b"220 hung")
        client.send(b"QUIT\r\n")
        client.until_end()
        client.end("fin")
        while "tcpserver: end " not in (said := log.read_text()):
            assert time.monotonic() < deadline, said
            time.sleep(0.05)
        assert re.search(r"Local mode child \(PID=\d+\) did not exit 1 s after the session: "
                         r"SIGTERM\n.*did not exit 1 s after SIGTERM: SIGKILL", said)  # fmt: skip
        assert children(server.pid) == []
        left = [line for line in strays() if int(line.split()[0]) not in {*SERVERS, server.pid}]
        assert left == []
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(TIMEOUT)


# -- item 5: the log cannot be flooded --------------------------------------------------


def test_5_pipelined_noops_do_not_flood_the_log(service, account, pki):
    count = 3000
    chain = Chain(service, account, MAILFRONT, {})
    try:
        with chain.session() as case:
            client = greeted(chain, pki)
            client.send(b"NOOP\r\n" * count)
            for _ in range(count):
                assert client.reply().startswith(b"250")
            assert client.command(b"QUIT").startswith(b"221")
            client.end("fin")
    finally:
        chain.stop()
    dialogue = [line for line in case.log() if line[:3] in ("C: ", "S: ", "P: ")]
    assert 100 <= len(dialogue) <= 1000  # the first second's 100, at most the session's 1000
    (summary,) = [line for line in case.log() if line.startswith("Dialogue log: ")]
    left_out = int(summary.split()[2])
    # the greeting, EHLO and its reply (4 lines), the NOOPs and theirs, QUIT and its reply
    assert len(dialogue) + left_out == 1 + 1 + 4 + 2 * count + 2


# -- item 6: a bad setting is one clear line --------------------------------------------


@pytest.mark.parametrize("value", ["abc", "0"])
def test_6_an_invalid_timeout_is_one_fatal_line(service, account, pki, value):
    chain = Chain(service, account, EXIM, {"STUNNEL3_IDLE_TIMEOUT": value})
    try:
        with chain.session() as case:
            client = Client(chain.port, pki["ca"])
            assert client.until_end() == b""  # nothing served
            client.end("fin")
        errors = [line for line in case.said.splitlines() if " LOG3[" in line]
        assert [line.split("]: ", 1)[1] for line in errors] == [
            f"Illegal idle timeout: STUNNEL3_IDLE_TIMEOUT={value} (seconds above 0)"
        ]
        assert re.search(r"tcpserver: end \d+ status 256", case.said)  # exit 1
    finally:
        chain.stop()


# -- item 7: nothing inherited follows stunnel into the jail ----------------------------


def test_7_an_inherited_descriptor_is_closed_before_the_jail(service, account, pki):
    stray = os.open("/dev/null", os.O_RDONLY)
    try:
        chain = Chain(service, account, EXIM, {}, pass_fds=(stray,))
    finally:
        os.close(stray)
    try:
        with chain.session() as case:
            client = greeted(chain, pki, tls=True)
            pid = case.pid()
            fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(
                f"/proc/{pid}/fd")}  # fmt: skip
            root = os.readlink(f"/proc/{pid}/root")
            assert client.command(b"QUIT").startswith(b"221")
            client.end("close_notify")
        assert root == str(service / "ssl")  # seen from inside the jail
        assert stray not in fds, fds
        assert fds[3].startswith("socket:")  # -F 3, the mode's own
    finally:
        chain.stop()


# -- item 11: non-ASCII in the dialogue is 3.22's dots ----------------------------------


def test_11_non_ascii_in_the_dialogue_is_a_dot_a_byte(exim, pki):
    with exim.session() as case:
        client = greeted(exim, pki)
        assert client.command(b"MAIL FROM:<a@example.org>").startswith(b"250")
        client.command("RCPT TO:<empfänger@localhost>".encode())
        assert client.command(b"QUIT").startswith(b"221")
        client.end("fin")
    assert "C: RCPT TO:<empf..nger@localhost>" in case.log()
    assert not [line for line in case.log() if not (line.isascii() and line.isprintable())]


# -- item 12: -s and -g without -i in inetd mode ----------------------------------------


def test_12_ids_without_i_are_ignored_with_a_warning(service, account, pki):
    stunnel = ["-/", "ssl", "-s", account, "-g", account, "-R", "seed", "-p", "stunnel.pem",
               "-n", "smtp-"]  # fmt: skip
    chain = Chain(service, account, EXIM, {}, stunnel)
    try:
        with chain.session() as case:
            client = greeted(chain, pki)
            uid = (
                Path(f"/proc/{case.pid()}/status")
                .read_text()
                .split("\nUid:")[1]
                .split("\n")[0]
                .split()
            )
            assert client.command(b"QUIT").startswith(b"221")
            client.end("fin")
        assert uid == ["0", "0", "0", "0"]  # 3.22's rule: still root
        assert (
            "-s and -g are ignored in inetd mode without -i (as in 3.22): the TLS code runs as "
            "uid 0; add -i to switch before the first byte is read"
        ) in case.log()
        assert pwd.getpwnam(account)  # the account exists: only -i was missing
    finally:
        chain.stop()

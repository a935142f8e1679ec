"""The warm helper, for real: stunnel3-warm on a temporary socket, real chains and peers.

Each test runs a case through the helper and, where it matters, the same case
with STUNNEL3_WARM=0 (the direct path), and compares what a user can see:
bytes, exit status, log lines (less time and pid), /proc of the process that
serves. Whether the helper served is told by the pid in the log lines: the
worker's, not the `stunnel` process's own.
"""

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (  # noqa: F401  (no_leftovers is a fixture)
    TIMEOUT,
    children,
    environment,
    no_leftovers,
    tcpserver,
    tls_exchange,
)
from test_jail import (
    account,  # noqa: F401  (a fixture, asked for by name)
    args_for,
    chain,
    make_jail,
    session_through_jail,
    status_fields,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("no_leftovers")
LOG_PID = re.compile(rb"LOG\d\[(\d+):\d+\]")
LOG_IDS = re.compile(rb"LOG\d\[(\d+):(\d+)\]")


class Helper:
    """stunnel3-warm listening on `path`; stop() checks it leaves nothing behind."""

    def __init__(self, directory: Path, program: str):
        self.path = str(directory / "warm.sock")
        self.log_path = directory / "warm.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [program, "-s", self.path],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=environment(),
            )  # fmt: skip
        assert "warm-up failed" not in self.wait_log("listening on")  # OpenSSL warmed up

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str) -> str:
        deadline = time.monotonic() + TIMEOUT
        while text not in (said := self.log()):
            assert self.process.poll() is None, f"the helper died: {said}"
            assert time.monotonic() < deadline, f"no {text!r} in: {said}"
            time.sleep(0.02)
        return said

    def workers(self) -> list[int]:
        """The helper's children: one worker per connection, nothing in between."""
        return children(self.process.pid)

    def wait_no_workers(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while self.workers() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.workers() == [], "workers outlived their clients"

    def stop(self) -> None:
        self.wait_no_workers()
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(TIMEOUT) == 0
        assert not os.path.exists(self.path)
        assert "Traceback" not in self.log()


@pytest.fixture
def helper(tmp_path, monkeypatch, stunnel_bin):
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    warm = Helper(directory, str(Path(stunnel_bin).with_name("stunnel3-warm")))
    monkeypatch.setenv("STUNNEL3_WARM_SOCKET", warm.path)
    try:
        yield warm
    finally:
        if warm.process.poll() is None:
            warm.stop()


def masked(text: bytes) -> bytes:
    """Log lines without their time and pid, for comparing two runs."""
    text = re.sub(rb"\d{4}\.\d\d\.\d\d \d\d:\d\d:\d\d ", b"", text)
    return LOG_PID.sub(b"LOG", text)


def serving_ids(text: bytes) -> set[int]:
    """The tids of the log lines: who served (the pid field is always the caller's)."""
    return {int(tid) for _, tid in LOG_IDS.findall(text)}


def spawn(stunnel_bin, args, warm: bool, fds: dict[int, int], **popen) -> subprocess.Popen:
    """stunnel ARGS with `fds` (child number -> our descriptor) in place, through the helper or not.

    close_fds=False: our own descriptors are close-on-exec; the ones placed by
    dup2 in the child are not, and so they, and only they, reach stunnel.
    """

    def place():
        for number, fd in fds.items():
            os.dup2(fd, number)

    env = environment(STUNNEL3_WARM="1" if warm else "0")
    return subprocess.Popen(
        [stunnel_bin, *args], env=env, close_fds=False, preexec_fn=place, **popen
    )


def run_with_fd3(stunnel_bin, args, warm: bool):
    mine, theirs = socket.socketpair()
    with mine, theirs:
        process = spawn(
            stunnel_bin, args, warm, {3: theirs.fileno()},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = process.communicate(timeout=TIMEOUT)
    return process, out, err


@pytest.mark.parametrize(
    "args, status",
    [
        (["-f", "-F", "3", "-p", "/nonexistent/x.pem"], 1),  # missing pem
        (["-x"], 1),  # parse error
        (["-f", "-D", "nine", "-F", "3"], 1),
        (["-V"], 0),
        (["-f", "-F", "3", "-n", "imap-"], 1),  # not written yet: a setup error
    ],
)
def test_statuses_and_texts_equal_the_direct_path(helper, stunnel_bin, args, status):
    results = {}
    for warm in (True, False):
        process, out, err = run_with_fd3(stunnel_bin, args, warm)
        results[warm] = (process.returncode, out, masked(err))
        ids = set(LOG_IDS.findall(err))
        if ids:  # the pid is always the one the caller started; the tid tells who served
            assert {int(pid) for pid, _ in ids} == {process.pid}
            served = {int(tid) for _, tid in ids}
            assert (process.pid not in served) if warm else (served == {process.pid})
    assert results[True] == results[False]
    assert results[True][0] == status


@pytest.mark.parametrize(
    "signum, status, line",
    [
        (signal.SIGTERM, 3, b"Received signal 15; terminating"),
        (signal.SIGINT, 3, b"Received signal 2; terminating"),
        (signal.SIGHUP, 3, b"Received signal 1; terminating"),  # 3.22 took HUP alike
    ],
)
def test_a_signal_mid_session_ends_it_as_directly(helper, stunnel_bin, pki, signum, status, line):
    for warm in (True, False):
        network, ours = socket.socketpair()
        plain, plain_ours = socket.socketpair()
        with network, ours, plain, plain_ours:
            process = spawn(
                stunnel_bin, ["-f", "-p", str(pki["server"]), "-F", "3"], warm,
                {0: ours.fileno(), 1: ours.fileno(), 3: plain.fileno()},
                stderr=subprocess.PIPE,
            )  # fmt: skip
            said = wait_stderr(process, b"stunnel 3.22 on")
            time.sleep(0.3)  # into the relay: it waits for a ClientHello
            assert len(helper.workers()) == (1 if warm else 0)
            process.send_signal(signum)
            said += process.communicate(timeout=TIMEOUT)[1]
        assert process.returncode == status
        assert line is None or line in said
        assert (process.pid in serving_ids(said)) is not warm


def wait_stderr(process: subprocess.Popen, text: bytes) -> bytes:
    assert process.stderr is not None
    said = b""
    while text not in said:
        line = process.stderr.readline()
        assert line, f"stunnel ended before {text!r}: {said!r}"
        said += line
    return said


def start_held_session(stunnel_bin, pki, stack: contextlib.ExitStack):
    """A warm `stunnel -F 3` serving a socketpair, past its start line: (process, network).
    Its sockets close with `stack`."""
    network, ours = socket.socketpair()
    plain, plain_ours = socket.socketpair()
    for sock in (network, ours, plain, plain_ours):
        stack.enter_context(sock)
    process = spawn(
        stunnel_bin, ["-f", "-p", str(pki["server"]), "-F", "3"], True,
        {0: ours.fileno(), 1: ours.fileno(), 3: plain.fileno()}, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_stderr(process, b"stunnel 3.22 on")
    return process, network


@contextlib.contextmanager
def held_session(stunnel_bin, pki):
    with contextlib.ExitStack() as stack:
        yield start_held_session(stunnel_bin, pki, stack)


def test_the_jailed_chain_through_the_helper(
    helper, tmp_path, request, monkeypatch, pki, stunnel_bin, makesock_bin
):
    """tcpserver + makesock + stunnel -/ -s -g -i -F 3: the worker serves, jailed, as the account"""
    user, uid, gid = request.getfixturevalue("account")
    logs = {}
    for warm in (True, False):
        monkeypatch.setenv("STUNNEL3_WARM", "1" if warm else "0")
        workdir = tmp_path / f"warm-{warm}"
        workdir.mkdir()
        jail = make_jail(workdir, pki, gid)
        with chain(workdir, stunnel_bin, makesock_bin, args_for(jail, user, user)) as chained:
            port, server, errors = chained
            echoed, (root, status) = jailed_session(
                port, pki, helper if warm else None, server, jail
            )
            log = wait_for(errors, "Connection closed").encode()
        assert echoed == b"through the jail\n"
        assert root == str(jail)
        assert status["Uid"] == [str(uid)] * 4
        assert status["Gid"] == [str(gid)] * 4
        assert status["Groups"] == [str(gid)]
        lines = [line for line in log.splitlines() if b" LOG" in line]
        logs[warm] = [re.sub(rb"\d+", b"N", line) for line in lines]
    assert logs[True] == logs[False]


def jailed_session(port: int, pki, helper: Helper | None, server: int, jail: Path):
    """One echo through TLS; while it is open, /proc of the worker (test_jail's check)."""

    def worker() -> int:
        (serving,) = helper.workers()
        return serving

    return session_through_jail(port, server, jail, pki, None if helper is None else worker)


def serving_state(pid: int, ours: dict[int, int]) -> dict:
    """What a process looks like from outside: descriptors (as ours), cwd, limits, signals."""
    inodes = {f"[{os.fstat(fd).st_ino}]": number for number, fd in ours.items()}
    fds = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{name}")
        fds[int(name)] = inodes.get(target[target.find("[") :], target)
    status = status_fields(pid)
    return {
        "fds": fds,
        "cwd": os.readlink(f"/proc/{pid}/cwd"),
        "limits": Path(f"/proc/{pid}/limits").read_text(),
        **{key: status[key] for key in ("Umask", "SigIgn", "SigBlk", "SigCgt", "Uid", "Groups")},
    }


def test_the_worker_is_the_client_recreated(helper, stunnel_bin, pki, tmp_path):
    """Descriptors at their numbers and nothing else, cwd, umask, every limit, signals."""
    import resource

    def odd_process():
        os.umask(0o027)
        resource.setrlimit(resource.RLIMIT_NOFILE, (900, 1000))
        resource.setrlimit(resource.RLIMIT_CORE, (12345, 123456))

    seen = {}
    for warm in (True, False):
        network, ours = socket.socketpair()
        plain, plain_ours = socket.socketpair()
        extra, extra_ours = socket.socketpair()
        with network, ours, plain, plain_ours, extra, extra_ours:
            fds = {0: ours.fileno(), 1: ours.fileno(), 3: plain.fileno(), 7: extra.fileno()}

            def place(fds=fds):
                odd_process()
                for number, fd in fds.items():
                    os.dup2(fd, number)

            process = subprocess.Popen(
                [stunnel_bin, "-f", "-p", str(pki["server"]), "-F", "3"],
                env=environment(STUNNEL3_WARM="1" if warm else "0"), close_fds=False,
                preexec_fn=place, stderr=subprocess.PIPE, cwd=tmp_path,
            )  # fmt: skip
            wait_stderr(process, b"stunnel 3.22 on")
            time.sleep(0.3)
            serving = helper.workers()[0] if warm else process.pid
            assert process.stderr is not None
            seen[warm] = serving_state(serving, {**fds, 2: process.stderr.fileno()})
            if warm:  # the thin client kept only stderr, its line to the helper, the pidfd
                left = {
                    os.readlink(f"/proc/{process.pid}/fd/{fd}")
                    for fd in os.listdir(f"/proc/{process.pid}/fd")
                    if fd != "2"
                }
                assert len(left) == 2 and "anon_inode:[pidfd]" in left, left
            network.close()  # EOF before any TLS: the session ends, status 0
            process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0
    # ours at their numbers; whatever else pytest's caller left inheritable, in both
    assert {0: 1, 1: 1, 2: 2, 3: 3, 7: 7}.items() <= seen[True]["fds"].items()
    assert seen[True] == seen[False]
    assert seen[True]["Umask"] == ["0027"]


def test_the_environment_reaches_a_local_program(helper, stunnel_bin, pki, tmp_path):
    """tcpserver's variables and ours reach -l; the front's STUNNEL3_RLIMITS does not."""
    script = "env; echo PARENT=$(tr '\\0\\n' '  ' < /proc/$PPID/cmdline | grep -c stunnel3-war[m])"
    outputs = {}
    for warm in (True, False):
        env = environment(WARM_PROBE="a b=c", STUNNEL3_WARM="1" if warm else "0")
        argv = [stunnel_bin, "-f", "-p", str(pki["server"]), "-l", "/bin/sh", "--", "sh", "-c"]
        with tcpserver(tmp_path, [*argv, script], env) as service:
            said = tls_exchange(service.port, b"")
        lines = said.decode().splitlines()
        outputs[warm] = lines
        assert "WARM_PROBE=a b=c" in lines
        assert "TCPREMOTEIP=127.0.0.1" in lines
        assert not [line for line in lines if line.startswith("STUNNEL3_RLIMITS=")]
        parent = [line for line in lines if line.startswith("PARENT=")][0]
        assert parent == ("PARENT=1" if warm else "PARENT=0")  # the worker runs -l
    differ = ("PARENT=", "STUNNEL3_WARM=", "TCPREMOTEPORT=", "TCPLOCALPORT=")
    same = [{line for line in outputs[warm] if not line.startswith(differ)} for warm in (1, 0)]
    assert same[0] == same[1]


def test_without_a_helper_stunnel_runs_itself(helper, stunnel_bin, tmp_path, monkeypatch):
    """No socket, a dead helper's socket, a request too big: the direct path, same result."""
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(tmp_path / "stale.sock"))  # bound, never listening: connection refused
    args = ["-f", "-F", "3", "-p", "/nonexistent/x.pem"]
    with stale:
        for path, extra in [
            (str(tmp_path / "none.sock"), ""),
            (str(tmp_path / "stale.sock"), ""),
            (helper.path, "x" * (100 * 1024)),  # twice: over the request limit
        ]:
            monkeypatch.setenv("STUNNEL3_WARM_SOCKET", path)
            monkeypatch.setenv("WARM_BIG", extra)
            monkeypatch.setenv("WARM_BIG2", extra)
            process, _, err = run_with_fd3(stunnel_bin, args, True)
            assert process.returncode == 1
            assert serving_ids(err) == {process.pid}
            assert b"/nonexistent/x.pem: No such file or directory (2)" in err
    assert "Traceback" not in helper.log()


def raw_request(path: str, message: bytes, fds: list[int], as_uid: int | None = None) -> bytes:
    """Send one message (with fds) as a peer of our choosing; the helper's first reply."""
    reply_r, reply_w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the forked peer
        try:
            os.chdir(os.path.dirname(path))  # pytest's tmp parents are closed to others
            if as_uid is not None:
                os.setgroups([])
                os.setresgid(as_uid, as_uid, as_uid)
                os.setresuid(as_uid, as_uid, as_uid)
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            peer.settimeout(TIMEOUT)
            peer.connect(os.path.basename(path))
            if message or fds:
                peer.sendmsg(
                    [message],
                    [
                        (
                            socket.SOL_SOCKET,
                            socket.SCM_RIGHTS,
                            bytes(b"".join(fd.to_bytes(4, "little") for fd in fds)),
                        )
                    ]
                    if fds
                    else [],
                )
            os.write(reply_w, b"<" + peer.recv(64) + b">")
        except BaseException as error:  # noqa: BLE001
            os.write(reply_w, f"!{type(error).__name__}".encode())
        finally:
            os._exit(0)
    os.close(reply_w)
    with os.fdopen(reply_r, "rb") as reply:
        said = reply.read()
    os.waitpid(child, 0)
    return said


def good_request(argv: list[str], fds: list[int]) -> bytes:
    from stunnel3 import warm_client

    return warm_client.encode_request(argv, fds)


def test_a_foreign_uid_is_refused(helper, stunnel_bin):
    """Even with the socket opened to all, only root (or the helper's uid) is served."""
    os.chmod(os.path.dirname(helper.path), 0o755)
    os.chmod(helper.path, 0o666)
    cwd = os.open("/", os.O_PATH)
    try:
        message = good_request(["stunnel", "-V"], [])
        said = raw_request(helper.path, message, [cwd], as_uid=65534)
        assert said in (b"<>", b"!BrokenPipeError", b"!ConnectionResetError")  # closed, no word
        helper.wait_log("refused pid")
        assert "uid 65534" in helper.log()
        # root claiming another uid in its request is refused too, with NO
        forged = message.replace(
            b"uids\x003\x000\x000\x000", b"uids\x003\x0065534\x0065534\x0065534"
        )
        assert forged != message
        assert raw_request(helper.path, forged, [cwd]) == b"<NO>"
        assert "are not the peer's" in helper.wait_log("are not the peer's")
    finally:
        os.close(cwd)


def test_garbage_never_hurts_the_helper(helper, stunnel_bin):
    pair = socket.socketpair()
    cwd = os.open("/", os.O_PATH)
    valid = good_request(["stunnel", "-V"], [pair[0].fileno()])
    try:
        cases = [
            (b"", []),
            (b"garbage", []),
            (b"garbage", [pair[0].fileno()] * 40),
            (b"\0" * 1000, [cwd]),
            (valid[:-5], [pair[0].fileno(), cwd]),
            (valid, [cwd]),  # one descriptor short
            (valid, [pair[0].fileno(), pair[1].fileno(), cwd]),  # one too many
            (valid + b"x\0", [pair[0].fileno(), cwd]),
            (b"y" * (150 * 1024), [cwd]),  # over the size limit
            (valid.replace(b"umask\x001\x00", b"umask\x001\x00-"), [pair[0].fileno(), cwd]),
        ]
        for message, fds in cases:
            assert raw_request(helper.path, message, fds) in (b"<NO>", b"<>"), message[:40]
        helper.wait_log("refused request")
    finally:
        os.close(cwd)
        pair[0].close()
        pair[1].close()
    helper.wait_no_workers()
    assert helper.process.poll() is None
    helper_fds = [
        os.readlink(f"/proc/{helper.process.pid}/fd/{fd}")
        for fd in os.listdir(f"/proc/{helper.process.pid}/fd")
        if int(fd) > 2
    ]  # the listener and its wake-up pipe: nothing received, no worker's pidfd stays
    assert len(helper_fds) == 3 and sum(fd.startswith("socket:") for fd in helper_fds) == 1
    # and it still serves
    process, _, err = run_with_fd3(stunnel_bin, ["-x"], True)
    assert process.returncode == 1 and process.pid not in serving_ids(err)


def test_a_killed_client_ends_its_worker(helper, stunnel_bin, pki):
    with held_session(stunnel_bin, pki) as (process, network):
        time.sleep(0.2)
        (worker,) = helper.workers()
        process.kill()
        said = process.communicate(timeout=TIMEOUT)[1]
        deadline = time.monotonic() + TIMEOUT
        while os.path.exists(f"/proc/{worker}") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not os.path.exists(f"/proc/{worker}")
    assert b"Received signal 15; terminating" in said  # from the worker, on our stderr pipe


def test_the_run_script_starts_a_helper(tmp_path, stunnel_bin, monkeypatch):
    """compat/stunnel3-warm-run, changed only in SOCKET and PATH, serves and stops cleanly."""
    compat = Path(__file__).resolve().parents[2] / "compat" / "stunnel3-warm-run"
    socket_path = tmp_path / "run" / "warm.sock"
    lines = compat.read_text().splitlines()
    changed = [
        f"SOCKET={socket_path}" if line.startswith("SOCKET=") else
        f"PATH={Path(stunnel_bin).parent}:/usr/bin:/bin" if line.startswith("PATH=") else line
        for line in lines
    ]  # fmt: skip
    assert sum(a != b for a, b in zip(lines, changed, strict=True)) == 2
    script = tmp_path / "run-script"
    script.write_text("\n".join(changed) + "\n")
    log = tmp_path / "log"
    with open(log, "wb") as out:
        service = subprocess.Popen(
            ["sh", str(script)], stdout=out, stdin=subprocess.DEVNULL, env=environment()
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not socket_path.exists():
            assert time.monotonic() < deadline and service.poll() is None, log.read_text()
            time.sleep(0.02)
        assert oct(socket_path.stat().st_mode & 0o777) == "0o600"
        assert oct(socket_path.parent.stat().st_mode & 0o777) == "0o700"
        monkeypatch.setenv("STUNNEL3_WARM_SOCKET", str(socket_path))
        process, _, err = run_with_fd3(stunnel_bin, ["-x"], True)
        assert process.returncode == 1 and serving_ids(err) - {process.pid}
    finally:
        service.terminate()
        assert service.wait(TIMEOUT) == 0
    assert not socket_path.exists()
    assert "stunnel3-warm: info: stopped" in log.read_text()


# -- one process per connection: the helper's children, signals, hang-ups, time-outs --


def task_children(pid: int) -> list[int]:
    """The kernel's own list of a process's children (every thread's)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        found += [
            int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        ]
    return found


def test_one_process_per_connection(helper, stunnel_bin, pki):
    """Two sessions at once: two children of the helper, each serving, each childless."""
    clients = []
    with contextlib.ExitStack() as stack:
        for _ in range(2):
            clients.append(start_held_session(stunnel_bin, pki, stack))
        time.sleep(0.2)
        workers = task_children(helper.process.pid)
        assert len(workers) == 2
        for worker in workers:
            assert task_children(worker) == []  # no session process in between, nothing below
            assert Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(
                helper.process.pid
            )
        for process, network in clients:
            network.close()  # EOF before any TLS: the session ends, status 0
            process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0
    helper.wait_no_workers()


def test_a_root_client_signals_its_jailed_worker(
    helper, tmp_path, request, monkeypatch, pki, stunnel_bin, makesock_bin
):
    """pidfd_send_signal from the thin client (root) reaches a worker that has chroot'ed
    and setuid'ed to the -s account: SIGTERM ends the session as on the direct path."""
    user, uid, gid = request.getfixturevalue("account")
    monkeypatch.setenv("STUNNEL3_WARM", "1")
    jail = make_jail(tmp_path, pki, gid)
    with chain(tmp_path, stunnel_bin, makesock_bin, args_for(jail, user, user)) as chained:
        port, server, errors = chained
        with socket.create_connection(("127.0.0.1", port), TIMEOUT):
            deadline = time.monotonic() + TIMEOUT
            while (
                not (workers := helper.workers())
                or status_fields(workers[0])["Uid"] != [str(uid)] * 4
            ):
                assert time.monotonic() < deadline, "no jailed worker"
                time.sleep(0.02)
            (thin,) = children(server)  # makesock, running the thin stunnel in its process
            os.kill(thin, signal.SIGTERM)
            said = wait_for(errors, "Received signal 15; terminating")
            helper.wait_no_workers()
    assert re.search(r"end \d+ status 768", said), said  # tcpserver: the thin client exited 3


def hand_over_by_hand(path: str, argv: list[str], fds: list[int]):
    """A peer that sends a valid request and reads the worker's READY: (socket, reply, fds)."""
    cwd = os.open("/", os.O_PATH)
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        peer.settimeout(TIMEOUT)
        peer.connect(path)
        numbers = list(range(100, 100 + len(fds)))  # the numbers the request claims
        peer.sendmsg(
            [good_request(argv, numbers)],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, b"".join(
                fd.to_bytes(4, "little") for fd in [*fds, cwd]))],
        )  # fmt: skip
        reply, received, _, _ = socket.recv_fds(peer, 64, 4)
    finally:
        os.close(cwd)
    return peer, reply, received


def test_no_go_means_the_worker_runs_nothing(helper):
    """READY comes with a pidfd of the worker; a client that closes instead of GO leaves
    no worker behind, and what it asked for (-V on its stderr) never ran."""
    err_r, err_w = os.pipe()
    with os.fdopen(err_r, "rb") as err:
        peer, reply, received = hand_over_by_hand(helper.path, ["stunnel", "-V"], [err_w])
        os.close(err_w)
        try:
            (pidfd,) = received
            word, _, pid = reply.partition(b" ")
            assert word == b"READY" and helper.workers() == [int(pid)]
            assert Path(f"/proc/self/fdinfo/{pidfd}").read_text().count(f"Pid:\t{int(pid)}\n")
            os.close(pidfd)
        finally:
            peer.close()
        helper.wait_no_workers()
        assert err.read() == b""  # its copy of our pipe is closed, and nothing was written
    assert "Traceback" not in helper.log()


def test_silent_peers_time_out_and_the_helper_serves_on(helper, stunnel_bin):
    """A peer that connects and says nothing, and one that never sends GO: their workers
    give up (5 s for a request, 10 s for GO), the helper never waits for either."""
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    err_r, err_w = os.pipe()
    with silent, os.fdopen(err_r, "rb") as err:
        silent.connect(helper.path)
        peer, reply, received = hand_over_by_hand(helper.path, ["stunnel", "-V"], [err_w])
        os.close(err_w)
        with peer:
            for fd in received:
                os.close(fd)
            assert reply.startswith(b"READY ")
            assert len(helper.workers()) == 2
            started = time.monotonic()
            process, _, said = run_with_fd3(stunnel_bin, ["-x"], True)  # served meanwhile
            assert process.returncode == 1 and process.pid not in serving_ids(said)
            assert time.monotonic() - started < 3
            assert silent.recv(64) == b"NO"  # after 5 s: the worker's refusal
            assert peer.recv(64) == b"X0"  # after 10 s without GO: it ended, having run nothing
            helper.wait_no_workers()
        assert err.read() == b""
    assert "refused request" in helper.log()  # the silent one: nothing came in 5 s


def test_sigterm_removes_the_socket_and_the_helper_waits_for_its_workers(helper, stunnel_bin, pki):
    with held_session(stunnel_bin, pki) as (process, network):
        helper.process.send_signal(signal.SIGTERM)
        helper.wait_log("stopping once 1 sessions have ended")
        assert not os.path.exists(helper.path)  # new connections go direct at once
        assert helper.process.poll() is None and len(helper.workers()) == 1
        network.close()  # the session ends on its own, its status reaches the client
        said = process.communicate(timeout=TIMEOUT)[1]
    assert process.returncode == 0 and process.pid not in serving_ids(said)
    assert helper.process.wait(TIMEOUT) == 0
    assert "info: stopped" in helper.log()


def test_a_killed_helper_leaves_the_client_waiting_for_its_worker(helper, stunnel_bin, pki):
    """No status can come any more, but the client leaves only when its worker has ended:
    tcpserver still counts the connection while it is served."""
    with held_session(stunnel_bin, pki) as (process, network):
        (worker,) = helper.workers()
        helper.process.kill()
        helper.process.wait(TIMEOUT)
        time.sleep(0.3)
        assert process.poll() is None and os.path.exists(f"/proc/{worker}")
        network.close()  # the worker's session ends; then so does the client
        said = process.communicate(timeout=TIMEOUT)[1]
    assert process.returncode == 1
    assert b"the warm helper ended the session without a status" in said
    # the worker's last line first (a handshake that never came: 3.22 said only that)
    assert said.index(b"SSL_accept: ") < said.index(b"without a status")

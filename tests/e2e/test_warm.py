"""The warm helper, for real: stunnel3-warm on a temporary rendezvous, real fronts and chains.

Each test runs a case through the helper and, where it matters, the same case
with STUNNEL3_WARM=0 (the direct path), and compares what a user can see:
bytes, exit status, log lines (less time and pid), /proc of the process that
serves. Whether the helper served is told by the tid in the log lines: the
worker's, not the front's own pid.
"""

import contextlib
import os
import re
import signal
import socket
import ssl
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
    tls_client,
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
    """stunnel3-warm serving `directory`; stop() checks it leaves nothing behind."""

    def __init__(self, directory: Path, program: str, preexec=None):
        self.path = str(directory)
        self.log_path = directory.parent / "warm.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [program, "-d", self.path], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=environment(), preexec_fn=preexec,
            )  # fmt: skip

    def wait_serving(self) -> None:
        assert "warm-up failed" not in self.wait_log("serving")  # OpenSSL warmed up

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
        assert sorted(os.listdir(self.path)) == []  # the rendezvous is gone
        assert "Traceback" not in self.log()


@pytest.fixture
def helper(tmp_path, monkeypatch, stunnel_bin):
    directory = tmp_path / "warm"
    directory.mkdir(mode=0o700)
    warm = Helper(directory, str(Path(stunnel_bin).with_name("stunnel3-warm")))
    warm.wait_serving()
    monkeypatch.setenv("STUNNEL3_WARM_DIR", warm.path)
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

    pass_fds: the ones placed by dup2 in the child, and only they, reach stunnel
    (whatever else the test runner's own caller left inheritable is closed).
    """

    def place():
        for number, fd in fds.items():
            os.dup2(fd, number)

    env = environment(STUNNEL3_WARM="1" if warm else "0")
    keep = sorted(number for number in fds if number > 2)
    return subprocess.Popen([stunnel_bin, *args], env=env, pass_fds=keep, preexec_fn=place, **popen)


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
        # no pem stops no STARTTLS mode (issue #18 item 2): POP3's -ERR on stdout, status 0
        (["-f", "-F", "3", "-n", "pop3", "-p", "/nonexistent/x.pem"], 0),
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
    if "pop3" in args:
        assert (
            results[True][1]
            == b"-ERR [SYS/TEMP] TLS is required but not available here, closing connection\r\n"
        )


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
                env=environment(STUNNEL3_WARM="1" if warm else "0"), pass_fds=[3, 7],
                preexec_fn=place, stderr=subprocess.PIPE, cwd=tmp_path,
            )  # fmt: skip
            wait_stderr(process, b"stunnel 3.22 on")
            time.sleep(0.3)
            serving = helper.workers()[0] if warm else process.pid
            assert process.stderr is not None
            seen[warm] = serving_state(serving, {**fds, 2: process.stderr.fileno()})
            if warm:  # and the write side of the front's reply pipe, close-on-exec, for X<status>
                reply = os.readlink(f"/proc/{process.pid}/fd/9")
                (number,) = [n for n, target in seen[warm]["fds"].items() if target == reply]
                assert (
                    number > 9
                    and "flags:\t02" in Path(f"/proc/{serving}/fdinfo/{number}").read_text()
                )
                del seen[warm]["fds"][number]
            if warm:  # the front kept its stderr and two pipes of its own, no socket
                left = {
                    fd: os.readlink(f"/proc/{process.pid}/fd/{fd}")
                    for fd in os.listdir(f"/proc/{process.pid}/fd")
                    if fd not in ("2", "10")  # 10: dash's script, close-on-exec
                }
                assert sorted(left) == ["8", "9"], left
                assert all(target.startswith("pipe:") for target in left.values()), left
            network.close()  # EOF before any TLS: the session ends, status 0
            process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0
    # ours at their numbers; 7, inherited and not the mode's, closed before the jail in
    # both (issue #18 item 7), as whatever else pytest's caller left inheritable
    assert {0: 1, 1: 1, 2: 2, 3: 3}.items() <= seen[True]["fds"].items()
    assert 7 not in seen[True]["fds"]
    assert seen[True]["fds"] == seen[False]["fds"]
    assert seen[True] == seen[False]
    assert seen[True]["Umask"] == ["0027"]


def test_the_environment_reaches_a_local_program(helper, stunnel_bin, pki, tmp_path):
    """tcpserver's variables and ours reach -l; the front's STUNNEL3_RLIMITS does not."""
    # The worker shows the front's own command line (proctitle): its parent is the helper.
    script = (
        "env; up=$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$PPID/status);"
        " echo PARENT=$(tr '\\0\\n' '  ' < /proc/$up/cmdline | grep -c stunnel3-war[m])"
    )
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
    """No directory, a dead helper's file, a file naming a live process that is no helper:
    the direct path, same result, at once."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    cases = {"none": None, "dead": f"{dead.pid} 3\n", "alive": f"{os.getpid()} 0\n"}
    for name, text in cases.items():
        directory = tmp_path / name
        directory.mkdir(mode=0o700)
        if text is not None:
            (directory / "helper").write_text(text)
            os.mkfifo(directory / "lifeline", 0o600)
            os.mkfifo(directory / "announce", 0o600)
        monkeypatch.setenv("STUNNEL3_WARM_DIR", str(directory))
        started = time.monotonic()
        args = ["-f", "-F", "3", "-p", "/nonexistent/x.pem"]
        process, _, err = run_with_fd3(stunnel_bin, args, True)
        assert process.returncode == 1 and serving_ids(err) == {process.pid}, name
        assert b"/nonexistent/x.pem: No such file or directory (2)" in err
        assert time.monotonic() - started < 5
    assert "Traceback" not in helper.log()


def announce(helper: Helper, line: bytes) -> None:
    fd = os.open(os.path.join(helper.path, "announce"), os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def test_forged_and_garbled_announcements_never_hurt(helper, stunnel_bin):
    """Lines that are no announcement, pids that are no front of ours (a process with no
    watcher child, one that is not root), a front of another installation: nothing is taken,
    no one else is written to or signalled, the helper serves on."""
    sleeper = subprocess.Popen(["sleep", "30"])
    stranger = subprocess.Popen(["setuidgid", "nobody", "sleep", "30"])
    deadline = time.monotonic() + TIMEOUT
    while status_fields(stranger.pid)["Uid"][0] == "0":  # setuidgid has not switched yet
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        for line in [b"garbage\n", b"1 2 3 4\n", b"\0" * 100 + b"\n", b"x" * 5000 + b"\n",
                     b"%d 9\n" % sleeper.pid, b"%d 9\n" % stranger.pid, b"0 9\n"]:  # fmt: skip
            announce(helper, line)
        said = helper.wait_log(f"pid {stranger.pid} is not uid 0")
        assert f"pid {sleeper.pid} has 0 children" in said
        assert sleeper.poll() is None and stranger.poll() is None
    finally:
        for process in (sleeper, stranger):
            process.kill()
            process.wait()
    other = Path(helper.path).parent / "stunnel"  # our front, installed for Debian's python3
    other.write_text(Path(stunnel_bin).read_text())
    other.chmod(0o755)
    (other.parent / "stunnel3-python").write_text("#!/usr/bin/python3\n")
    process, _, err = run_with_fd3(str(other), ["-x"], True)
    assert serving_ids(err) <= {process.pid}  # whatever that Python made of it, it ran here
    assert "not a front of this installation" in helper.wait_log("not a front of this")
    process, _, err = run_with_fd3(stunnel_bin, ["-x"], True)  # and it still serves
    assert process.returncode == 1 and process.pid not in serving_ids(err)
    helper.wait_no_workers()
    assert "Traceback" not in helper.log()


def test_a_front_that_is_not_root_runs_directly(helper, stunnel_bin, tmp_path):
    """The rendezvous is root's: another account's stunnel serves itself, at once."""
    os.chmod(helper.path, 0o755)
    mine, theirs = socket.socketpair()
    with mine, theirs:
        process = subprocess.Popen(
            ["setuidgid", "nobody", stunnel_bin, "-f", "-F", "3", "-p", "/nonexistent/x.pem"],
            env=environment(STUNNEL3_WARM_DIR=helper.path), stderr=subprocess.PIPE,
            pass_fds=[theirs.fileno()], preexec_fn=lambda: os.dup2(theirs.fileno(), 3),
        )  # fmt: skip
        err = process.communicate(timeout=TIMEOUT)[1]
    assert process.returncode == 1 and serving_ids(err) == {process.pid}
    assert "refused" not in helper.log() and "ignored" not in helper.log()


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
    """compat/stunnel3-warm-run, changed only in PATH, serves its own directory and stops
    cleanly."""
    compat = Path(__file__).resolve().parents[2] / "compat" / "stunnel3-warm-run"
    lines = compat.read_text().splitlines()
    changed = [
        f"PATH={Path(stunnel_bin).parent}:/usr/bin:/bin" if line.startswith("PATH=") else line
        for line in lines
    ]
    assert sum(a != b for a, b in zip(lines, changed, strict=True)) == 1
    service = tmp_path / "warm"
    service.mkdir(mode=0o755)
    (service / "run").write_text("\n".join(changed) + "\n")
    log = tmp_path / "log"
    with open(log, "wb") as out:
        supervised = subprocess.Popen(
            ["sh", "./run"], cwd=service, stdout=out, stdin=subprocess.DEVNULL, env=environment()
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (service / "helper").exists():
            assert time.monotonic() < deadline and supervised.poll() is None, log.read_text()
            time.sleep(0.02)
        for fifo in ("announce", "lifeline"):
            assert oct((service / fifo).stat().st_mode & 0o777) == "0o600"
        monkeypatch.setenv("STUNNEL3_WARM_DIR", str(service))
        process, _, err = run_with_fd3(stunnel_bin, ["-x"], True)
        assert process.returncode == 1 and serving_ids(err) - {process.pid}
    finally:
        supervised.terminate()
        assert supervised.wait(TIMEOUT) == 0
    assert sorted(os.listdir(service)) == ["run"]
    assert "stunnel3-warm: info: stopped" in log.read_text()


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


def test_workers_share_one_ticket_key(helper, stunnel_bin, pki, tmp_path):
    """A client resumes its TLS session on the next worker (tls.prepare_context in the
    helper); on the direct path each connection has its own key and never does."""
    resumed = {}
    for warm in (True, False):
        env = environment(STUNNEL3_WARM="1" if warm else "0")
        argv = [stunnel_bin, "-f", "-p", str(pki["server"]), "-l", "/bin/cat"]
        with tcpserver(tmp_path, argv, env) as service:
            context, offered, resumed[warm] = tls_client(), None, []
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", service.port), TIMEOUT) as raw:
                    with context.wrap_socket(raw, session=offered) as conn:
                        conn.sendall(b"x")
                        assert conn.recv(1) == b"x"  # TLS 1.3: the tickets came before it
                        resumed[warm].append(conn.session_reused)
                        offered = conn.session
    assert resumed == {True: [False, True, True], False: [False, False, False]}


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


def test_sigterm_removes_the_rendezvous_and_the_helper_waits_for_its_workers(
    helper, stunnel_bin, pki
):
    with held_session(stunnel_bin, pki) as (process, network):
        helper.process.send_signal(signal.SIGTERM)
        helper.wait_log("stopping once 1 sessions have ended")
        assert os.listdir(helper.path) == []  # new connections go direct at once
        assert helper.process.poll() is None and len(helper.workers()) == 1
        network.close()  # the session ends on its own, its status reaches the front
        said = process.communicate(timeout=TIMEOUT)[1]
    assert process.returncode == 0 and process.pid not in serving_ids(said)
    assert helper.process.wait(TIMEOUT) == 0
    assert "info: stopped" in helper.log()


@pytest.mark.parametrize("end", ["plain", "signal"])
def test_a_killed_helper_leaves_the_sessions_their_status(helper, stunnel_bin, pki, end):
    """svc -k (SIGKILL) of the helper: each session goes on, and its front still exits with
    the worker's own status (issue #18), not a made-up one."""
    with held_session(stunnel_bin, pki) as (process, network):
        (worker,) = helper.workers()
        helper.process.kill()
        helper.process.wait(TIMEOUT)
        time.sleep(0.3)
        assert process.poll() is None and os.path.exists(f"/proc/{worker}")
        if end == "plain":
            network.close()  # the worker's session ends; then so does the front
        else:
            process.send_signal(signal.SIGTERM)  # relayed by the front itself
        said = process.communicate(timeout=TIMEOUT)[1]
    assert process.returncode == (0 if end == "plain" else 3), said
    assert b"without a status" not in said
    assert (b"SSL_accept: " if end == "plain" else b"Received signal 15") in said


def test_fronts_waiting_on_a_stopped_helper_go_direct_when_it_dies(helper, stunnel_bin):
    """A helper that never answers holds its fronts only as long as it lives: SIGKILL, and
    each of them runs the direct path, nothing lost."""
    helper.process.send_signal(signal.SIGSTOP)
    try:
        mine, theirs = socket.socketpair()
        with mine, theirs:
            process = spawn(stunnel_bin, ["-x"], True, {3: theirs.fileno()}, stderr=subprocess.PIPE)
            time.sleep(0.5)
            assert process.poll() is None  # it waits: the helper lives
            helper.process.kill()
            err = process.communicate(timeout=TIMEOUT)[1]
    finally:
        helper.process.wait(TIMEOUT)
    assert process.returncode == 1 and serving_ids(err) == {process.pid}
    assert b"Illegal option: 'x'" in err


def no_pidfd_getfd() -> None:
    """A seccomp filter in the helper's process: pidfd_getfd(2) fails with EPERM, as under
    Yama's ptrace_scope 3 or a container's filter."""
    import ctypes
    import struct

    ld_nr, jeq, ret = 0x20, 0x15, 0x06
    allow, eperm = 0x7FFF0000, 0x00050000 | 1
    program = [(ld_nr, 0, 0, 0), (jeq, 0, 1, 438), (ret, 0, 0, eperm), (ret, 0, 0, allow)]
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0, ctypes.get_errno()


def test_where_pidfd_getfd_is_forbidden_every_front_runs_directly(
    tmp_path, stunnel_bin, monkeypatch
):
    directory = tmp_path / "warm"
    directory.mkdir(mode=0o700)
    blocked = Helper(directory, str(Path(stunnel_bin).with_name("stunnel3-warm")), no_pidfd_getfd)
    try:
        said = blocked.wait_log("every connection is served directly")
        assert said.count("warning:") == 1 and "Operation not permitted" in said
        assert os.listdir(directory) == []  # no rendezvous: fronts do not even ask
        monkeypatch.setenv("STUNNEL3_WARM_DIR", str(directory))
        process, _, err = run_with_fd3(stunnel_bin, ["-x"], True)
        assert process.returncode == 1 and serving_ids(err) == {process.pid}
    finally:
        blocked.process.terminate()
        assert blocked.process.wait(TIMEOUT) == 0


def served_certificate(port: int, helper: Helper) -> str:
    """The subject of the certificate a worker of the helper sends (-F 3: TLS at once)."""
    from cryptography import x509

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), TIMEOUT) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            tls.sendall(b"x\n")
            assert tls.recv(10) == b"x\n"
            assert len(helper.workers()) == 1  # served by a worker, not directly
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def test_a_new_pem_is_served_at_once_through_the_helper(
    helper, tmp_path, request, monkeypatch, pki, stunnel_bin, makesock_bin
):
    """The helper keeps a context configured for the jail's pem (tls.keep_context); a
    worker takes it only for the very bytes it reads in its jail: a pem replaced between
    two connections is the one the second client gets, as on the direct path."""
    user, _uid, gid = request.getfixturevalue("account")
    monkeypatch.setenv("STUNNEL3_WARM", "1")
    jail = make_jail(tmp_path, pki, gid)
    subjects = []
    with chain(tmp_path, stunnel_bin, makesock_bin, args_for(jail, user, user)) as chained:
        port, _server, errors = chained
        for pem in ("server", "server", "client", "client", "server"):
            (jail / "stunnel.pem").write_bytes(pki[pem].read_bytes())
            subjects.append(served_certificate(port, helper))
        wait_for(errors, "Connection closed")
    assert "refused" not in helper.log()
    first, _, renewed, _, back = subjects
    assert subjects == [first, first, renewed, renewed, first]
    assert renewed != first

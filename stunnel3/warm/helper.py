"""stunnel3-warm: a resident helper that takes Python off every connection.

    stunnel3-warm [ -d directory ] [ -c limit ]

It imports, once, everything a session needs (and warms OpenSSL up:
tls_warmup.py), then serves the rendezvous directory (default
$STUNNEL3_WARM_DIR, else the working directory: the `warm` service directory
inside the SMTP one). A front (bin/, makesock or stunnel, root under
tcpserver) that finds it there hands its own process over, with no Python
started; see docs/warm.md and the front's own comment. In the directory:

    helper    "<our pid> <fd>": the fd is our lifeline, a FIFO we hold open for
              writing and never write to; a front checks that
              /proc/<pid>/fd/<fd> is `lifeline` (so a stale file never fools
              it) and its watcher child reads it: EOF when we are gone
    announce  a FIFO (0600): one line per front, `<pid> <reply fd>`, written by
              its watcher child
    lifeline  the FIFO above (0600)

For each announcement (worker.py has the checks): is it one of our
fronts, waiting (else: not a word to it)? Can it be served (else "N" on its
reply pipe)? Then its descriptors are copied (pidfd_getfd), a worker is
forked, and the watcher is killed so that the front reads its reply pipe:
"T <worker pid>" (the worker writes it once it has become the front), then
"X<status>", which the worker writes itself when its program returns (so a
session's status survives the helper), and which we write again, or
"K<signal>", when we reap it.

- We poll the announcements, each worker's pidfd and each front's: a front's
  end (SIGKILL) is SIGTERM to its worker (3.22's end on SIGTERM).
- We keep each makesock worker's PROG2, as makesock's keeper does on the direct
  path (children.py), with no process forked for it: the worker sends PROG2's
  pidfd and the front's stderr on a socket pair made before its fork
  (makesock.main's hand_over) and closes its end when the session ends; then PROG2
  has STUNNEL3_BACKEND_EXIT_TIMEOUT to exit, SIGTERM, as long again, SIGKILL,
  timed by our poll. The worker writes its X once PROG2 has gone; so do we.
- SIGTERM (or SIGINT): the rendezvous goes at once (fronts waiting get EOF on
  the lifeline and run the direct path; new ones find nothing), and we leave
  when the last worker and the last PROG2 we keep have ended, still watching
  their fronts.
- Where pidfd_getfd(2) is not permitted (Yama ptrace_scope 3, seccomp), one
  warning line at start, no rendezvous, and every front runs the direct path.
"""

import _signal  # pthread_sigmask without enums: twice per connection
import _socket
import gc
import os
import select
import signal
import socket
import stat
import sys
import time

from stunnel3 import chroot, makesock, unix
from stunnel3.engine import children
from stunnel3.support import proctitle
from stunnel3.warm import worker as warm_worker

PROG = "stunnel3-warm"
USAGE = "stunnel3-warm [ -d directory ] [ -c limit ]"
DIR_ENV = "STUNNEL3_WARM_DIR"
DEFAULT_LIMIT = 400  # workers at once; over it, fronts run the direct path
TICKET_KEY_SECONDS = 3600  # the workers' shared session-ticket key is renewed this often
FILES = ("helper", "announce", "lifeline")
HELP = f"""stunnel3-warm: load stunnel3 and OpenSSL once; serve each connection's
makesock or stunnel from a process forked from here (stunnel3-warm(8),
docs/warm.md).

usage: {USAGE}

  -d directory  the rendezvous directory, where the chain's fronts look for
                the helper (default: ${DIR_ENV}, else the working
                directory)
  -c limit      sessions served at once; over it, the fronts serve their own
                (default: {DEFAULT_LIMIT})
  -h, --help    show this text
"""
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_log_fd: int | None = 2  # the helper's stderr; a worker keeps it aside, then drops it


def main(argv: list[str]) -> int:
    directory, limit = _parse(argv[1:])
    _preload()
    helper = Helper(limit)
    problem = _cannot_take_descriptors()
    if problem:
        say(f"warning: {problem}: every connection is served directly")
        helper.stopping = False
        while not helper.stopping:
            helper.turn()
        return 0
    rendezvous = Rendezvous(directory)
    helper.listen(rendezvous)
    say(f"info: serving {os.path.abspath(directory)} (pid {os.getpid()})")
    gc.freeze()  # the imported world stays shared with every fork, not copied
    try:
        while not helper.stopping:
            helper.turn()
    finally:
        helper.stop_listening()
        rendezvous.remove()
    if helper.workers:
        say(f"info: stopping once {len(helper.workers)} sessions have ended")
    while helper.workers or helper.kept:
        helper.turn()
    say("info: stopped")
    return 0


def _parse(args: list[str]) -> tuple[str, int]:
    directory = os.environ.get(DIR_ENV) or "."
    limit = DEFAULT_LIMIT
    while args:
        if args[0] in ("-h", "--help"):
            os.write(1, HELP.encode())
            raise SystemExit(0)
        if args[0] in ("-d", "-c") and len(args) > 1:
            if args[0] == "-d":
                directory = args[1]
            elif args[1].isdigit() and int(args[1]) > 0:
                limit = int(args[1])
            else:
                unix.usage(PROG, USAGE)
            args = args[2:]
        else:
            unix.usage(PROG, USAGE)
    return directory, limit


def _preload() -> None:
    """Everything a session imports, direct path or not: the stdlib and OpenSSL pieces
    service._load_modules names, and every module of ours (new protocols included)."""
    import encodings.idna  # noqa: F401
    import importlib
    import subprocess  # noqa: F401  -l programs start with it
    import syslog  # noqa: F401
    import termios  # noqa: F401

    import stunnel3
    from stunnel3 import stunnel
    from stunnel3.options import Options

    # What the README's chain never uses stays unloaded (on_demand.py): each worker
    # shares fewer pages, and one whose options use them loads them before its jail
    # (service._load_modules).
    stunnel.defer_unused(Options())
    from OpenSSL import SSL  # noqa: F401

    for name in _our_modules(stunnel3.__path__[0]):
        if not name.startswith("stunnel3.setup"):  # stunnel3-setup's: no session's
            try:
                importlib.import_module(name)
            except Exception as error:  # noqa: BLE001 - the worker meets it as stunnel would
                say(f"warning: unable to load {name}: {error}")
    from stunnel3 import tls
    from stunnel3.engine import tls_library, tls_warmup

    tls_warmup.warm_up(lambda text: say(f"warning: {text}"))  # OpenSSL's first-use work, shared
    tls.prepare_context()  # each worker's: one session-ticket key for all of them
    tls_library.openssl_text()  # each session logs it: found once, here
    _load_name_services()


def _our_modules(directory: str, package: str = "stunnel3") -> list[str]:
    """Every module of the package, sub-packages included (pkgutil would import inspect,
    which no session needs: ~1 MB the helper would map and every worker share)."""
    names = []
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if entry.endswith(".py") and entry != "__init__.py":
            names.append(f"{package}.{entry[:-3]}")
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            names += [f"{package}.{entry}", *_our_modules(path, f"{package}.{entry}")]
    return names


def _load_name_services() -> None:
    """The name service modules (nsswitch.conf) that a session's -s and -g look-ups load,
    loaded here once (libnss_systemd: ~0.3 ms per worker): a name no account has takes
    every source in turn."""
    import grp
    import pwd

    for look_up in (pwd.getpwnam, grp.getgrnam):
        try:
            look_up("stunnel3-warm.invalid")
        except KeyError:
            pass


def _cannot_take_descriptors() -> str | None:
    """Why pidfd_getfd(2) fails on a child of ours here, or None when it works."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - waits for its parent's probe
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    try:
        pidfd = os.pidfd_open(child)
        try:
            os.close(warm_worker.getfd(pidfd, read_end))
        finally:
            os.close(pidfd)
    except (OSError, warm_worker.Refused) as error:
        return f"{error} (Yama ptrace_scope 3, or a seccomp filter?)"
    finally:
        os.close(write_end)
        os.close(read_end)
        os.waitpid(child, 0)
    return None


class Rendezvous:
    """The directory's three files, made afresh; a live helper's are never touched."""

    def __init__(self, directory: str):
        self.paths = {name: os.path.join(directory, name) for name in FILES}
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as error:
            unix.fatal(PROG, f"create {directory}", error)
        info = os.stat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            unix.die(
                PROG, 111, f"unable to use {directory}: not a directory of ours, closed to others"
            )
        if self._live():
            unix.die(PROG, 111, f"unable to serve {directory}: a helper is running there")
        try:
            for name in FILES:
                self._unlink(name)
            os.mkfifo(self.paths["announce"], 0o600)
            os.mkfifo(self.paths["lifeline"], 0o600)
            self.announce = os.open(
                self.paths["announce"], os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
            )
            self.lifeline = os.open(self.paths["lifeline"], os.O_RDWR | os.O_CLOEXEC)
            self.inodes = {name: os.stat(self.paths[name]).st_ino for name in FILES[1:]}
            new = self.paths["helper"] + ".new"
            with open(new, "w", encoding="ascii") as file:
                file.write(f"{os.getpid()} {self.lifeline}\n")
            os.chmod(new, 0o644)
            os.replace(new, self.paths["helper"])
        except OSError as error:
            unix.fatal(PROG, f"set up {directory}", error)

    def _live(self) -> bool:
        try:
            with open(self.paths["helper"], encoding="ascii") as file:
                pid, fd = file.read(64).split()
            return os.path.samestat(
                os.stat(f"/proc/{pid}/fd/{fd}"), os.stat(self.paths["lifeline"])
            )
        except (OSError, ValueError):
            return False

    def _unlink(self, name: str) -> None:
        path = self.paths[name]
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
            unix.die(PROG, 111, f"unable to use {path}: neither a FIFO nor a file")
        os.unlink(path)

    def remove(self) -> None:
        """Our files (not another helper's, if one has taken the directory since)."""
        for name in FILES:
            try:
                if name == "helper" or os.lstat(self.paths[name]).st_ino == self.inodes[name]:
                    os.unlink(self.paths[name])
            except OSError:
                pass

    def close(self) -> None:
        for fd in (self.announce, self.lifeline):
            try:
                os.close(fd)
            except OSError:
                pass


class Session:
    """A live worker: its pid, its pidfd, its front's pidfd and reply pipe; the channel on
    which it hands PROG2 over (makesock.main's hand_over), PROG2 once it has, and the reply
    that waits for PROG2's end."""

    def __init__(self, pid: int, pidfd: int, front: int, reply: int, channel: int):
        self.pid, self.pidfd, self.front, self.reply = pid, pidfd, front, reply
        self.channel = channel
        self.kept: Kept | None = None
        self.answer: bytes | None = None  # the worker's status, written when PROG2 has gone


class Kept:
    """PROG2 of a makesock session, kept here as makesock's keeper kept it (children.py):
    its pid, pidfd, name, grace and the front's stderr for the warnings; `step` counts the
    signals sent since the session ended, `deadline` is when the next one is due."""

    def __init__(self, pid: int, pidfd: int, stderr: int, name: str, grace: float):
        self.pid, self.pidfd, self.stderr, self.name, self.grace = pid, pidfd, stderr, name, grace
        self.step = -1  # the session runs: nothing is due
        self.deadline = 0.0


class Helper:
    """The announcements, the live workers and their fronts, in one poll set."""

    def __init__(self, limit: int):
        self.limit = limit
        self.stopping = False
        self.rendezvous: Rendezvous | None = None
        self.pending = b""  # a part line of the announcements
        self.world = warm_worker.world()
        self.python = sys.executable
        self.workers: dict[int, Session] = {}  # a worker's pidfd: its session
        self.fronts: dict[int, Session] = {}  # a front's pidfd: its session
        self.channels: dict[int, Session] = {}  # a worker's hand-over channel: its session
        self.kept: dict[int, Session] = {}  # a kept PROG2's pidfd: its session
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)  # a signal makes poll return: the pipe is in it
        for signum in _STOP_SIGNALS:
            signal.signal(signum, lambda signum, frame: None)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nothing to reload: imports are code
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # never SIG_IGN: we want the statuses
        self.poller = select.poll()
        self.poller.register(self.wake_r, select.POLLIN)
        self.closed: set[int] = set()
        self.ticket_key_made = time.monotonic()  # _preload made the first (tls.prepare_context)

    def listen(self, rendezvous: Rendezvous) -> None:
        self.rendezvous = rendezvous
        self.poller.register(rendezvous.announce, select.POLLIN)

    def stop_listening(self) -> None:
        if self.rendezvous is not None:
            self.poller.unregister(self.rendezvous.announce)
            self.rendezvous.close()  # the lifeline's end: every waiting front goes direct

    def turn(self) -> None:
        self.closed = set()  # this turn's: a stale event must not reach a new owner of its fd
        due = [session.kept.deadline for session in self.kept.values()
               if session.kept is not None and session.kept.step >= 0]  # fmt: skip
        timeout = max(0.0, min(due) - time.monotonic()) * 1000 + 1 if due else None
        for fd, _ in self.poller.poll(timeout):
            if fd in self.closed:
                continue
            if fd == self.wake_r:
                self._signals()
            elif self.rendezvous is not None and fd == self.rendezvous.announce:
                self._announcements()
            elif fd in self.workers:
                self._ended(self.workers[fd])
            elif fd in self.fronts:
                self._front_ended(self.fronts[fd])
            elif fd in self.channels:
                self._handed_over(self.channels[fd])
            elif fd in self.kept:
                self._kept_ended(self.kept[fd])
        if due:
            now = time.monotonic()
            for session in list(self.kept.values()):
                if (
                    session.kept is not None
                    and 0 <= session.kept.step
                    and session.kept.deadline <= now
                ):
                    self._next_step(session)

    def _signals(self) -> None:
        try:
            got = os.read(self.wake_r, 64)
        except BlockingIOError:
            return
        if _STOP_SIGNALS & set(got):
            self.stopping = True

    def _announcements(self) -> None:
        assert self.rendezvous is not None
        try:
            data = os.read(self.rendezvous.announce, 65536)
        except BlockingIOError:
            return
        *lines, self.pending = (self.pending + data).split(b"\n")
        self.pending = self.pending[-64:]
        for line in lines:
            words = line.split()
            if len(words) == 2 and all(w.isdigit() and len(w) < 11 for w in words):
                self._serve(int(words[0]), int(words[1]))

    def _serve(self, pid: int, reply: int) -> None:
        try:
            front = warm_worker.identify(pid, reply, self.python)
        except warm_worker.Refused as refusal:
            if refusal.front is None:
                say(f"warning: ignored an announcement: {refusal}")
                return
            say(f"warning: refused pid {pid}: {refusal}")
            _answer(refusal.front, b"N\n")
            refusal.front.close()
            return
        try:
            if len(self.workers) >= self.limit:
                raise warm_worker.Refused(f"{self.limit} sessions already")
            warm_worker.take(front, self.world)
            self._start_worker(front)
        except (warm_worker.Refused, OSError) as refusal:
            say(f"warning: refused pid {pid}: {refusal}")
            if getattr(refusal, "answer", True):
                _answer(front, b"N\n")
        finally:
            front.close()

    def _start_worker(self, front: warm_worker.Front) -> None:
        if time.monotonic() - self.ticket_key_made > TICKET_KEY_SECONDS:
            from stunnel3 import tls

            tls.prepare_context(renew=True)  # a new session-ticket key for the next workers
            tls.forget_contexts()
            self.ticket_key_made = time.monotonic()
        _keep_context(front)
        reply = _open_reply(front)
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        channel, worker_channel = ours.detach(), theirs.detach()  # close-on-exec, both
        try:
            if warm_worker.exited(front.watcher):
                # It no longer waits: it read its reply pipe before we held it (EOF).
                raise warm_worker.Refused(f"pid {front.pid} stopped waiting", answer=False)
            # Until the child has dropped our handlers and wake-up pipe, no signal may reach them.
            _signal.pthread_sigmask(_signal.SIG_BLOCK, _STOP_SIGNALS)
            try:
                _flush()
                worker = os.fork()
                if worker == 0:
                    self._become_worker(front, reply, worker_channel)
            finally:
                _signal.pthread_sigmask(_signal.SIG_UNBLOCK, _STOP_SIGNALS)
        except BaseException:
            os.close(reply)
            os.close(channel)
            raise
        finally:
            os.close(worker_channel)
        try:
            pidfd = os.pidfd_open(worker)
        except OSError:
            os.kill(worker, signal.SIGKILL)  # untracked, it could not be reported: never run it
            os.waitpid(worker, 0)
            os.close(reply)
            os.close(channel)
            raise
        _kill_watcher(front)  # the front reads its reply pipe: T, once the worker is it
        session = Session(worker, pidfd, os.dup(front.pidfd), reply, channel)
        self.workers[pidfd] = session
        self.fronts[session.front] = session
        self.channels[channel] = session
        self.poller.register(pidfd, select.POLLIN)
        self.poller.register(session.front, select.POLLIN)
        self.poller.register(channel, select.POLLIN)

    def _ended(self, session: Session) -> None:
        """A worker ended: its status to its front (the worker may have said it already)."""
        del self.workers[session.pidfd]
        self._forget(session.pidfd)
        _, status = os.waitpid(session.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        session.answer = b"X%d\n" % code if code >= 0 else b"K%d\n" % -code
        if session.front in self.fronts:
            del self.fronts[session.front]
            self._forget(session.front)
        if session.channel in self.channels:
            self._handed_over(session)  # its end, if it is not read yet: the session's end
        if session.kept is None:
            self._answer(session)

    def _answer(self, session: Session) -> None:
        """The worker's status to its front, once PROG2 (if we keep one) has gone."""
        if session.answer is not None and session.kept is None:
            _write(session.reply, session.answer)
            os.close(session.reply)
            session.answer = None

    def _handed_over(self, session: Session) -> None:
        """The worker's channel: PROG2 handed over (pid, grace, name; pidfd and stderr), or
        its end, which is the session's (makesock.end_session closed it, or the worker is
        gone): PROG2 has had its EOF, and its grace starts."""
        channel = socket.socket(fileno=session.channel)
        try:
            data, fds, _, _ = socket.recv_fds(channel, 4096, 2)
        except OSError:
            data, fds = b"", []
        finally:
            channel.detach()
        words = data.split(b" ", 2)
        if len(fds) == 2 and len(words) == 3 and session.kept is None:
            pidfd, stderr = fds
            name = os.fsdecode(words[2])
            session.kept = Kept(int(words[0]), pidfd, stderr, name, float(words[1]))
            self.kept[pidfd] = session
            self.poller.register(pidfd, select.POLLIN)
            return
        for fd in fds:
            os.close(fd)
        del self.channels[session.channel]
        self._forget(session.channel)
        kept = session.kept
        if kept is not None and kept.step < 0:
            kept.step, kept.deadline = 0, time.monotonic() + kept.grace

    def _next_step(self, session: Session) -> None:
        """PROG2 did not exit in time: SIGTERM, then SIGKILL, each said on the front's
        stderr as makesock's keeper says it; after SIGKILL's grace, it is the kernel's."""
        kept = session.kept
        assert kept is not None
        if kept.step >= 2:
            self._kept_ended(session)  # stuck in the kernel: not ours to wait for any more
            return
        signum, name = children.SIGNALS[kept.step]
        try:
            os.write(kept.stderr, makesock.warning(kept.name, kept.pid, kept.grace, name))
        except OSError:
            pass
        try:
            signal.pidfd_send_signal(kept.pidfd, signum)
        except ProcessLookupError:
            pass
        kept.step, kept.deadline = kept.step + 1, time.monotonic() + kept.grace

    def _kept_ended(self, session: Session) -> None:
        """PROG2 has gone: the front may have its status now."""
        kept = session.kept
        assert kept is not None
        del self.kept[kept.pidfd]
        self._forget(kept.pidfd)
        os.close(kept.stderr)
        session.kept = None
        self._answer(session)

    def _front_ended(self, session: Session) -> None:
        """The front is gone (SIGKILL): so is its session, as 3.22 ends on SIGTERM."""
        del self.fronts[session.front]
        self._forget(session.front)
        try:
            signal.pidfd_send_signal(session.pidfd, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _forget(self, fd: int) -> None:
        self.poller.unregister(fd)
        os.close(fd)
        self.closed.add(fd)

    def _become_worker(self, front: warm_worker.Front, reply: int, channel: int) -> None:
        """In the forked child: drop the helper's part, become the front, run; never returns."""
        global _log_fd
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in _STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            _signal.pthread_sigmask(_signal.SIG_UNBLOCK, _STOP_SIGNALS)
            reply, _log_fd, channel = warm_worker.become(front, [reply, os.dup(2), channel])
            os.write(reply, b"T %d\n" % os.getpid())  # from here the session is ours
            os.close(_log_fd)
            _log_fd = None  # from here, stderr is the front's and the log is stunnel's
            status = _run(front, channel)
            os.write(reply, b"X%d\n" % (status & 0xFF))
        except BaseException as error:  # noqa: BLE001 - a front must never see us crash
            say(f"warning: worker for pid {front.pid}: {type(error).__name__}: {error}")
        finally:
            _flush()
            os._exit(status & 0xFF)


def _keep_context(front: warm_worker.Front) -> None:
    """The TLS context the front's stunnel will make, configured here first, where every
    later worker shares it (tls.keep_context): its pem at the path the jail will show it."""
    args = _stunnel_args(front)
    if args is None:
        return
    from stunnel3 import tls
    from stunnel3.options import OptionError, parse

    try:
        options = parse(args)
    except OptionError:
        return  # the worker says it
    if options.daemon is not None:
        return  # the daemon's context is its own, made once
    where = f"/proc/self/fd/{front.cwd}"  # the front's working directory
    pem = options.pem or "stunnel.pem"
    if chroot.jail_first(options) and options.chroot_dir is not None:
        where = os.path.join(where, options.chroot_dir)
        pem = pem.lstrip("/")  # inside the jail, from its / (chroot.enter_jail: chdir /)
    tls.keep_context(options, os.path.join(where, pem))


def _stunnel_args(front: warm_worker.Front) -> list[str] | None:
    """The arguments of the stunnel this front will run: its own, or makesock's PROG1's."""
    argv = [os.fsdecode(arg) for arg in front.argv]
    if front.prog == b"stunnel":
        return argv[1:]
    words = argv[1:]  # makesock's plain form (its options and errors are the worker's)
    if not words or words[0].startswith("-") or makesock.SEPARATOR not in words[1:]:
        return None
    first = words[: words.index(makesock.SEPARATOR, 1)]
    return first[1:] if os.path.basename(first[0]) == "stunnel" else None


def _run(front: warm_worker.Front, channel: int) -> int:
    """The front's program, as its Python would have run it; its exit status. makesock
    hands its PROG2 over to us on channel (the helper keeps it: no keeper is forked)."""
    from stunnel3 import log

    log.show_pid(front.pid)  # administrators match log lines to tcpserver's "pid N"
    argv = [os.fsdecode(arg) for arg in front.argv]
    proctitle.set_title(argv)  # ps, pidof, pgrep -x: the front's program, not the helper
    try:
        if front.prog == b"makesock":
            return makesock.main(
                argv, lambda pid, pidfd, name: _hand_over(channel, pid, pidfd, name)
            )
        os.close(channel)  # stunnel's own programs are its own to end (children.py)
        from stunnel3 import stunnel

        return stunnel.main(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    finally:
        _flush()


def _hand_over(channel: int, pid: int, pidfd: int, name: str) -> int:
    """In the worker: PROG2's pidfd and our stderr (the front's) to the helper, with its
    pid, its grace and its name; the channel is the lifeline makesock closes at the end."""
    from stunnel3.engine import bounds

    words = b"%d %r " % (pid, bounds.backend_exit()) + os.fsencode(name)
    sock = socket.socket(fileno=channel)
    try:
        socket.send_fds(sock, [words], [pidfd, 2])
    except OSError:
        pass  # the helper is gone: PROG2 is left alone after the session (docs/warm.md)
    finally:
        sock.detach()
    return channel


def _open_reply(front: warm_worker.Front) -> int:
    """The write side of the front's reply pipe (its read side, reopened through /proc)."""
    fd = os.open(f"/proc/{front.pid}/fd/{front.reply}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode) or warm_worker.exited(front.pidfd):
        os.close(fd)
        raise warm_worker.Refused(f"pid {front.pid}: no reply pipe", answer=False)
    return fd


def _answer(front: warm_worker.Front, word: bytes) -> None:
    """A refusal: the front runs the direct path."""
    try:
        reply = _open_reply(front)
    except (OSError, warm_worker.Refused):
        return
    _write(reply, word)
    os.close(reply)
    _kill_watcher(front)


def _kill_watcher(front: warm_worker.Front) -> None:
    # SIGPIPE: dash says nothing of a child that died of it.
    try:
        signal.pidfd_send_signal(front.watcher, signal.SIGPIPE)
    except OSError:
        pass


def _write(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)  # non-blocking, and a line fits any pipe
    except OSError:
        pass  # the front is gone


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def say(text: str) -> None:
    """One line on the helper's stderr, written at once (workers are forked processes)."""
    if _log_fd is None:
        return
    try:
        os.write(_log_fd, f"{PROG}: {text}\n".encode(errors="replace"))
    except OSError:
        pass

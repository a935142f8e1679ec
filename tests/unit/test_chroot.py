"""stunnel3.chroot: ids resolved before the jail, the jail entered in a checked order, the seed.

Every test that chroots or drops privileges does it in a forked child, so this
process keeps root and its root directory; the child sends back what it saw.
"""

import errno
import grp
import os
import pickle
import pwd
import select
import signal
import sys
import time

import pytest
from conftest import RecordingLog

from stunnel3 import chroot
from stunnel3.chroot import Ids
from stunnel3.engine.errors import SetupError
from stunnel3.options import Address, Options


def in_child(work, timeout=10.0):
    """Run work() in a forked child; its return value, or ("raised", type, text)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        try:
            result = work()
        except BaseException as error:  # noqa: B036 - everything goes back to the parent
            result = ("raised", type(error).__name__, getattr(error, "text", str(error)))
        try:
            os.write(write_end, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(write_end)
    data, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([read_end], [], [], deadline - time.monotonic())[0]:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(read_end)
        if not data:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert data, "the child sent nothing back"
    return pickle.loads(data)


def free_id() -> int:
    """A number that is neither a uid nor a gid on this machine."""
    for number in range(45123, 46000):
        try:
            pwd.getpwuid(number)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(number)
        except KeyError:
            return number
    raise AssertionError("no free id")


def inetd(**fields) -> Options:
    return Options(switch_ids_now=True, **fields)


def identity():
    return os.getresuid(), os.getresgid(), os.getgroups()


# --- resolve_ids: names and numbers, before the jail -------------------------------------


def test_names_resolve_to_the_account_numbers():
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    assert chroot.resolve_ids(inetd(setuid_user="nobody", setgid_group=group)) == Ids(
        nobody.pw_uid, nobody.pw_gid
    )


def test_user_without_group_takes_the_primary_group():
    nobody = pwd.getpwnam("nobody")
    assert chroot.resolve_ids(inetd(setuid_user="nobody")) == Ids(nobody.pw_uid, nobody.pw_gid)
    assert chroot.resolve_ids(inetd(setuid_user=str(nobody.pw_uid))).gid == nobody.pw_gid


def test_numbers_without_an_account_are_taken_as_they_are():
    number = free_id()
    options = inetd(setuid_user=str(number), setgid_group=str(number))
    assert chroot.resolve_ids(options) == Ids(number, number)


def test_number_without_account_and_without_group_is_refused():
    number = free_id()
    with pytest.raises(SetupError) as raised:
        chroot.resolve_ids(inetd(setuid_user=str(number)))
    assert raised.value.text == f"Failed to get GID for user {number}: no such account, use -g"


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"setuid_user": "no-such-user-x7"}, "Failed to get UID for user no-such-user-x7"),
        ({"setuid_user": "45abc"}, "Failed to get UID for user 45abc"),
        (
            {"setuid_user": "nobody", "setgid_group": "no-such-group-x7"},
            "Failed to get GID for group no-such-group-x7",
        ),
        ({"setgid_group": "-1"}, "Failed to get GID for group -1"),
    ],
)
def test_unknown_names_are_refused_in_3_22_words(fields, text):
    with pytest.raises(SetupError) as raised:
        chroot.resolve_ids(inetd(**fields))
    assert raised.value.text == text


def test_group_alone_is_resolved():
    assert chroot.resolve_ids(inetd(setgid_group="0")) == Ids(None, 0)


def test_ids_are_not_resolved_in_inetd_mode_without_i():
    options = Options(setuid_user="no-such-user-x7", setgid_group="no-such-group-x7")
    assert chroot.resolve_ids(options) == Ids(None, None)


def test_ids_apply_in_daemon_mode_without_i():
    options = Options(daemon=Address(None, 8443), setuid_user="nobody")
    assert chroot.resolve_ids(options).uid == pwd.getpwnam("nobody").pw_uid


# --- enter_jail: the order, the checks, the failures -----------------------------------


@pytest.fixture
def jail(tmp_path):
    root = tmp_path / "jail"
    root.mkdir()
    (root / "stunnel.pem").write_text("pem\n")
    (root / "seed").write_bytes(b"s" * 100)
    return root


def test_enter_jail_chroots_and_drops_in_order(jail):
    number = free_id()
    options = inetd(chroot_dir=str(jail), setuid_user=str(number), setgid_group=str(number))
    log = RecordingLog()

    def work():
        steps = []
        for name in ("chroot", "chdir", "setgroups", "setgid", "setuid"):
            real = getattr(os, name)

            def record(*args, _name=name, _real=real):
                steps.append((_name, args))
                return _real(*args)

            setattr(os, name, record)
        chroot.enter_jail(options, chroot.resolve_ids(options), log)
        return steps, identity(), sorted(os.listdir("/")), os.getcwd(), log.lines

    steps, ids, listing, cwd, lines = in_child(work)
    assert steps == [
        ("chroot", (str(jail),)),
        ("chdir", ("/",)),
        ("setgroups", ([number],)),
        ("setgid", (number,)),
        ("setuid", (number,)),
    ]
    assert ids == ((number,) * 3, (number,) * 3, [number])
    assert listing == ["seed", "stunnel.pem"]
    assert cwd == "/"
    assert (
        7,
        f"Entered the jail: chroot to {jail}, gid {number} (groups [{number}]), uid {number}",
    ) in lines


def test_a_relative_jail_is_relative_to_the_working_directory(jail):
    options = inetd(chroot_dir="jail")

    def work():
        os.chdir(jail.parent)
        chroot.enter_jail(options, Ids(None, None), RecordingLog())
        return sorted(os.listdir("/"))

    assert in_child(work) == ["seed", "stunnel.pem"]


IGNORED = (
    "-s and -g are ignored in inetd mode without -i (as in 3.22): the TLS code runs as uid 0;"
    " add -i to switch before the first byte is read"
)


def test_without_i_in_inetd_mode_ids_are_ignored_with_a_warning(jail):
    options = Options(chroot_dir=str(jail), setuid_user="nobody", setgid_group="nogroup")
    log = RecordingLog()

    def work():
        chroot.warn_ignored_ids(options, log)
        chroot.enter_jail(options, chroot.resolve_ids(options), log)
        return identity(), sorted(os.listdir("/")), log.lines

    ids, listing, lines = in_child(work)
    assert ids[0] == (0, 0, 0)  # still root: 3.22 applied -s/-g in inetd mode only with -i
    assert listing == ["seed", "stunnel.pem"]  # -/ applies all the same
    assert lines[0] == (4, IGNORED)


@pytest.mark.parametrize(
    "options",
    [
        Options(),
        Options(setuid_user="nobody", switch_ids_now=True),
        Options(setgid_group="nogroup", daemon=Address(None, 25)),
    ],
)
def test_no_warning_when_ids_apply_or_none_were_asked_for(options):
    log = RecordingLog()
    chroot.warn_ignored_ids(options, log)
    assert log.lines == []


def test_no_line_from_the_jail_when_no_ids_were_asked_for(jail):
    log = RecordingLog()
    assert in_child(lambda: chroot.enter_jail(Options(), Ids(None, None), log) or log.lines) == []


def test_an_explicit_root_user_is_allowed_with_a_warning(jail):
    options = inetd(chroot_dir=str(jail), setuid_user="root")
    log = RecordingLog()

    def work():
        chroot.enter_jail(options, chroot.resolve_ids(options), log)
        return identity(), log.lines

    ids, lines = in_child(work)
    assert ids == ((0, 0, 0), (0, 0, 0), [0])
    assert (4, "Running as root (-s root): the jail does not hold root") in lines


def failing(name, code):
    def fail(*args):
        raise OSError(code, os.strerror(code))

    return name, fail


STEPS = ["chroot", "chdir", "setgroups", "setgid", "setuid"]


@pytest.mark.parametrize(
    ("patch", "text", "reached"),
    [
        (None, "chroot {jail}/missing: No such file or directory (2)", 0),
        (failing("chroot", errno.EPERM), "chroot {jail}: Operation not permitted (1)", 1),
        (failing("chdir", errno.EACCES), "chdir /: Permission denied (13)", 2),
        (failing("setgroups", errno.EPERM), "setgroups: Operation not permitted (1)", 3),
        (failing("setgid", errno.EINVAL), "setgid: Invalid argument (22)", 4),
        (failing("setuid", errno.EAGAIN), "setuid: Resource temporarily unavailable (11)", 5),
    ],
)
def test_a_failing_step_stops_everything_after_it(jail, patch, text, reached):
    number = free_id()
    directory = str(jail / "missing") if patch is None else str(jail)
    options = inetd(chroot_dir=directory, setuid_user=str(number), setgid_group=str(number))

    def work():
        steps = []
        for name in STEPS:
            real = patch[1] if patch and patch[0] == name else getattr(os, name)

            def record(*args, _name=name, _real=real):
                steps.append(_name)
                return _real(*args)

            setattr(os, name, record)
        try:
            chroot.enter_jail(options, chroot.resolve_ids(options), RecordingLog())
        except SetupError as error:
            return "raised", error.text, steps, os.getresuid()
        return "served", steps

    assert in_child(work) == ("raised", text.format(jail=jail), STEPS[:reached], (0, 0, 0))


def test_a_step_that_does_nothing_is_caught_by_the_check(jail):
    number = free_id()
    options = inetd(setuid_user=str(number), setgid_group=str(number))

    def work():
        os.setuid = lambda uid: None
        try:
            chroot.enter_jail(options, chroot.resolve_ids(options), RecordingLog())
        except SetupError as error:
            return error.text
        return "served"

    assert in_child(work) == f"setuid: uids are (0, 0, 0), not {number}"


def test_a_file_is_not_a_jail(jail):
    options = inetd(chroot_dir=str(jail / "seed"))

    def work():
        try:
            chroot.enter_jail(options, Ids(None, None), RecordingLog())
        except SetupError as error:
            return error.text
        return "served"

    assert in_child(work) == f"chroot {jail}/seed: Not a directory (20)"


def test_nothing_is_imported_inside_the_jail(jail):
    """The jail holds no Python: enter_jail and seed_random must import nothing."""
    number = free_id()
    os.chown(jail / "seed", 0, number)
    os.chmod(jail / "seed", 0o660)
    options = inetd(
        chroot_dir=str(jail),
        setuid_user=str(number),
        setgid_group=str(number),
        rand_file="seed",
        egd_socket="/egd",
    )

    def work():
        before = set(sys.modules)
        log = RecordingLog()
        chroot.enter_jail(options, chroot.resolve_ids(options), log)
        chroot.seed_random(options, log)
        return sorted(set(sys.modules) - before), os.stat("/seed").st_size

    assert in_child(work) == ([], 1024)


# --- seed_random: -R, -B, -W, -E -----------------------------------------------------


@pytest.fixture
def seed(tmp_path):
    path = tmp_path / "seed"
    path.write_bytes(bytes(range(200)))
    return path


@pytest.fixture
def rand_calls(monkeypatch):
    """Wrap the real libcrypto: record what RAND_add is given, keep RAND_status real."""
    calls = []
    real = chroot._libcrypto

    class Recorder:
        def RAND_add(self, data, size, entropy):
            calls.append((bytes(data), size, entropy))
            real.RAND_add(data, size, entropy)

        def RAND_status(self):
            return real.RAND_status()

    monkeypatch.setattr(chroot, "_libcrypto", Recorder())
    return calls


SEEDED = [
    (7, "RAND_status claims sufficient entropy for the PRNG"),
    (6, "PRNG seeded successfully"),
]


def test_seed_is_read_fed_to_openssl_and_rewritten(seed, rand_calls):
    log = RecordingLog()
    chroot.seed_random(Options(rand_file=str(seed)), log)
    assert rand_calls == [(bytes(range(64)), 64, 64.0)]
    fresh = seed.read_bytes()
    assert len(fresh) == 1024 and fresh[:200] != bytes(range(200))
    assert log.lines == [
        (7, f"Snagged 64 random bytes from {seed}"),
        (7, f"Wrote 1024 new random bytes to {seed}"),
        *SEEDED,
    ]


def test_rand_bytes_bounds_the_read(seed, rand_calls):
    chroot.seed_random(
        Options(rand_file=str(seed), rand_bytes=16, rand_no_write=True), RecordingLog()
    )
    assert rand_calls == [(bytes(range(16)), 16, 16.0)]
    chroot.seed_random(Options(rand_file=str(seed), rand_bytes=500), RecordingLog())
    assert len(rand_calls[1][0]) == 200
    chroot.seed_random(Options(rand_file=str(seed), rand_bytes=-1), RecordingLog())
    assert len(rand_calls[2][0]) == 1024  # -B below 0: the whole file (rewritten above)


def test_no_write_keeps_the_seed(seed, rand_calls):
    log = RecordingLog()
    chroot.seed_random(Options(rand_file=str(seed), rand_no_write=True), log)
    assert seed.read_bytes() == bytes(range(200))
    assert not any("Wrote" in text for _, text in log.lines)
    assert len(rand_calls) == 1


def test_the_rewrite_is_1024_bytes_over_the_start_as_rand_write_file(tmp_path):
    big, empty = tmp_path / "big", tmp_path / "empty"
    big.write_bytes(b"x" * 5000)
    empty.write_bytes(b"")
    big.chmod(0o640)
    log = RecordingLog()
    chroot.seed_random(Options(rand_file=str(big)), log)
    chroot.seed_random(Options(rand_file=str(empty)), log)
    data = big.read_bytes()
    assert len(data) == 5000 and data[1024:] == b"x" * 3976 and b"x" * 64 not in data[:1024]
    assert big.stat().st_mode & 0o777 == 0o640  # left alone: the stunnel group reads it
    assert len(empty.read_bytes()) == 1024
    assert (6, f"Unable to retrieve any random data from {empty}") in log.lines


def test_a_missing_seed_is_passed_over_in_silence_and_not_created(tmp_path, rand_calls):
    log = RecordingLog()
    chroot.seed_random(Options(rand_file=str(tmp_path / "none")), log)
    assert not (tmp_path / "none").exists()
    assert rand_calls == []
    assert log.lines == SEEDED  # 3.22 stat()ed it and went on


def test_without_r_the_default_seed_file_is_home_rnd(tmp_path, monkeypatch, rand_calls):
    """OpenSSL's RAND_file_name: $RANDFILE, else $HOME/.rnd (3.22 tried it without -R)."""
    monkeypatch.delenv("RANDFILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".rnd").write_bytes(b"r" * 10)
    log = RecordingLog()
    chroot.seed_random(Options(), log)
    assert log.lines[:2] == [
        (7, f"Snagged 10 random bytes from {tmp_path}/.rnd"),
        (7, f"Wrote 1024 new random bytes to {tmp_path}/.rnd"),
    ]
    monkeypatch.setenv("RANDFILE", str(tmp_path / "elsewhere"))
    log = RecordingLog()
    chroot.seed_random(Options(), log)
    assert log.lines == SEEDED


def test_a_read_only_seed_warns_and_goes_on(jail):
    """As the jail's user: the seed is group-readable (README 6e), not writable."""
    number = free_id()
    os.chown(jail / "seed", 0, number)
    os.chmod(jail / "seed", 0o440)
    options = inetd(chroot_dir=str(jail), setuid_user=str(number), setgid_group=str(number))
    options_seed = Options(rand_file="seed")

    def work():
        log = RecordingLog()
        chroot.enter_jail(options, chroot.resolve_ids(options), log)
        chroot.seed_random(options_seed, log)
        return log.lines[1:]

    assert in_child(work) == [
        (7, "Snagged 64 random bytes from seed"),
        (4, "Failed to write strong random data to seed - may be a permissions or seeding problem"),
        *SEEDED,
    ]
    assert (jail / "seed").read_bytes() == b"s" * 100


def test_an_unreadable_seed_is_said_and_the_session_goes_on(jail):
    number = free_id()
    os.chmod(jail / "seed", 0o600)  # root's alone
    options = inetd(chroot_dir=str(jail), setuid_user=str(number), setgid_group=str(number))

    def work():
        log = RecordingLog()
        chroot.enter_jail(options, chroot.resolve_ids(options), log)
        chroot.seed_random(Options(rand_file="seed"), log)
        return log.lines[1:]

    lines = in_child(work)
    assert lines[0] == (6, "Unable to retrieve any random data from seed")
    assert lines[1][0] == 4 and lines[2:] == SEEDED


def test_egd_is_never_asked(rand_calls):
    """3.22 on OpenSSL 3 asked the EGD only while the generator was unseeded: never."""
    log = RecordingLog()
    chroot.seed_random(Options(egd_socket="/var/run/egd-pool", rand_file="/nonexistent"), log)
    assert log.lines == SEEDED


def test_an_unseeded_generator_is_warned_about_as_322_did(monkeypatch):
    class Unseeded:
        def RAND_status(self):
            return 0

    monkeypatch.setattr(chroot, "_libcrypto", Unseeded())
    log = RecordingLog()
    chroot.seed_random(Options(rand_file="/nonexistent"), log)
    assert log.lines == [(4, "PRNG may not have been seeded with enough random bytes")]


def test_inherited_descriptors_are_closed_but_the_modes_own():
    """Item 7 of issue #18: what the starting process left open stays outside the jail;
    -F's descriptor, 0-2 and what our code opened itself (close-on-exec) stay."""

    def work():
        inherited = os.open("/dev/null", os.O_RDONLY)
        os.set_inheritable(inherited, True)  # as a caller's descriptor comes to us
        plaintext = os.dup(inherited)
        os.set_inheritable(plaintext, True)
        ours = os.open("/dev/null", os.O_RDONLY)  # Python's own: close-on-exec
        log = RecordingLog()
        chroot.close_inherited(Options(plaintext_fd=plaintext), log)

        def is_open(fd):
            try:
                os.fstat(fd)
            except OSError:
                return False
            return True

        return [is_open(fd) for fd in (0, 1, 2, inherited, plaintext, ours)], inherited, log.lines

    states, inherited, lines = in_child(work)
    assert states == [True, True, True, False, True, True]
    closed = lines[0][1].removeprefix("Closed inherited descriptors: ").split(", ")
    assert lines[0][0] == 7 and str(inherited) in closed


def test_stunnel3_setup_never_writes_s_or_g_without_i():
    """Item 12 of issue #18: the run files stunnel3-setup writes switch ids at once."""
    import shlex

    from stunnel3.options import parse
    from stunnel3.setup import scripts as setup_scripts

    variables = {"PATH": "/opt/x/bin:/usr/bin:/bin", "IP": "127.0.0.1", "PORT": "2525"}
    text = setup_scripts.render_run(variables)
    lines = [line for line in text.splitlines() if line.split()[:1] == ["stunnel"]]
    assert len(lines) == 1, "one stunnel line in the run script"
    for line in lines:
        line = line.rstrip(" \\").replace('"$SSLUID"', "451").replace('"$SSLGID"', "451")
        options = parse(shlex.split(line)[1:])
        assert options.setuid_user and options.setgid_group and chroot.ids_apply(options)
    assert "-i" in setup_scripts.RUN_SCRIPT

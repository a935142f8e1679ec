"""The jail: sg2's -/ (chroot), -s/-g (uid/gid), -i, and the -R/-B/-W/-E seed.

Rules of this file (SPEC §2, "Order of operations"; docs/jail.md):

- `resolve_ids` runs before the chroot, while /etc/passwd and /etc/group are
  reachable: the jail holds neither. The group first (3.22's order). A name
  is looked up first and a string of digits is then taken as a number (sg2:
  `-s 451 -g 451` needs no account).
- -s without -g takes the account's primary group. 3.22 kept gid 0 and root's
  supplementary groups in that case; we never do. A number with no account and
  no -g is refused: there is no group to take.
- -s/-g apply in daemon mode, and in inetd mode only with -i (sg2); otherwise
  they are ignored, as by 3.22, but not in silence: `warn_ignored_ids` says at
  start-up that the TLS code runs as root (3.22 said nothing). -/ applies in
  every mode.
- `close_inherited` runs first of all: a descriptor this process inherited
  (not close-on-exec: every one our code opens is) and the mode does not need
  (0, 1, 2 and -F's) is closed, so that nothing from outside follows us into
  the jail.
- `enter_jail` runs in one fixed order, each step checked: chroot(dir),
  chdir("/") (`enter_root`), setgroups([gid]), setgid(gid), setuid(uid)
  (`drop_ids`); then the result is verified (the root directory, getresuid,
  getresgid, getgroups, no way back to uid 0). A daemon without -i takes the
  two halves apart, with its pem read between them (daemon.py). Any failure is
  a SetupError `<what>: <strerror> (<errno>)` (errors.py); the caller exits 1
  before it serves a byte.
- Nothing is imported after the chroot: the jail holds no Python. Everything
  this module needs is imported here, at the top.
- `seed_random` is 3.22's init_prng on OpenSSL 3: the -R file (else $RANDFILE
  or $HOME/.rnd), fed to OpenSSL's generator (the one pyOpenSSL uses:
  cryptography's binding, RAND_add), then 1024 fresh bytes over its start
  unless -W; inside the jail, as the unprivileged user, when there is one.
"""

import errno
import grp
import os
import pwd
import stat

from stunnel3.engine.errors import SetupError, os_error
from stunnel3.options import Options
from stunnel3.support.record import record

try:  # the libcrypto pyOpenSSL runs on; its generator is the one that must get the seed
    from cryptography.hazmat.bindings.openssl.binding import Binding

    _libcrypto = Binding.lib
except ImportError:  # pragma: no cover - cryptography is a dependency of pyOpenSSL
    _libcrypto = None

# RAND_write_file writes 1024 bytes, whatever the file held (RAND_BUF_SIZE).
SEED_WRITE = 1024
# -B below 0 meant "the whole file" to RAND_load_file; bound it all the same.
SEED_READ_MAX = 1 << 20


@record(frozen=True)
class Ids:
    uid: int | None  # -s, resolved to a number before the jail
    gid: int | None  # -g, or the primary group of the -s account


def ids_apply(options: Options) -> bool:
    """sg2: -s/-g are applied in daemon mode (after bind), in inetd mode only with -i."""
    return options.daemon is not None or options.switch_ids_now


def jail_first(options: Options) -> bool:
    """sg2: the jail comes before the pem and the seed (they are paths inside it)."""
    if options.daemon is not None:
        return options.switch_ids_now
    return options.chroot_dir is not None or options.switch_ids_now


def _number(text: str) -> int | None:
    # "digits only": 3.22's atoi() read "45abc" as 45; a typo must not become a uid
    return int(text) if text.isascii() and text.isdigit() else None


def _user(name: str) -> tuple[int, int | None]:
    """-s -> (uid, primary gid or None when the number has no account)."""
    try:
        account = pwd.getpwnam(name)
        return account.pw_uid, account.pw_gid
    except KeyError:
        pass
    uid = _number(name)
    if uid is None:
        raise SetupError(f"Failed to get UID for user {name}")
    try:
        return uid, pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid, None


def _group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        pass
    gid = _number(name)
    if gid is None:
        raise SetupError(f"Failed to get GID for group {name}")
    return gid


def resolve_ids(options: Options) -> Ids:
    """Names -> numbers, while /etc/passwd and /etc/group are still reachable.

    The group first, as 3.22 looked it up first: its error wins."""
    if not ids_apply(options):
        return Ids(None, None)  # enter_jail says they are ignored
    uid = primary = gid = None
    if options.setgid_group is not None:
        gid = _group(options.setgid_group)
    if options.setuid_user is not None:
        uid, primary = _user(options.setuid_user)
        if gid is None:
            if primary is None:
                raise SetupError(
                    f"Failed to get GID for user {options.setuid_user}: no such account, use -g"
                )
            gid = primary
    return Ids(uid, gid)


def _step(what: str, call, *args) -> None:
    try:
        call(*args)
    except OSError as error:
        raise os_error(what, error) from None


def enter_jail(options: Options, ids: Ids, log) -> None:
    """chroot(-/) + chdir("/"), then setgroups([gid]), setgid, setuid; each step checked."""
    enter_root(options, log)
    drop_ids(options, ids, log)


def enter_root(options: Options, log) -> None:
    """-/ alone: chroot(dir) and chdir("/"), checked (a daemon's first half of the jail)."""
    jail = options.chroot_dir
    if jail is None:
        return
    before = _root_identity(jail)  # the log has read the time zone already (log.Log)
    _step(f"chroot {jail}", os.chroot, jail)
    _step("chdir /", os.chdir, "/")
    if _root_identity("/") != before:
        raise SetupError(f"chroot {jail}: / is not the jail after chroot")


def warn_ignored_ids(options: Options, log) -> None:
    """-s/-g without -i in inetd mode: 3.22's rule ignores them, in silence; we say so."""
    if ids_apply(options) or not (options.setuid_user or options.setgid_group):
        return
    log.warning(
        f"-s and -g are ignored in inetd mode without -i (as in 3.22): the TLS code runs "
        f"as uid {os.geteuid()}; add -i to switch before the first byte is read"
    )


def close_inherited(options: Options, log) -> None:
    """Close what this process inherited above 2 but -F's fd (see the top)."""
    keep = {0, 1, 2, options.plaintext_fd}
    try:
        candidates = sorted(int(name) for name in os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: look as far as a select()ing 3.22 could
        candidates = list(range(3, 1024))
    closed = []
    for fd in candidates:
        if fd in keep:
            continue
        try:
            if not os.get_inheritable(fd):
                continue  # ours (the log, syslog's socket, makesock's lifeline), or gone
            os.close(fd)
        except OSError:
            continue
        closed.append(str(fd))
    if closed:
        log.debug(f"Closed inherited descriptors: {', '.join(closed)}")


def drop_ids(options: Options, ids: Ids, log) -> None:
    """setgroups([gid]), setgid, setuid, each checked, then read back from the kernel."""
    if ids.gid is not None:
        _step("setgroups", os.setgroups, [ids.gid])
        _step("setgid", os.setgid, ids.gid)
    if ids.uid is not None:
        _step("setuid", os.setuid, ids.uid)
    _verify(ids)
    if options.chroot_dir is not None or options.switch_ids_now:  # sg2's jail: say it
        log.debug(_describe(options.chroot_dir, ids))
    if ids.uid == 0:
        log.warning(f"Running as root (-s {options.setuid_user}): the jail does not hold root")


def _root_identity(path: str) -> tuple[int, int]:
    try:
        info = os.stat(path)
    except OSError as error:
        raise os_error(f"chroot {path}", error) from None
    if not stat.S_ISDIR(info.st_mode):
        raise os_error(f"chroot {path}", OSError(errno.ENOTDIR, ""))
    return info.st_dev, info.st_ino


def _verify(ids: Ids) -> None:
    """Read the ids back from the kernel: a step that 'worked' but did not is still fatal."""
    if ids.gid is not None:
        if os.getresgid() != (ids.gid,) * 3:
            raise SetupError(f"setgid: gids are {os.getresgid()}, not {ids.gid}")
        if os.getgroups() != [ids.gid]:
            raise SetupError(f"setgroups: groups are {os.getgroups()}, not [{ids.gid}]")
    if ids.uid is not None:
        if os.getresuid() != (ids.uid,) * 3:
            raise SetupError(f"setuid: uids are {os.getresuid()}, not {ids.uid}")
        if ids.uid != 0 and _can_regain_root():
            raise SetupError(f"setuid: uid {ids.uid} can still become root")


def _can_regain_root() -> bool:
    try:
        os.setreuid(-1, 0)
    except OSError:
        return False
    return True


def _describe(jail: str | None, ids: Ids) -> str:
    said = []
    if jail is not None:
        said.append(f"chroot to {jail}")
    if ids.gid is not None:
        said.append(f"gid {ids.gid} (groups [{ids.gid}])")
    if ids.uid is not None:
        said.append(f"uid {ids.uid}")
    return "Entered the jail: " + ", ".join(said)


def seed_random(options: Options, log) -> None:
    """3.22's init_prng as it runs on OpenSSL 3: one seed file, then the PRNG's word.

    The -R file, else OpenSSL's default ($RANDFILE, else $HOME/.rnd), is read
    (inside the jail with -/) and rewritten unless -W; OpenSSL 3 then says it is
    seeded (it seeds itself from the kernel), so 3.22 looked no further: the
    EGD socket of -E is never asked, as in the real 3.22 on OpenSSL 3.
    """
    path = options.rand_file
    if path is None:
        path = os.environ.get("RANDFILE") or (
            os.path.join(os.environ["HOME"], ".rnd") if "HOME" in os.environ else None
        )
    if path:
        _add_rand_file(path, options.rand_bytes, not options.rand_no_write, log)
    if _libcrypto is not None and not _libcrypto.RAND_status():  # never on OpenSSL 3
        log.warning("PRNG may not have been seeded with enough random bytes")
        return
    log.debug("RAND_status claims sufficient entropy for the PRNG")
    log.info("PRNG seeded successfully")


def _add_rand_file(path: str, limit: int, rewrite: bool, log) -> None:
    """3.22's add_rand_file(): RAND_load_file(path, -B), then RAND_write_file(path).

    A file that is not there is passed over in silence, as 3.22's stat() did."""
    if not os.path.exists(path):
        return
    try:
        seed = _read_seed(path, limit if limit >= 0 else SEED_READ_MAX)
    except OSError:
        seed = b""
    if seed:
        if _libcrypto is not None:
            # entropy = bytes: the seed was written by a strong generator (ours or dd)
            _libcrypto.RAND_add(seed, len(seed), float(len(seed)))
        log.debug(f"Snagged {len(seed)} random bytes from {path}")
    else:
        log.info(f"Unable to retrieve any random data from {path}")
    if rewrite and _is_regular(path):
        _rewrite_seed(path, log)


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _read_seed(path: str, limit: int) -> bytes:
    # O_NONBLOCK: a FIFO named by -R must not hang the session
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _rewrite_seed(path: str, log) -> None:
    """RAND_write_file's way: SEED_WRITE bytes from the kernel over the file's start.

    In place (the jail is root's and read-only, so no temp file and rename),
    neither truncated nor made 0600 as OpenSSL does: the README's modes let
    the stunnel group read it."""
    try:
        # no O_CREAT: only a seed that is there is rewritten (the jail is read-only)
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = os.pwrite(fd, os.urandom(SEED_WRITE), 0)
        finally:
            os.close(fd)
    except OSError:
        log.warning(
            f"Failed to write strong random data to {path} - "
            "may be a permissions or seeding problem"
        )
        return
    log.debug(f"Wrote {written} new random bytes to {path}")

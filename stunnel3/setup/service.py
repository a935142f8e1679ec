"""stunnel3-setup: steps 3-7 of smtp-tls.README for one service directory.

Usage:
  stunnel3-setup [options] SERVICE_DIR
  stunnel3-setup -h | --help

Makes SERVICE_DIR a daemontools service for SMTP with STARTTLS: the `stunnel`
account and group and the `qmaild` account (when missing), the `ssl/` jail with
`stunnel.pem` and `seed` (owner root, group stunnel, u=rwX,g=rX,o=, as README
step 6e, and the seed g+w: stunnel rewrites it on every connection), `log/run`
with multilog, and `run` (compat/smtp-tls-run); and SERVICE_DIR/warm, the warm
helper's service. Running it again changes nothing that is already right; an
option left out keeps what the last run wrote (read back from run, log/run and
warm/), and a key, or a file someone edited, is never replaced without --force.

Options:
  --pem FILE        Install this key + certificate chain as ssl/stunnel.pem
                    (default: keep the one there, else generate a self-signed
                    certificate).
  --key-type TYPE   Key of a generated certificate: ec (P-256) or rsa (2048)
                    (default: ec).
  --hostname NAME   Name in a generated certificate (default: the first line
                    of /var/qmail/control/me, else this host's name).
  --ip ADDR         Address the run file listens on (default: 0, all).
  --port PORT       Port the run file listens on (default: smtp).
  --rules CDB       tcpserver's rules file (default: /etc/tcp.smtp.cdb).
  --smtpd PROG      The SMTP server behind the proxy
                    (default: /var/qmail/bin/qmail-smtpd).
  --path PATH       The run file's PATH (default: the directory of stunnel3's
                    programs, then the README's
                    /usr/local/bin:/var/qmail/bin:/usr/bin:/bin).
  --log-user USER   Account multilog runs as (default: qmaill if it exists,
                    else nobody).
  --warm            Make SERVICE_DIR/warm, the service of the warm helper,
                    stunnel3-warm (compat/stunnel3-warm-run; docs/warm.md),
                    which serves every connection from one process that has
                    loaded Python and OpenSSL once (default: on a first run).
  --no-warm         Make no SERVICE_DIR/warm (default: not on a first run).
  --no-accounts     Create no account: print the commands that would
                    (default: create the missing ones).
  --force           Replace ssl/stunnel.pem, run and log/run if they differ
                    (default: refuse, before any change).
  -h, --help        Show this text.
"""

import grp
import os
import pwd
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

from stunnel3.engine import tls_library
from stunnel3.setup import scripts as setup_scripts
from stunnel3.setup.host import (
    NO_SCAN_DIRECTORY,
    Refusal,
    check_backend_account,
    how_to_start,
    scan_directory,
)
from stunnel3.setup.pem import KEY_TYPES, Unusable, default_hostname, read_pem, self_signed
from stunnel3.setup.scripts import (
    LOG_RUN,
    RUN_SCRIPT,
    RUN_VARIABLES,
    WARM_RUN_SCRIPT,
    WARM_RUN_VARIABLES,
)
from stunnel3.support.fronts import FRONT_MARK

PROG = "stunnel3-setup"
USAGE = f"{PROG}: usage: {PROG} [options] SERVICE_DIR (try {PROG} --help)"
SEED_BYTES = 4096  # stunnel reads 64 (-B); the README's dd made far more than needed
NOLOGIN = "/usr/sbin/nologin"
DEFAULTS = {
    "--ip": "0",
    "--port": "smtp",
    "--rules": "/etc/tcp.smtp.cdb",
    "--smtpd": "/var/qmail/bin/qmail-smtpd",
    "--key-type": "ec",
}
VARIABLES = {  # the run file's variables, and the options that set them
    "PATH": "--path", "IP": "--ip", "PORT": "--port", "RULES": "--rules", "SMTPD": "--smtpd",
}  # fmt: skip


class Fatal(Exception):
    """Ends the program: `stunnel3-setup: fatal: <text>`, exit 111."""


def say(text: str) -> None:
    print(f"{PROG}: {text}", flush=True)


# The Debian package's private directory for stunnel, makesock, fixcrio and
# stunnel3-warm (debian/rules): /usr/bin/stunnel is stunnel4's, /usr/bin/fixcrio ucspi-tcp's.
PACKAGE_PROGRAMS = "/usr/lib/stunnel3/bin"


def programs_dir() -> str:
    """Where this installation's stunnel is: pip's scripts directory, else the package's."""
    scripts = sysconfig.get_path("scripts")
    for directory in (scripts, PACKAGE_PROGRAMS):
        try:
            with open(os.path.join(directory, "stunnel"), "rb") as front:
                if FRONT_MARK in front.read(200):
                    return directory
        except OSError:
            continue
    return scripts


def default_path() -> str:
    """Our programs' directory first (README step 7), then the original's PATH."""
    ours = programs_dir()
    rest = ["/usr/local/bin", "/var/qmail/bin", "/usr/bin", "/bin"]
    return ":".join([ours] + [d for d in rest if d != ours])


# -- accounts (README step 5, and qmail's qmaild) --------------------------------


def exists(database, name: str) -> bool:
    try:
        database(name)
    except KeyError:
        return False
    return True


def account_commands() -> list[list[str]]:
    """What makes the missing accounts: stunnel with its own primary group, qmaild."""
    commands = []
    if not exists(grp.getgrnam, "stunnel"):
        commands.append(["groupadd", "--system", "stunnel"])
    if not exists(pwd.getpwnam, "stunnel"):
        commands.append(
            ["useradd", "--system", "-g", "stunnel", "-d", "/nonexistent", "-M"]
            + ["-s", NOLOGIN, "-c", "stunnel3 STARTTLS proxy", "stunnel"]
        )
    if not exists(pwd.getpwnam, "qmaild"):
        commands.append(
            ["useradd", "--system", "-U", "-d", "/var/qmail", "-M", "-s", NOLOGIN, "qmaild"]
        )
    return commands


def make_accounts(create: bool) -> None:
    commands = account_commands()
    if commands and not create:
        for command in commands:
            print(shlex.join(command))
        raise Fatal("accounts are missing: run the commands above, then run me again")
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise Fatal(f"unable to run {shlex.join(command)}: {done.stderr.strip()}")
        say(f"ran {shlex.join(command)}")


# -- files -----------------------------------------------------------------------


def write_new(path: Path, data: bytes, mode: int) -> None:
    """Create path with mode from the start: a key is never readable by others."""
    tmp = path.with_name(f".{path.name}.new")
    if tmp.exists():
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, mode)  # the umask may have taken bits away
    os.replace(tmp, path)


def chmod_jail(ssl: Path, gid: int) -> None:
    """`chgrp -R stunnel ssl; chmod -R u=rwX,g=rX,o= ssl`, owner root (step 6e), and
    `chmod g+w ssl/seed`: stunnel rewrites the seed after reading it (-R without -W), as
    3.22 did; read-only, every connection would log `Failed to write strong random data`
    (3.22 logged it too). Only the seed: the key and the directory stay read-only."""
    seed = ssl / "seed"
    for path in [ssl, *sorted(ssl.rglob("*"))]:
        info = path.lstat()
        if path.is_symlink():
            os.lchown(path, 0, gid)  # 6d/2's openssl.cnf link; chmod would follow it
            continue
        executable = path.is_dir() or info.st_mode & 0o111  # the X of u=rwX
        os.chown(path, 0, gid)
        os.chmod(path, 0o750 if executable else 0o660 if path == seed else 0o640)


def make_jail(service: Path, pem_data: bytes | None, choices: dict, force: bool) -> None:
    ssl = service / "ssl"
    ssl.mkdir(mode=0o750, exist_ok=True)
    pem = ssl / "stunnel.pem"
    if pem_data is not None:
        install(pem, pem_data, 0o640, force, "a key")
    elif pem.exists() and not force:
        say(f"kept {pem}")
    else:
        hostname = choices["--hostname"] or default_hostname()
        install(pem, self_signed(hostname, choices["--key-type"]), 0o640, True, "")
        say(f"made a self-signed {choices['--key-type']} certificate for {hostname}")
    seed = ssl / "seed"
    if not seed.exists():
        write_new(seed, os.urandom(SEED_BYTES), 0o660)
        say(f"wrote {seed}")
    chmod_jail(ssl, grp.getgrnam("stunnel").gr_gid)
    say(f"set {ssl} to root:stunnel u=rwX,g=rX,o=, and g+w on {seed.name}")


def make_log(service: Path, log_run: bytes, user: str, force: bool) -> None:
    log = service / "log"
    log.mkdir(mode=0o755, exist_ok=True)
    main = log / "main"
    main.mkdir(mode=0o755, exist_ok=True)
    account = pwd.getpwnam(user)
    os.chown(main, account.pw_uid, account.pw_gid)
    install(log / "run", log_run, 0o755, force, "log/run")


# -- what the last run chose -----------------------------------------------------


def last_run(service: Path) -> dict:
    """The options the files of a previous run stand for: its run file's variables,
    its log account, and whether it made warm/. Empty for a new service."""
    try:
        run = (service / "run").read_text()
    except (OSError, UnicodeDecodeError):
        return {}
    found: dict = {VARIABLES[name]: value for name, value in setup_scripts.read_run(run).items()}
    try:
        found["--log-user"] = setup_scripts.log_user((service / "log" / "run").read_text())
    except (OSError, UnicodeDecodeError):
        pass
    found["warm"] = (service / "warm" / "run").exists()
    return {key: value for key, value in found.items() if value is not None}


def choose(args: dict, last: dict) -> dict:
    """Each option: as given, else as the last run left it, else its default."""
    if args["--warm"] and args["--no-warm"]:
        raise Fatal("--warm and --no-warm: choose one")
    choices = {}
    for option in (*VARIABLES.values(), "--log-user", "--hostname", "--key-type"):
        choices[option] = args[option] or last.get(option) or DEFAULTS.get(option)
    choices["--path"] = choices["--path"] or default_path()
    if not choices["--log-user"]:
        choices["--log-user"] = "qmaill" if exists(pwd.getpwnam, "qmaill") else "nobody"
    choices["warm"] = args["--warm"] or (not args["--no-warm"] and last.get("warm", True))
    return choices


# -- the checks before any change --------------------------------------------------


def refuse_to_replace(path: Path, data: bytes, force: bool, what: str, ours=None) -> bool:
    """Whether path already holds data; raises if it holds something else (no --force),
    unless `ours(text)` says it is still exactly what we wrote (new values replace it)."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise Fatal(f"unable to install {path}: not a regular file")
    if not path.exists():
        return False
    old = path.read_bytes()
    if old == data:
        return True
    if not force and not (ours and ours(old.decode(errors="replace"))):
        raise Fatal(f"{path} exists and differs: not replacing {what} without --force")
    return False


def install(path: Path, data: bytes, mode: int, force: bool, what: str, ours=None) -> None:
    """Write path unless it already holds data; a different one needs --force."""
    if refuse_to_replace(path, data, force, what, ours):
        say(f"kept {path}")
        return
    replaced = path.exists()
    write_new(path, data, mode)
    say(f"{'rewrote' if replaced else 'wrote'} {path}")


class RunFile:
    """A run file to write into directory, from template; an existing one that is the
    template with other values (not edited since) may be rewritten without --force."""

    def __init__(self, directory: Path, variables: dict, template: str, allowed: tuple):
        self.directory, self.template, self.allowed = directory, template, allowed
        try:
            self.text = setup_scripts.render_run(variables, template, allowed)
        except setup_scripts.Unsettable as name:
            raise Fatal(f"unable to set {name} in {directory / 'run'}") from None

    def is_ours(self, old: str) -> bool:
        return setup_scripts.is_ours(old, self.template, self.allowed)


def run_files(service: Path, choices: dict) -> list[RunFile]:
    """The SMTP service's run file, and the warm helper's (the fronts' rendezvous, ./warm)."""
    variables = {name: choices[option] for name, option in VARIABLES.items()}
    smtp = RunFile(service, variables, RUN_SCRIPT, RUN_VARIABLES)
    if setup_scripts.late_id_switches(smtp.text):  # issue #18: never -s/-g without -i
        raise Fatal("the run file would switch ids after TLS starts (-s/-g without -i)")
    if not choices["warm"]:
        return [smtp]
    warm = {"PATH": variables["PATH"]}
    return [smtp, RunFile(service / "warm", warm, WARM_RUN_SCRIPT, WARM_RUN_VARIABLES)]


def set_up(args) -> None:
    if os.geteuid() != 0:
        raise Fatal("must be run as root: it makes accounts and gives files to root:stunnel")
    too_old = tls_library.problem()  # the service we would make could serve no session
    if too_old:
        raise Fatal(too_old)
    service = Path(os.path.abspath(args["SERVICE_DIR"]))
    choices = choose(args, last_run(service))
    if choices["--key-type"] not in KEY_TYPES:
        raise Fatal(f"unknown key type {choices['--key-type']}: use ec or rsa")
    log_user = choices["--log-user"]
    if not exists(pwd.getpwnam, log_user):
        raise Fatal(f"unable to find the account {log_user} for multilog")
    force = args["--force"]
    try:
        pem_data = read_pem(os.path.abspath(args["--pem"])) if args["--pem"] else None
        services = run_files(service, choices)
        log_run = LOG_RUN.format(user=log_user).encode()
        # Every refusal before the first change: a refused run leaves nothing half done.
        if pem_data is not None:
            refuse_to_replace(service / "ssl" / "stunnel.pem", pem_data, force, "a key")
        for run in services:
            run_path, log_path = run.directory / "run", run.directory / "log" / "run"
            refuse_to_replace(run_path, run.text.encode(), force, "a run file", run.is_ours)
            refuse_to_replace(log_path, log_run, force, "log/run", _log_is_ours)
        check_backend_account(choices["--path"])
    except (Unusable, Refusal) as error:
        raise Fatal(str(error)) from None
    make_accounts(create=not args["--no-accounts"])
    try:
        for run in services:
            run.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            if run.directory == service:
                make_jail(service, pem_data, choices, force)
            make_log(run.directory, log_run, log_user, force)
            install(run.directory / "run", run.text.encode(), 0o755, force, "a run file",
                    run.is_ours)  # fmt: skip
    except OSError as error:
        raise Fatal(f"unable to set up {error.filename}: {error.strerror}") from None
    scan = scan_directory()
    for run in services:
        name = service.name if run.directory == service else f"{service.name}-warm"
        start = how_to_start(run.directory, name, scan)
        say(f"{run.directory} is ready: try `cd {run.directory} && ./run`, {start}")
    if scan is None:
        say(NO_SCAN_DIRECTORY)


def _log_is_ours(text: str) -> bool:
    return setup_scripts.log_user(text) is not None


def main(argv: list[str]) -> int:
    from docopt import DocoptExit, docopt

    try:
        # Positional: docopt-ng calls `help` default_help, Debian's docopt 0.6 help.
        args = docopt(__doc__ or "", argv, False)
    except DocoptExit:
        print(USAGE, file=sys.stderr)
        return 100
    if args["--help"]:
        print((__doc__ or "").split("\n", 2)[2].strip())
        return 0
    try:
        set_up(args)
    except Fatal as error:
        print(f"{PROG}: fatal: {error}", file=sys.stderr)
        return 111
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""stunnel3-setup: steps 3-7 of smtp-tls.README for one service directory.

Usage:
  stunnel3-setup [options] SERVICE_DIR
  stunnel3-setup -h | --help

Makes SERVICE_DIR a daemontools service for SMTP with STARTTLS: the `stunnel`
account and group and the `qmaild` account (when missing), the `ssl/` jail with
`stunnel.pem` and `seed` (owner root, group stunnel, u=rwX,g=rX,o=, as README
step 6e), `log/run` with multilog, and `run` (compat/smtp-tls-run); and
SERVICE_DIR/warm, the warm helper's service (unless --no-warm). Running it
again changes nothing that is already right; it never replaces a key, nor a run
file someone edited, without --force.

Options:
  --pem FILE        Install this key + certificate chain as ssl/stunnel.pem
                    (default: generate a self-signed certificate).
  --key-type TYPE   Key of a generated certificate: ec (P-256) or rsa (2048)
                    [default: ec].
  --hostname NAME   Name in a generated certificate (default: the first line
                    of /var/qmail/control/me, else this host's name).
  --ip ADDR         Address the run file listens on [default: 0].
  --port PORT       Port the run file listens on [default: smtp].
  --rules CDB       tcpserver's rules file [default: /etc/tcp.smtp.cdb].
  --smtpd PROG      The SMTP server behind the proxy
                    [default: /var/qmail/bin/qmail-smtpd].
  --path PATH       The run file's PATH (default: the directory of stunnel3's
                    programs, then the README's
                    /usr/local/bin:/var/qmail/bin:/usr/bin:/bin).
  --log-user USER   Account multilog runs as (default: qmaill if it exists,
                    else nobody).
  --no-warm         Make no SERVICE_DIR/warm: without it, the service for the
                    warm helper, stunnel3-warm (compat/stunnel3-warm-run;
                    docs/warm.md), which serves every connection from one
                    process that has loaded Python and OpenSSL once. Link
                    SERVICE_DIR/warm into /service too.
  --no-accounts     Create no account: print the commands that would.
  --force           Replace ssl/stunnel.pem, run and log/run if they differ.
  -h, --help        Show this text.
"""

import grp
import os
import pwd
import re
import shlex
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

from stunnel3 import tls_library
from stunnel3.fronts import FRONT_MARK
from stunnel3.setup_scripts import (
    LOG_RUN,
    RUN_SCRIPT,
    RUN_VARIABLES,
    WARM_RUN_SCRIPT,
    WARM_RUN_VARIABLES,
)

PROG = "stunnel3-setup"
USAGE = f"{PROG}: usage: {PROG} [options] SERVICE_DIR (try {PROG} --help)"
SEED_BYTES = 4096  # stunnel reads 64 (-B); the README's dd made far more than needed
NOLOGIN = "/usr/sbin/nologin"


class Fatal(Exception):
    """Ends the program: `stunnel3-setup: fatal: <text>`, exit 111."""


def say(text: str) -> None:
    print(f"{PROG}: {text}", flush=True)


def _literal(text: str):
    return lambda _match: text


def render_run(
    variables: dict[str, str], template: str = RUN_SCRIPT, allowed: tuple = RUN_VARIABLES
) -> str:
    """The run script with the administrator's variables set, the rest untouched."""
    for name, value in variables.items():
        if name not in allowed or "\n" in value:
            raise Fatal(f"unable to set {name} in the run file")
        line = re.compile(rf"^{name}=.*$", re.MULTILINE)
        # re.escape-free: a function replacement takes the text literally
        assignment = f"{name}={shlex.quote(value)}"
        template = line.sub(_literal(assignment), template, count=1)
    return template


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


def default_hostname() -> str:
    try:
        me = Path("/var/qmail/control/me").read_text().split("\n")[0].strip()
    except OSError:
        me = ""
    return me or socket.gethostname()


# -- the certificate (README step 6a) --------------------------------------------

KEY_TYPES = ("ec", "rsa")
VALID_DAYS = 397  # what browsers' CAs may issue: clients that check dates accept it


def self_signed(hostname: str, key_type: str) -> bytes:
    """A key and a self-signed certificate for hostname, in one pem as stunnel wants."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),  # stunnel starts unattended: no passphrase
    )
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


def check_pem(data: bytes) -> str | None:
    """Why data cannot serve as stunnel.pem (an unencrypted key + its certificate), or None."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        return "no unencrypted private key in PEM form"
    try:
        certs = tls_library.load_pem_certificates(data)
    except ValueError:
        return "no certificate"
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(serialization.Encoding.PEM, public)
    if certs[0].public_key().public_bytes(serialization.Encoding.PEM, public) != ours:
        return "the first certificate is not the key's"
    return None


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


def refuse_to_replace(path: Path, data: bytes, force: bool, what: str) -> bool:
    """Whether path already holds data; raises if it holds something else (no --force)."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise Fatal(f"unable to install {path}: not a regular file")
    if not path.exists():
        return False
    if path.read_bytes() == data:
        return True
    if not force:
        raise Fatal(f"{path} exists and differs: not replacing {what} without --force")
    return False


def install(path: Path, data: bytes, mode: int, force: bool, what: str) -> None:
    """Write path unless it already holds data; a different one needs --force."""
    if refuse_to_replace(path, data, force, what):
        say(f"kept {path}")
        return
    write_new(path, data, mode)
    say(f"wrote {path}")


def chmod_jail(ssl: Path, gid: int) -> None:
    """`chgrp -R stunnel ssl; chmod -R u=rwX,g=rX,o= ssl`, owner root (step 6e)."""
    for path in [ssl, *sorted(ssl.rglob("*"))]:
        info = path.lstat()
        if path.is_symlink():
            os.lchown(path, 0, gid)  # 6d/2's openssl.cnf link; chmod would follow it
            continue
        executable = path.is_dir() or info.st_mode & 0o111  # the X of u=rwX
        os.chown(path, 0, gid)
        os.chmod(path, 0o750 if executable else 0o640)


def read_pem(pem_file: str) -> bytes:
    try:
        data = Path(pem_file).read_bytes()
    except OSError as error:
        raise Fatal(f"unable to read {pem_file}: {error.strerror}") from None
    problem = check_pem(data)
    if problem:
        raise Fatal(f"unable to use {pem_file}: {problem}")
    return data


def make_jail(service: Path, pem_data: bytes | None, args, force: bool) -> None:
    ssl = service / "ssl"
    ssl.mkdir(mode=0o750, exist_ok=True)
    pem = ssl / "stunnel.pem"
    if pem_data is not None:
        install(pem, pem_data, 0o640, force, "a key")
    elif pem.exists() and not force:
        say(f"kept {pem}")
    else:
        hostname = args["--hostname"] or default_hostname()
        install(pem, self_signed(hostname, args["--key-type"]), 0o640, True, "")
        say(f"made a self-signed {args['--key-type']} certificate for {hostname}")
    seed = ssl / "seed"
    if not seed.exists():
        write_new(seed, os.urandom(SEED_BYTES), 0o640)
        say(f"wrote {seed}")
    chmod_jail(ssl, grp.getgrnam("stunnel").gr_gid)
    say(f"set {ssl} to root:stunnel u=rwX,g=rX,o=")


def make_log(service: Path, log_run: bytes, user: str, force: bool) -> None:
    log = service / "log"
    log.mkdir(mode=0o755, exist_ok=True)
    main = log / "main"
    main.mkdir(mode=0o755, exist_ok=True)
    account = pwd.getpwnam(user)
    os.chown(main, account.pw_uid, account.pw_gid)
    install(log / "run", log_run, 0o755, force, "log/run")


def run_variables(args) -> dict[str, str]:
    return {
        "PATH": args["--path"] or default_path(),
        "IP": args["--ip"],
        "PORT": args["--port"],
        "RULES": args["--rules"],
        "SMTPD": args["--smtpd"],
    }


def set_up(args) -> None:
    if os.geteuid() != 0:
        raise Fatal("must be run as root: it makes accounts and gives files to root:stunnel")
    too_old = tls_library.problem()  # the service we would make could serve no session
    if too_old:
        raise Fatal(too_old)
    if args["--key-type"] not in KEY_TYPES:
        raise Fatal(f"unknown key type {args['--key-type']}: use ec or rsa")
    log_user = args["--log-user"] or ("qmaill" if exists(pwd.getpwnam, "qmaill") else "nobody")
    if not exists(pwd.getpwnam, log_user):
        raise Fatal(f"unable to find the account {log_user} for multilog")
    service = Path(args["SERVICE_DIR"])
    force = args["--force"]
    pem_data = read_pem(args["--pem"]) if args["--pem"] else None
    variables = run_variables(args)
    run = render_run(variables).encode()
    log_run = LOG_RUN.format(user=log_user).encode()
    services = {service: run}
    if not args["--no-warm"]:  # the rendezvous the chain's fronts look for: ./warm
        warm_path = {"PATH": variables["PATH"]}
        services[service / "warm"] = render_run(
            warm_path, WARM_RUN_SCRIPT, WARM_RUN_VARIABLES
        ).encode()
    # Every refusal before the first change: a refused run leaves nothing half done.
    if pem_data is not None:
        refuse_to_replace(service / "ssl" / "stunnel.pem", pem_data, force, "a key")
    for directory, run_file in services.items():
        refuse_to_replace(directory / "run", run_file, force, "a run file")
        refuse_to_replace(directory / "log" / "run", log_run, force, "log/run")
    make_accounts(create=not args["--no-accounts"])
    try:
        for directory, run_file in services.items():
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            if directory == service:
                make_jail(service, pem_data, args, force)
            make_log(directory, log_run, log_user, force)
            install(directory / "run", run_file, 0o755, force, "a run file")
    except OSError as error:
        raise Fatal(f"unable to set up {error.filename}: {error.strerror}") from None
    for directory in services:
        ready = f"try `cd {directory} && ./run`, then `ln -s {directory} /service/`"
        say(f"{directory} is ready: {ready}")


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

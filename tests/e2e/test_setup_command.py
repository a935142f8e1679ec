"""stunnel3-setup, run as installed, as root: README steps 3-7 for a service directory.

Proves: the jail's ownership and modes are exactly step 6e's; the run file is
compat/smtp-tls-run with only the administrator's variables set; a second run
changes nothing; a key is never replaced without --force; a non-root caller is
refused before anything is made; --no-accounts prints commands that work.
"""

import grp
import os
import pwd
import re
import shlex
import stat
import subprocess
import sysconfig
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from helpers import accounts_lock, install_on_a_closed_python  # noqa: F401, F811  (a fixture)

from stunnel3.setup import scripts as setup_scripts
from stunnel3.setup.scripts import RUN_SCRIPT, RUN_VARIABLES, WARM_RUN_SCRIPT

ROOT = Path(__file__).resolve().parents[2]
SETUP = str(Path(sysconfig.get_path("scripts")) / "stunnel3-setup")


pytestmark = pytest.mark.usefixtures("accounts_lock")


def accounts() -> tuple[set[str], set[str]]:
    return {u.pw_name for u in pwd.getpwall()}, {g.gr_name for g in grp.getgrall()}


@pytest.fixture(scope="module", autouse=True)
def remove_made_accounts(accounts_lock):  # noqa: F811  (the imported fixture)
    """The set-up command makes `stunnel` and `qmaild`: remove the ones this module made."""
    users, groups = accounts()
    yield
    now_users, _ = accounts()
    for name in sorted(now_users - users):
        subprocess.run(["userdel", name], capture_output=True, timeout=60)
    _, now_groups = accounts()
    for name in sorted(now_groups - groups):
        subprocess.run(["groupdel", name], capture_output=True, timeout=60)


def setup(*args, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, SETUP, *map(str, args)], capture_output=True, text=True, timeout=120
    )


def mode_owner(path: Path) -> tuple[int, str, str]:
    info = path.lstat()
    return (
        stat.S_IMODE(info.st_mode),
        pwd.getpwuid(info.st_uid).pw_name,
        grp.getgrgid(info.st_gid).gr_name,
    )


def snapshot(service: Path) -> dict[str, tuple]:
    """Every file's content, inode, mtime, mode and owner: a second run must change none."""
    seen = {}
    for path in sorted(service.rglob("*")):
        info = path.lstat()
        data = path.read_bytes() if path.is_file() else b""
        seen[str(path)] = (data, info.st_ino, info.st_mtime_ns, info.st_mode, info.st_uid)
    return seen


def test_the_packaged_run_file_is_compat_smtp_tls_run():
    assert (ROOT / "compat" / "smtp-tls-run").read_text() == RUN_SCRIPT
    assert (ROOT / "compat" / "stunnel3-warm-run").read_text() == WARM_RUN_SCRIPT


def test_the_helpers_service_comes_too_unless_no_warm(tmp_path):
    service = tmp_path / "svc"
    warm = service / "warm"  # the rendezvous the chain's fronts look for
    done = setup("--port", 2525, service)
    assert done.returncode == 0, done.stderr
    assert f"{warm} is ready" in done.stdout and f"{service} is ready" in done.stdout
    assert re.search(rf"ln -s {warm} \S+/svc-warm`", done.stdout)  # a name of its own
    assert mode_owner(warm / "run")[:2] == (0o755, "root")
    assert (warm / "log" / "run").read_bytes() == (service / "log" / "run").read_bytes()
    assert not (warm / "ssl").exists()  # the helper has no jail of its own
    run = (warm / "run").read_text().splitlines()
    changed = [(a, b) for a, b in zip(WARM_RUN_SCRIPT.splitlines(), run, strict=True) if a != b]
    assert [a.split("=")[0] for a, _ in changed] == ["PATH"]
    path = next(line for line in run if line.startswith("PATH="))[len("PATH=") :]
    found = subprocess.run(["sh", "-c", "command -v stunnel3-warm"], capture_output=True,
                           text=True, env={"PATH": path}, timeout=10)  # fmt: skip
    assert found.stdout.strip() == str(Path(sysconfig.get_path("scripts")) / "stunnel3-warm")
    assert subprocess.run(["sh", "-n", warm / "run"], timeout=10).returncode == 0
    before = snapshot(tmp_path)
    assert setup("--port", 2525, service).returncode == 0
    assert snapshot(tmp_path) == before  # a second run changes nothing
    (warm / "run").write_text((warm / "run").read_text() + "# edited\n")
    kept = snapshot(service)
    refused = setup("--port", 2525, service)
    assert refused.returncode == 111 and f"{warm / 'run'} exists and differs" in refused.stderr
    assert snapshot(service) == kept  # refused before any change
    cold = tmp_path / "cold"
    assert setup("--port", 2525, "--no-warm", cold).returncode == 0
    assert not (cold / "warm").exists()
    assert setup(cold).returncode == 0  # a re-run keeps the first run's choice
    assert not (cold / "warm").exists()
    assert setup("--warm", cold).returncode == 0
    assert (cold / "warm" / "run").read_text() == (warm / "run").read_text().replace(
        "# edited\n", ""
    )
    both = setup("--warm", "--no-warm", cold)
    assert (both.returncode, both.stderr) == (
        111, "stunnel3-setup: fatal: --warm and --no-warm: choose one\n"
    )  # fmt: skip


def test_no_accounts_prints_commands_that_make_them(tmp_path):
    first = setup("--no-accounts", tmp_path / "svc")
    if first.returncode == 0:  # the accounts exist already: nothing to print
        assert first.stdout.startswith("stunnel3-setup: ")
    else:
        assert first.returncode == 111, first.stderr
        assert "accounts are missing" in first.stderr
        assert not (tmp_path / "svc").exists()  # refused before making anything
        for line in first.stdout.splitlines():
            assert line.split()[0] in ("groupadd", "useradd")
            subprocess.run(shlex.split(line), check=True, timeout=60)
    assert pwd.getpwnam("stunnel").pw_gid == grp.getgrnam("stunnel").gr_gid
    pwd.getpwnam("qmaild")
    again = setup("--no-accounts", tmp_path / "svc")
    assert again.returncode == 0, again.stderr


def test_layout_modes_and_owners_are_step_6e(tmp_path):
    service = tmp_path / "svc"
    done = setup("--port", 2525, "--ip", "127.0.0.1", service)
    assert done.returncode == 0, done.stderr
    assert mode_owner(service / "ssl") == (0o750, "root", "stunnel")
    assert mode_owner(service / "ssl" / "stunnel.pem") == (0o640, "root", "stunnel")
    # g+w on the seed alone: stunnel rewrites it, quietly (3.22 warned on every connection)
    assert mode_owner(service / "ssl" / "seed") == (0o660, "root", "stunnel")
    assert len((service / "ssl" / "seed").read_bytes()) >= 64  # what -B reads
    assert sorted(p.name for p in (service / "ssl").iterdir()) == ["seed", "stunnel.pem"]
    assert mode_owner(service / "run")[:2] == (0o755, "root")
    assert mode_owner(service / "log" / "run")[:2] == (0o755, "root")
    assert "multilog t ./main" in (service / "log" / "run").read_text()
    pem = (service / "ssl" / "stunnel.pem").read_bytes()
    assert isinstance(load_pem_private_key(pem, None), ec.EllipticCurvePrivateKey)
    x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE") :])


def test_run_file_differs_from_compat_only_in_the_variables(tmp_path):
    service = tmp_path / "svc"
    done = setup("--port", 2525, "--ip", "127.0.0.1", "--smtpd", "/x/y smtpd", service)
    assert done.returncode == 0, done.stderr
    run = (service / "run").read_text().splitlines()
    compat = RUN_SCRIPT.splitlines()
    changed = [(a, b) for a, b in zip(compat, run, strict=True) if a != b]
    assert {a.split("=")[0] for a, _ in changed} <= set(RUN_VARIABLES)
    assert "PORT=2525" in run and "IP=127.0.0.1" in run and "SMTPD='/x/y smtpd'" in run
    path = next(line for line in run if line.startswith("PATH="))
    assert path.startswith(f"PATH={sysconfig.get_path('scripts')}:")  # README step 7
    syntax = subprocess.run(["sh", "-n", service / "run"], capture_output=True, timeout=10)
    assert syntax.returncode == 0


def test_second_run_changes_nothing(tmp_path):
    service = tmp_path / "svc"
    assert setup("--port", 2525, service).returncode == 0
    before = snapshot(service)
    again = setup("--port", 2525, service)
    assert again.returncode == 0, again.stderr
    assert snapshot(service) == before
    assert "wrote" not in again.stdout and "kept" in again.stdout


def test_modes_are_repaired_on_a_second_run(tmp_path):
    service = tmp_path / "svc"
    assert setup(service).returncode == 0
    (service / "ssl" / "stunnel.pem").chmod(0o644)
    os.chown(service / "ssl" / "seed", 0, 0)
    (service / "ssl" / "usr" / "share" / "ssl").mkdir(parents=True)  # README 6d/1
    (service / "ssl" / "openssl.cnf").write_text("# 6b\n")
    again = setup(service)
    assert again.returncode == 0, again.stderr
    for name in ("stunnel.pem", "openssl.cnf"):
        assert mode_owner(service / "ssl" / name) == (0o640, "root", "stunnel")
    assert mode_owner(service / "ssl" / "seed") == (0o660, "root", "stunnel")
    for name in ("usr", "usr/share", "usr/share/ssl"):
        assert mode_owner(service / "ssl" / name) == (0o750, "root", "stunnel")


def test_a_key_is_never_replaced_without_force(tmp_path, pki):
    service = tmp_path / "svc"
    assert setup(service).returncode == 0
    pem = service / "ssl" / "stunnel.pem"
    made = pem.read_bytes()
    refused = setup("--pem", pki["server"], service)
    assert refused.returncode == 111
    assert re.search(r"stunnel\.pem exists and differs: not replacing a key without --force$",
                     refused.stderr.strip())  # fmt: skip
    assert pem.read_bytes() == made
    assert setup("--key-type", "rsa", service).returncode == 0  # no --pem: keeps the key
    assert pem.read_bytes() == made
    forced = setup("--pem", pki["server"], "--force", service)
    assert forced.returncode == 0, forced.stderr
    assert pem.read_bytes() == pki["server"].read_bytes()
    assert mode_owner(pem) == (0o640, "root", "stunnel")


def test_rsa_key_on_request(tmp_path):
    service = tmp_path / "svc"
    assert setup("--key-type", "rsa", "--hostname", "mail.example.org", service).returncode == 0
    pem = (service / "ssl" / "stunnel.pem").read_bytes()
    key = load_pem_private_key(pem, None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    cert = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE") :])
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mail.example.org"]


def test_a_pem_without_a_key_is_refused(tmp_path, pki):
    done = setup("--pem", pki["ca"], tmp_path / "svc")
    assert done.returncode == 111
    assert done.stderr.startswith("stunnel3-setup: fatal: unable to use ")
    assert not (tmp_path / "svc").exists()


def as_nobody() -> tuple[str, ...]:
    """A way to run the installed command as a non-root user.

    setuidgid nobody, where nobody can reach the interpreter (CI: /usr/local);
    else (a Python under root's 0700 home) a user namespace, inside which the
    program's uid is the overflow uid 65534 and it sees itself as nobody.
    """
    probe = subprocess.run(["setuidgid", "nobody", SETUP, "--help"], capture_output=True)
    if probe.returncode == 0:
        return ("setuidgid", "nobody")
    return ("unshare", "--user")


def test_refused_without_root(tmp_path):
    tmp_path.chmod(0o777)
    done = setup(tmp_path / "svc", prefix=as_nobody())
    assert done.returncode == 111
    assert done.stderr == (
        "stunnel3-setup: fatal: must be run as root: it makes accounts and gives files"
        " to root:stunnel\n"
    )
    assert not (tmp_path / "svc").exists()


@pytest.mark.parametrize(
    "args", [[], ["a", "b"], ["--bogus", "x"], ["--port"]], ids=["none", "two", "bogus", "noarg"]
)
def test_usage(args):
    done = setup(*args)
    assert done.returncode == 100
    assert done.stderr.startswith("stunnel3-setup: usage: stunnel3-setup [options] SERVICE_DIR")
    assert "Traceback" not in done.stderr


def test_a_relative_directory_is_said_absolute(tmp_path):
    done = subprocess.run([SETUP, "--port", "2525", "svc"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    service = tmp_path / "svc"
    assert f"try `cd {service} && ./run`, then `ln -s {service} " in done.stdout
    paths = re.findall(r"[\w.~-]*/[\w./-]*", done.stdout)  # every word with a slash
    assert paths and {path for path in paths if not path.startswith("/")} == {"./run"}  # cd'd


def in_own_pid_namespace(script: str) -> subprocess.CompletedProcess:
    """sh -c script where the only processes are its own: no svscan of the machine's."""
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_it_names_the_scan_directory_of_a_running_svscan(tmp_path):
    scan, service = tmp_path / "scan", tmp_path / "svc"
    scan.mkdir()
    # svscan, stopped once it is in its directory: it must never start what we link there
    script = f"""svscan {scan} & until [ /proc/$!/cwd -ef {scan} ]; do sleep 0.02; done
kill -STOP $!; {SETUP} --no-warm --port 2525 {service}; status=$?; kill -KILL $!; exit $status"""
    done = in_own_pid_namespace(script)
    assert done.returncode == 0, done.stderr
    assert f"then `ln -s {service} {scan}/svc`\n" in done.stdout
    (scan / "svc").symlink_to(service)
    again = in_own_pid_namespace(script)
    assert f"svscan runs it: {scan}/svc leads to it\n" in again.stdout
    none = in_own_pid_namespace(f"{SETUP} --no-warm {service}")  # no svscan running
    there = next((d for d in (Path("/etc/service"), Path("/service")) if d.is_dir()), None)
    if there is None:
        assert none.stdout.endswith(
            f"then `ln -s {service} /etc/service/svc`\nstunnel3-setup: no svscan scan directory"
            " here: apt-get install daemontools-run (its svscan scans /etc/service), or make"
            " /service and run svscan there\n"
        )
    else:
        assert f"`ln -s {service} {there}/svc`" in none.stdout


def test_a_rerun_keeps_what_the_first_chose_and_options_change_it(tmp_path):
    service = tmp_path / "svc"
    first = [
        "--ip",
        "127.0.0.1",
        "--port",
        "2525",
        "--smtpd",
        "/x/y smtpd",
        "--rules",
        "/r.cdb",
        "--path",
        f"{Path(SETUP).parent}:/usr/bin:/bin",
        "--log-user",
        "nobody",
    ]
    assert setup(*first, service).returncode == 0  # fmt: skip
    before = snapshot(tmp_path)
    again = setup(service)
    assert again.returncode == 0, again.stderr
    assert snapshot(tmp_path) == before and "wrote" not in again.stdout
    changed = setup("--port", "2526", service)  # a run file of ours takes new values
    assert changed.returncode == 0, changed.stderr
    assert f"rewrote {service / 'run'}\n" in changed.stdout
    run = (service / "run").read_text()
    assert "PORT=2526\n" in run and "IP=127.0.0.1\n" in run and "SMTPD='/x/y smtpd'\n" in run
    assert "exec setuidgid nobody multilog" in (service / "log" / "run").read_text()
    (service / "run").write_text(run.replace('-c "${MAXSMTPD:-40}"', "-c 20"))  # edited
    refused = setup("--port", "2527", service)
    assert refused.returncode == 111 and "exists and differs" in refused.stderr
    forced = setup("--port", "2527", "--force", service)
    assert forced.returncode == 0 and "PORT=2527\n" in (service / "run").read_text()
    assert "RULES=/r.cdb\n" in (service / "run").read_text()  # still the first run's


def test_refused_when_the_backend_account_cannot_run_fixcrio(tmp_path):
    """`setuidgid qmaild fixcrio`: a Python under a directory closed to qmaild (a venv of a
    Python under /root) is refused before anything is made, naming the account and why."""
    fixcrio = str(Path(SETUP).with_name("fixcrio"))
    with install_on_a_closed_python(tmp_path, fixcrio) as (install, python):
        service = tmp_path / "svc"
        done = setup("--path", f"{install}:/usr/bin:/bin", service)
        assert done.returncode == 111
        assert re.fullmatch(
            rf"stunnel3-setup: fatal: qmaild( \(to be made\))? cannot run {install}/fixcrio"
            rf" \(the run file's setuidgid qmaild fixcrio\): fixcrio: fatal: unable to run"
            rf" {python}: access denied; install stunnel3 where every account can run it\n",
            done.stderr,
        )
        assert not service.exists()


def test_every_run_file_it_writes_switches_ids_at_once(tmp_path):
    """Issue #18: -s/-g in inetd mode without -i leave TLS to root; the run line has -i."""
    service = tmp_path / "svc"
    assert setup("--port", 2525, service).returncode == 0
    (argv,) = setup_scripts.stunnel_words((service / "run").read_text())
    assert {"-s", "-g", "-i"} <= set(argv) and "-d" not in argv
    assert setup_scripts.late_id_switches((service / "run").read_text()) == []

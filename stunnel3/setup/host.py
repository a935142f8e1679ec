"""stunnel3-setup's look at the machine: where svscan looks for services, and whether the
account the run file switches to can run the chain's fixcrio.
"""

import os
import pwd
import subprocess
from pathlib import Path

from stunnel3 import unix

BACKEND_ACCOUNT = "qmaild"  # the run file's `setuidgid qmaild fixcrio ...`
NO_ACCOUNT = 65534  # an account with no file of its own: how one not made yet is tried
# Where svscan looks: Debian's daemontools-run scans /etc/service, djb's own /service.
SCAN_DIRECTORIES = (Path("/etc/service"), Path("/service"))


class Refusal(Exception):
    """The service would not work on this machine; the text says why, in one line."""


def check_backend_account(path: str) -> None:
    """The run file's `setuidgid qmaild fixcrio ...`, tried now: can that account run the
    fixcrio on the run file's PATH, its Python included (issue #18)? An account not made
    yet is tried as NO_ACCOUNT, with no groups."""
    found = [c for c in unix.candidates("fixcrio", {"PATH": path}) if os.path.isfile(c)]
    if not found:
        raise Refusal(f"no fixcrio on the run file's PATH {path}")
    try:
        account = pwd.getpwnam(BACKEND_ACCOUNT)
        uid, gid, who = account.pw_uid, account.pw_gid, BACKEND_ACCOUNT
    except KeyError:
        uid, gid, who = NO_ACCOUNT, NO_ACCOUNT, f"{BACKEND_ACCOUNT} (to be made)"
    fixcrio = os.fsdecode(found[0])
    try:
        done = subprocess.run(
            [fixcrio, "true"], user=uid, group=gid, extra_groups=[], cwd="/",
            env={"PATH": path}, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as error:
        raise Refusal(f"{who} cannot run {fixcrio}: {error}") from None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        why = said[-1] if said else f"exit status {done.returncode}"
        raise Refusal(
            f"{who} cannot run {fixcrio} (the run file's setuidgid {BACKEND_ACCOUNT} fixcrio):"
            f" {why}; install stunnel3 where every account can run it"
        )


def scan_directory() -> Path | None:
    """Where svscan looks for services: a running svscan's directory, else the first of
    SCAN_DIRECTORIES there is."""
    for entry in sorted(Path("/proc").iterdir(), key=lambda entry: entry.name):
        try:
            if entry.name.isdigit() and (entry / "comm").read_text() == "svscan\n":
                return Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
    return next((d for d in SCAN_DIRECTORIES if d.is_dir()), None)


def how_to_start(directory: Path, name: str, scan: Path | None) -> str:
    """The `ln -s` that hands directory to svscan (into Debian's /etc/service when there is
    no scan directory yet), or where svscan has it already."""
    for link in scan.iterdir() if scan is not None else ():
        if link.is_symlink() and os.path.realpath(link) == os.path.realpath(directory):
            return f"svscan runs it: {link} leads to it"
    return f"then `ln -s {directory} {(scan or SCAN_DIRECTORIES[0]) / name}`"


NO_SCAN_DIRECTORY = (
    f"no svscan scan directory here: apt-get install daemontools-run (its svscan scans"
    f" {SCAN_DIRECTORIES[0]}), or make {SCAN_DIRECTORIES[1]} and run svscan there"
)

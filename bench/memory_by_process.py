"""Where a server's memory per open session goes, process by process.

    python3 bench/memory_by_process.py SERVER [COUNTS] [--each]  # e.g. stunnel3-warm-jail 10,20

Starts SERVER (a name of servers.SERVERS) as run.py does, in a throwaway directory, holds
COUNTS sessions open in turn (after the second EHLO, as run.py's memory measurement), and
prints per kind of process (its name and executable) how many there are and each one's PSS,
private dirty memory (`/proc/PID/smaps_rollup`) and minor faults (`/proc/PID/stat`), then
the PSS each session added between one count and the next. The listener and the backends
are left out, as run.py leaves them out. `--each` also lists every process of each kind in
the order they started (a warm worker forked first has seen the helper serve every later
front). Memory only: run it as root, no lock needed.
"""

import os
import sys
import tempfile
from pathlib import Path

import certs
import measure
import servers
from run import throwaway_account


def by_process(
    leader: int, backends: tuple[str, ...], each: dict[str, list[tuple[int, ...]]] | None = None
) -> dict[str, list[int]]:
    """Per kind of process: [count, PSS, private dirty, minor faults]; each process's own
    (pid, PSS, private dirty, faults) into `each` too, if given."""
    kinds: dict[str, list[int]] = {}
    for pid in servers.session_members(leader):
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if pid == leader or words[0].endswith(b"head"):
                continue
            if any(word.decode(errors="replace") in backends for word in words[:2]):
                continue
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            exe = os.readlink(f"/proc/{pid}/exe").rsplit("/", 1)[-1]
            faults = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
        except OSError:
            continue
        figures = (servers.kib(rollup, "Pss:"), servers.kib(rollup, "Private_Dirty:"), faults)
        kind = kinds.setdefault(f"{name} ({exe})", [0, 0, 0, 0])
        kind[0] += 1
        for slot, figure in enumerate(figures, 1):
            kind[slot] += figure
        if each is not None:
            each.setdefault(f"{name} ({exe})", []).append((pid, *figures))
    return kinds


def main(argv: list[str]) -> int:
    listing = "--each" in argv
    argv = [arg for arg in argv if arg != "--each"]
    name = argv[1]
    counts = [int(n) for n in (argv[2] if len(argv) > 2 else "10,20").split(",")]
    server = next(s for s in servers.SERVERS if s.name == name)
    with (
        tempfile.TemporaryDirectory(prefix="stunnel3-memory-") as work,
        throwaway_account() as account,
    ):
        workdir = Path(work)
        workdir.chmod(0o755)
        setup = servers.Setup(workdir, certs.write_pem(workdir, "rsa"), 1 << 20, account)
        servers.write_backends(setup)
        servers.make_jail(setup)
        ctx = measure.Context(setup, servers.Reaper(), workdir)
        port = ctx.port()
        running = measure.start(ctx, server, "smtp", port)
        backends = tuple(ctx.setup.backend(mode) for mode in ("smtp", "upload", "download"))
        held: list = []
        before = None
        try:
            for count in counts:
                held += measure.hold_sessions(port, count - len(held))
                listed: dict[str, list[tuple[int, ...]]] | None = {} if listing else None
                kinds = by_process(running.pid, backends, listed)
                total = sum(kind[1] for kind in kinds.values())
                slope = "" if before is None else f", {(total - before[1]) // (count - before[0])}"
                print(f"{name}, {count} sessions: PSS {total} KiB, {total // count} per session"
                      f"{slope and slope + ' per session added'}")  # fmt: skip
                for what, (n, pss, dirty, faults) in sorted(kinds.items()):
                    each = f"PSS {pss // n} KiB, private dirty {dirty // n} KiB"
                    print(f"  {what:28} {n:4} processes; each: {each}, {faults // n} minor faults")
                for what, processes in sorted((listed or {}).items()):
                    print(f"  {what}, in the order they started (by pid):")
                    for pid, pss, dirty, faults in sorted(processes):
                        print(f"    pid {pid}: PSS {pss}, private dirty {dirty} KiB,"
                              f" {faults} minor faults")  # fmt: skip
                before = (count, total)
        finally:
            for tls in held:
                tls.close()
            running.stop(ctx.reaper)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

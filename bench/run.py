#!/usr/bin/env python3
"""stunnel3 side by side with Debian's stunnel4 and tlswrapper-smtp, in one interleaved run.

    python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install . matplotlib
    /tmp/benchvenv/bin/python bench/run.py   # the full run: minutes, writes docs/benchmarks.md
    python3 bench/run.py --smoke --out /tmp/b   # seconds: proves the harness still works

The stunnel3 measured is the one installed for the Python that runs this script (its scripts
directory): run it with a regular install's Python, as above, to measure what users run.
Run as root (the jail variant chowns its ssl/ directory, makes a throwaway account for its
`setuidgid`) on a quiet machine. The servers take
turns (round-robin, a different order each round) so that noise hits all of them alike; every
number is reported next to its ratio to stunnel4. See docs/benchmarks.md for what is measured.
"""

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import certs
import client
import measure
import report
import startup
from servers import SERVERS, Reaper, Setup, make_jail, scripts_dir, write_backends

ROOT = Path(__file__).resolve().parent.parent
RECONNECTIONS = 6  # after one session, each offering the TLS session (ticket) it got


def options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny N: seconds, for the test suite")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the report goes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16, help="the first number of clients")
    parser.add_argument("--max-clients", type=int, default=200, help="the most clients tried")
    parser.add_argument("--busy", type=float, default=0.9, help="the busy fraction to reach")
    parser.add_argument("--seconds", type=float, default=5.0, help="load time per measurement")
    parser.add_argument("--latency-n", type=int, default=40, help="one-client sessions per round")
    parser.add_argument("--bulk-mib", type=int, default=1024)
    parser.add_argument("--bulk-repeat", type=int, default=3,
                        help="bulk transfers per server and direction in each round")  # fmt: skip
    parser.add_argument("--hold", type=int, default=10, help="sessions held open for memory")
    parser.add_argument("--keys", default="rsa,ecdsa")
    parser.add_argument("--servers", default=",".join(server.name for server in SERVERS))
    parser.add_argument("--from-json", type=Path, help="only write the report from a run's json")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    parser.add_argument("--no-bisect", action="store_true", help="skip the softlimit bisection")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.clients, args.max_clients, args.seconds, args.latency_n = 1, 4, 8, 1.0, 3
        args.bulk_mib, args.hold, args.bulk_repeat = 4, 2, 1
    return args


def available(ctx: measure.Context, names: list[str]) -> tuple[list, dict[str, str]]:
    """The servers that complete one STARTTLS session now; why the others do not."""
    usable, missing = [], {}
    for server in SERVERS:
        if server.name not in names:
            continue
        for _ in range(3):  # one stray failure on a busy machine is not a verdict
            try:
                measure.speed(ctx, server, clients=1, seconds=0.2, one_by_one=1)
                usable.append(server)
                missing.pop(server.name, None)
                break
            except Exception as error:  # any failure, three times: not measurable in this run
                missing[server.name] = f"{type(error).__name__}: {error}"[:300]
    return usable, missing


def saturating(ctx: measure.Context, server, args) -> measure.Speed:
    """One measurement under enough load to keep the cores busy: the number of clients doubles
    from --clients until at least --busy of all cores are busy, errors appear, or --max-clients
    is reached; the last measurement is the one kept (its busy fraction says which it was)."""
    clients = args.clients
    while True:
        result = measure.speed(ctx, server, clients, args.seconds, args.latency_n)
        print(
            f"  {clients} clients: {result.per_second:.1f}/s, busy {result.busy:.2f},"
            f" {result.server_cpu_ms:.1f} ms, {result.errors} errors",
            file=sys.stderr,
            flush=True,
        )
        if result.busy >= args.busy or result.errors or clients >= args.max_clients:
            return result
        clients = min(2 * clients, args.max_clients)


def interleaved(ctx: measure.Context, servers: list, keys: list[str], args) -> dict:
    speeds: dict = {}
    bulks: dict = {}
    failures: list[str] = []
    found: dict = {}  # (server, key): the clients that saturated it in the first round
    for round_no in range(args.rounds):
        order = servers[round_no % len(servers) :] + servers[: round_no % len(servers)]
        for key in keys:
            ctx.setup = ctx.setups[key]
            for server in order:
                print(f"round {round_no + 1} {key} {server.name}", file=sys.stderr, flush=True)
                try:
                    if (server.name, key) in found:
                        result = measure.speed(
                            ctx, server, found[server.name, key], args.seconds, args.latency_n
                        )
                    else:
                        result = saturating(ctx, server, args)
                        found[server.name, key] = result.clients
                except (OSError, RuntimeError, client.SessionError) as error:
                    failures.append(f"{server.name} {key} sessions: {error}"[:300])
                    continue
                speeds.setdefault((server.name, key), []).append(result)
        ctx.setup = ctx.setups[keys[0]]
        # Servers in turn, each transfer once, --bulk-repeat times: one connection's speed
        # on this machine swings with where the scheduler puts its three processes (the
        # client, the relay, the backend on two cores), the median of several does not.
        for _ in range(args.bulk_repeat):
            for server in order:
                if server.name in ("stunnel3-jail", "stunnel3-warm", "stunnel3-warm-jail"):
                    continue  # the same relay as stunnel3 (the jail holds no bulk backend)
                for direction in ("upload", "download"):
                    try:
                        mbps = measure.bulk(ctx, server, direction)
                    except (OSError, client.SessionError) as error:
                        failures.append(f"{server.name} bulk {direction}: {error}"[:300])
                        continue
                    bulks.setdefault((server.name, direction), []).append(mbps)
    many = {}
    for server in servers:  # the README's line with the helper, under tcpserver's -c 200
        if server.name == "stunnel3-warm-jail":
            result = measure.speed(ctx, server, args.max_clients, args.seconds, 1)
            many[server.name] = {
                "clients": args.max_clients,
                "errors": result.errors,
                "first_error": result.first_error,
                "sessions_per_s": result.per_second,
                "busy": result.busy,
            }
    return {"speeds": speeds, "bulks": bulks, "failures": failures, "many": many}


def limits(ctx: measure.Context, servers: list, smoke: bool) -> dict[str, dict]:
    precision = 64 << 20 if smoke else 256 << 10
    found: dict[str, dict] = {}
    for server in servers:
        softlimit = measure.smallest(
            lambda m, s=server: measure.works_under(ctx, s, m, {}), 1 << 20, 512 << 20, precision
        )
        found[server.name] = {"softlimit": softlimit}
        if server.name.startswith("stunnel3"):
            # Our fronts raise the soft limits to STUNNEL3_MEMORY_FLOOR: what Python needs.
            found[server.name]["floor"] = measure.smallest(
                lambda f, s=server: measure.works_under(
                    ctx, s, 5_000_000, {"STUNNEL3_MEMORY_FLOOR": str(f)}
                ),
                1 << 20,
                512 << 20,
                precision,
            )
    return found


def main(argv: list[str]) -> int:
    args = options(argv)
    if args.from_json:
        report.write(json.loads(args.from_json.read_text()), args.out)
        return 0
    if os.geteuid() != 0:
        print("run.py: run as root (tcpserver, the jail's chown, /proc of other users)")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="stunnel3-bench-"))
    kept = True
    try:
        with throwaway_account() as account:
            status = run(args, argv, workdir, account)
        kept = args.keep or status != 0
        return status
    finally:
        os.chdir("/")
        if kept:  # also after an exception: the servers' logs are there
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def throwaway_account():
    """The README's `setuidgid qmaild`: a fresh account (no home, no shell), removed after.
    None when it cannot be made or cannot run our fixcrio (an install under /root)."""
    name = f"st3b{secrets.token_hex(3)}"
    made = subprocess.run(
        ["useradd", "-M", "-U", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", name],
        capture_output=True, timeout=30, check=False,
    ).returncode == 0  # fmt: skip
    try:
        reachable = made and subprocess.run(
            ["setuidgid", name, str(scripts_dir() / "fixcrio"), "true"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False,
        ).returncode == 0  # fmt: skip
        yield name if reachable else None
    finally:
        if made:
            subprocess.run(["userdel", name], capture_output=True, timeout=30, check=False)
            subprocess.run(["groupdel", name], capture_output=True, timeout=30, check=False)


def installed() -> dict:
    """Which stunnel3 is measured, and whether it is the editable dev install."""
    import stunnel3

    home = Path(stunnel3.__file__).resolve().parent
    return {"scripts": str(scripts_dir()), "package": str(home),
            "editable": "site-packages" not in home.parts}  # fmt: skip


def warm_stats(log: Path) -> dict[str, int | str]:
    """Who served the warm variant's sessions, from stunnel's log lines `LOGn[pid:tid]`: the
    thin stunnel's pid with a worker's tid when the helper served, the same number when the
    direct path did (see docs/warm.md)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    ids = re.findall(r"LOG\d\[(\d+):(\d+)\]: stunnel connected from", text)
    return {
        "helpers": text.count("stunnel3-warm: info: serving"),
        "handed_over": sum(pid != tid for pid, tid in ids),
        "direct": sum(pid == tid for pid, tid in ids),
        "tracebacks": text.count("Traceback"),
        "first_traceback": text[text.find("Traceback") :][:3000] if "Traceback" in text else "",
    }


def run(args: argparse.Namespace, argv: list[str], workdir: Path, account: str | None) -> int:
    started = time.time()
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    workdir.chmod(0o755)
    keys = args.keys.split(",")
    setups = {}
    for key in keys:
        sub = workdir / key
        sub.mkdir()
        sub.chmod(0o755)
        setup = Setup(sub, certs.write_pem(sub, key), args.bulk_mib << 20, account)
        write_backends(setup)
        make_jail(setup)
        setups[key] = setup
    if any(name.startswith("stunnel3") for name in args.servers.split(",")):
        # Before the reaper: startup.py waits for its own children.
        args.profile = startup.profile(str(setups[keys[0]].pem), 3 if args.smoke else 21, keys[0])
    ctx = measure.Context(setups[keys[0]], Reaper(), workdir, setups=setups)
    servers, missing = available(ctx, args.servers.split(","))
    for name, why in missing.items():
        print(f"not measured: {name}: {why}", file=sys.stderr)
    if not any(server.name == "stunnel4" for server in servers):
        print("run.py: stunnel4 does not work here: nothing to compare with", file=sys.stderr)
        return 1
    results = interleaved(ctx, servers, keys, args)
    memories = {server.name: measure.memory(ctx, server, args.hold) for server in servers}
    resumed = {server.name: measure.resumed(ctx, server, RECONNECTIONS) for server in servers}
    # Before the bisection's starved helpers write their lines.
    warm = {
        name: warm_stats(workdir / f"{name}.log")
        for name in ("stunnel3-warm", "stunnel3-warm-jail")
    }
    bounds = {} if args.no_bisect else limits(ctx, servers, args.smoke)
    data = report.collect(args, argv, servers, missing, results, memories, bounds)
    data["resumed"] = {"of": RECONNECTIONS, **resumed}
    data["seconds"] = round(time.time() - started)
    data["machine"]["load at start"] = load_start
    data["install"] = {**installed(), "setuidgid": account}
    data["warm"], data["warm_jail"] = warm["stunnel3-warm"], warm["stunnel3-warm-jail"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(data, indent=1, default=asdict))
    report.write(data, args.out)
    print(f"wrote {args.out / 'benchmarks.md'} in {data['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

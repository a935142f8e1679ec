"""The prose of docs/benchmarks.md around the tables: how to run, what is measured, the machine."""

from pathlib import Path

import targets


def document(data: dict, tables: str) -> str:
    m, p = data["machine"], data["parameters"]
    missing = "".join(f"- not measured: **{n}**: `{why}`\n" for n, why in data["missing"].items())
    missing += "".join(f"- failed: `{what}`\n" for what in data.get("failures", []))
    servers = "".join(f"- **{name}**: {label}\n" for name, label in data["servers"].items())
    client = max(
        (row["client_cpu"] for by_key in data["speed"].values() for row in by_key.values()),
        default=0.0,
    )
    return f"""# Benchmarks: stunnel3, Debian's stunnel4 and tlswrapper-smtp

Written by `bench/run.py`; do not edit by hand. Ratios in parentheses are to stunnel4 measured
in the same run (higher is better for sessions/s and MB/s; lower for CPU, latency and memory).

## How to run it

As root, on a quiet machine, from the top of the checkout. Measure a regular install, as users
have it, not the editable dev install (its finder, and any .pth files of the machine, add tens of
ms to every Python start): the harness measures the stunnel3 of the Python that runs it.

    /usr/bin/python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install -q . matplotlib
    {data["command"]}

`--smoke` runs it with tiny numbers in seconds (the test suite does, into a temporary
directory, so that the harness never rots; no number is ever asserted). `--help` lists the knobs.

## This run

- machine: {m["nproc"]} cores, {m["cpu"]}, Linux {m["kernel"]}; load average (1, 5, 15 min)
  at the start {m.get("load at start", "?")}, at the end {m["load average"]} (the run's own
  load included: the clients and the servers' processes); Python
  {m["python"]}, {m["openssl"]}; {m["stunnel4"]}
- stunnel3 measured: {install_line(data.get("install"))}
- {p["rounds"]} rounds, servers round-robin in a rotated order each round; per round and key:
  {p["latency_n"]} sessions with one client, then {p["seconds"]} s of load from as many
  concurrent clients as saturate the server (from {p["clients"]}, doubling up to
  {p.get("max_clients", "?")} until {p.get("busy", 0.9):.0%} of the cores are busy, in the first
  round; the later rounds use that number); bulk {p["bulk_mib"]} MiB each way
  {bulk_times(p.get("bulk_repeat", 1), "bulk_all" in data)} per round; {p["hold"]} sessions
  held open for memory; {data.get("seconds", "?")} s in all
- the client's own CPU under load peaked at {client:.2f} of one core (of {m["nproc"]})
- {warm_line(data.get("warm"))}
- {warm_line(data.get("warm_jail"), "stunnel3-warm-jail")}

{servers}{missing}
{tables}
![sessions per second, CPU, latency and memory per server](benchmarks.png)
{targets.section(data)}{obstacles_section()}
## What is measured, and how

- **Servers.** Each listens under `tcpserver -R -H -l localhost -c 200 -b 128 127.0.0.1 PORT`
  (no DNS lookup of the local name: a slow resolver would serialise tcpserver; stunnel3's
  daemon mode listens itself), with the same throwaway certificate (RSA-2048 or ECDSA P-256, made
  per run with `cryptography`) and the same backend: `bench/smtp-backend.sh`, a dash script that
  answers EHLO with a multi-line 250 (PIPELINING, 8BITMIME, SIZE) and MAIL/RCPT/DATA/RSET/QUIT.
  exim would spend ~200 ms per session on its own and hide every difference. stunnel4 runs in
  inetd mode (a config with no service section: `cert`, `protocol = smtp`, `exec`, `execArgs`);
  tlswrapper as its manual says (`tlswrapper -n -f pem tlswrapper-smtp backend`); stunnel3 as the
  users run it: `makesock stunnel -p pem -n smtp- -f -F 3 -makesock_connect_to fixcrio backend`;
  the same chain with `stunnel3-warm` serving `./warm` in the server's directory, as
  `stunnel3-setup` makes it (the fronts' default rendezvous; the helper is started with each
  server instance, in its process tree, so its start-up and all its CPU and memory are charged
  to it; see docs/warm.md); the same chain
  with the README's whole set `-/ ssl -s 65534 -g 65534 -i -R seed`, `setuidgid` to a throwaway
  account (the README's qmaild) before fixcrio, and `softlimit -m 5000000` above tcpserver, as the
  README's run script has it; that same line with `stunnel3-warm` running (what an administrator
  runs with the README's script and the helper); and stunnel3's daemon mode,
  `stunnel -d 127.0.0.1:PORT -p pem -n smtp- -f -l backend`. The other stunnel3 servers run with
  `STUNNEL3_WARM=0`. Under load, stunnel4's and tlswrapper's per-connection processes are forked
  by tcpserver and exec C; stunnel3's chain starts Python once per connection (makesock, which
  runs stunnel in its own process and leaves fixcrio out of PROG2: stunnel adds fixcrio's CRs
  itself, docs/makesock.md; makesock forks once, PROG2's keeper, which starts PROG2 with
  posix_spawn, through prlimit(1) under softlimit); with the helper, makesock's sh front
  hands its own process to a worker forked from the helper, and no Python starts per
  connection.
- **Session.** Greeting, EHLO, STARTTLS, handshake, EHLO, QUIT, with Python's `ssl` (no
  certificate verification: the same for all) on blocking sockets, one thread per client.
- **sessions/s**: the clients start sessions for the load time and finish those in flight.
  Sessions completed in the window over its length; but when fewer than two per client
  completed in it (a server slower than the window under this load), all completed sessions
  over the time to the last one. Median over rounds. stunnel4's
  smtp mode waits 200 ms before every greeting (it looks for an implicit-TLS client), so only
  many concurrent clients measure its work rather than that wait: hence the ramp, and the
  **cores busy** column (all cores, from `/proc/stat`, over the load: clients included).
  **capacity** = cores × 1000 ÷ CPU ms per session: what the machine could serve if the
  server had it all; the headline ratio is CPU per session.
- **server CPU ms/session**: this process is a child subreaper; when a server instance is
  stopped and all its processes reaped, `getrusage(RUSAGE_CHILDREN)` has grown by the CPU of its
  whole process tree (tcpserver and the backend included, the same for all), divided by the
  sessions it served.
- **greeting / TLS ready**: from connect() to the 220 greeting and to the end of the handshake,
  one client, sessions in a row; median and p99 over all rounds.
- **memory**: {p["hold"]} sessions held open after the second EHLO; the sum over the server's
  processes (the listener and the backends left out; our sh fronts, waiting for the warm
  workers, counted) of peak RSS (`VmHWM`) and PSS (`/proc/PID/smaps_rollup`), divided by the
  sessions held. For the warm variant that sum includes the helper itself (its PSS is shared
  with its workers).
- **TLS resumed**: after one session, {data.get("resumed", {}).get("of", 6)} more, each offering
  the TLS session (the ticket) the one before got: how many the server resumed. Each
  stunnel3-warm worker configures a context the helper made before forking, so all of them
  seal and open tickets with the same key (docs/warm.md); on the direct path every connection
  has a key of its own.
- **bulk**: one connection through a plain TLS relay (no SMTP: stunnel4 without `protocol`,
  tlswrapper without `-n`, stunnel3 without `-n`) to a backend that reads exactly the bytes then
  says `done` (upload), or writes them (download). MB are 10^6 bytes.
- **smallest softlimit -m**: bisection (to 256 KiB) of `softlimit -m N tcpserver ...` under
  which one whole session still succeeds. stunnel3's sh fronts raise the soft limits to
  `STUNNEL3_MEMORY_FLOOR`, so for it the last column bisects that floor under `softlimit -m
  5000000`, as the users run it.
{profile_section(data.get("profile"))}"""


def bulk_times(repeat: int, listed: bool) -> str:
    times = "once" if repeat == 1 else "twice" if repeat == 2 else f"{repeat} times"
    return times + (" (the table: the median of all; each transfer below it)" if listed else "")


def warm_line(warm, name: str = "stunnel3-warm") -> str:
    if not warm:
        return f"{name}: not run"
    return (
        f"{name}: {warm['helpers']} helper starts; sessions handed to its workers:"
        f" {warm['handed_over']}, served by the direct path: {warm['direct']} (from the log)"
    )


def install_line(install) -> str:
    if not install:
        return "?"
    kind = "the editable dev install" if install["editable"] else "a regular install"
    who = f"`setuidgid {install['setuidgid']}`" if install.get("setuidgid") else "no setuidgid"
    return f"{kind}, `{install['package']}`, programs from `{install['scripts']}`; jail: {who}"


def obstacles_section() -> str:
    """bench/obstacles.md, written by hand with the run: what stands in the way of each
    target the run did not meet, measured as it says."""
    path = Path(__file__).with_name("obstacles.md")
    return "\n" + path.read_text() if path.exists() else ""


def profile_section(profile) -> str:
    if not profile:
        return ""
    pieces = {k: v if isinstance(v, list | tuple) else (v, v) for k, v in profile["pieces"].items()}
    rows = "".join(f"| {what} | {wall:.1f} | {cpu:.1f} |\n" for what, (wall, cpu) in pieces.items())
    imports = "".join(f"| `{name}` | {ms:.1f} |\n" for name, ms in profile["imports"])
    return f"""
## Where stunnel3's time per connection goes

Measured by `bench/startup.py` (medians of {profile["repeat"]} runs; wall-clock and CPU ms,
the CPU of the process and its children; these run before the load, on a quiet machine).
Every connection of the users' chain starts Python once: makesock, which then runs stunnel in
its own process and leaves fixcrio out of PROG2 (stunnel adds its CRs; the fixcrio row says
what a fixcrio of its own would cost). The session's imports leave out what its options never
use (cryptography.x509 and serialization: `stunnel.defer_unused`, `stunnel3/support/on_demand.py`),
and of typing_extensions all but the one decorator pyOpenSSL takes from it.

| piece | wall ms | CPU ms |
|---|---|---|
{rows}
Slowest imports (`python3 -X importtime`, cumulative ms, of `{profile["entry"]}`):

| module | ms |
|---|---|
{imports}"""

"""One measurement of one server: start it, drive it with the client, stop it, charge it.

Each function starts its own server instance so that the CPU the instance used (all of its
process tree, reaped by us as subreaper) belongs to that measurement alone.
"""

import resource
import socket
import ssl
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import client
from servers import Memory, Reaper, Running, Server, Setup, children_cpu, free_port, session_memory


@dataclass
class Context:
    """What the measurements of one run share."""

    setup: Setup
    reaper: Reaper
    logdir: Path
    env: dict[str, str] = field(default_factory=dict)
    setups: dict[str, Setup] = field(default_factory=dict)  # by key type; `setup` is in use

    def port(self) -> int:
        return free_port()


def start(ctx: Context, server: Server, mode: str, port: int, prefix=(), env=None) -> Running:
    """The server on port; `prefix` (the bisection's softlimit) replaces server.prefix()."""
    argv = [*(prefix or server.prefix()), *server.command(ctx.setup, port, mode)]
    log = ctx.logdir / f"{server.name}.log"
    env = {**ctx.env, **server.env(ctx.setup), **(env or {})}
    running = Running(argv, log, ctx.setup.workdir, env)
    if not running.wait_listening(port, ctx.reaper):
        running.stop(ctx.reaper)
        raise RuntimeError(f"{server.name} did not listen on {port} (see {log})")
    return running


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all the machine's cores so far, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    total = sum(fields[:8])  # guest time is counted in user already
    return total - idle, total


def busy_since(before: tuple[int, int]) -> float:
    """The fraction of the machine's cores that were busy since `before` (cpu_ticks())."""
    busy, total = cpu_ticks()
    return (busy - before[0]) / max(total - before[1], 1)


@dataclass
class Speed:
    per_second: float  # whole STARTTLS sessions per second under load (client.saturate)
    errors: int
    clients: int
    busy: float  # fraction of all cores busy during the load (everything on the machine)
    server_cpu_ms: float  # per session, the whole process tree (tcpserver and backend too)
    client_cpu_share: float  # of one core, during the load
    latencies: list[client.Session]
    tls: str
    first_error: str


def speed(ctx: Context, server: Server, clients: int, seconds: float, one_by_one: int) -> Speed:
    """Latency with one client, then throughput with many, on one instance."""
    port = ctx.port()
    cpu_before = children_cpu()
    running = start(ctx, server, "smtp", port)
    try:
        latencies = client.one_by_one(port, one_by_one)
        mine, ticks = self_cpu(), cpu_ticks()
        load = client.saturate(port, clients, seconds)
        busy = busy_since(ticks)
        client_share = (self_cpu() - mine) / seconds
    finally:
        running.stop(ctx.reaper)
    served = load.completed + len(latencies)
    cpu = children_cpu() - cpu_before
    return Speed(
        per_second=rate(load, clients),
        errors=load.errors,
        clients=clients,
        busy=busy,
        server_cpu_ms=1000 * cpu / max(served, 1),
        client_cpu_share=client_share,
        latencies=latencies,
        tls=", ".join(sorted(load.versions)),
        first_error=load.first_error,
    )


def rate(load: client.LoadResult, clients: int) -> float:
    """Sessions per second. A server that completes many sessions per client in the window is
    rated by those alone (one straggler must not stretch its time); a server slower than the
    window by all completed sessions over the time to the last one (not by a near-zero count)."""
    if load.sessions >= 2 * clients:
        return load.sessions / load.seconds
    return load.completed / load.elapsed if load.elapsed else 0.0


def bulk(ctx: Context, server: Server, direction: str) -> float:
    """MB/s (10^6) of one connection moving setup.bulk_bytes through a plain TLS relay."""
    port = ctx.port()
    running = start(ctx, server, direction, port)
    try:
        move = client.bulk_upload if direction == "upload" else client.bulk_download
        seconds = move(port, ctx.setup.bulk_bytes)
    finally:
        running.stop(ctx.reaper)
    return ctx.setup.bulk_bytes / seconds / 1e6


def hold_sessions(port: int, count: int) -> list[ssl.SSLSocket]:
    """count sessions taken as far as EHLO after TLS, then left open."""
    context = client.client_context()
    held = []
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", port), timeout=client.TIMEOUT)
        buffer = bytearray()
        client.expect(raw, buffer, b"220")
        raw.sendall(b"EHLO client.invalid\r\nSTARTTLS\r\n")
        client.expect(raw, buffer, b"250")
        client.expect(raw, buffer, b"220")
        tls = context.wrap_socket(raw, server_hostname="localhost")
        tls.sendall(b"EHLO client.invalid\r\n")
        client.expect(tls, bytearray(), b"250")
        held.append(tls)
    return held


def memory(ctx: Context, server: Server, count: int) -> Memory:
    """Peak RSS and PSS that each of `count` open sessions adds (backends and the listener not
    counted), in KiB per session."""
    port = ctx.port()
    running = start(ctx, server, "smtp", port)
    held: list[ssl.SSLSocket] = []
    try:
        held = hold_sessions(port, count)
        time.sleep(0.3)
        backends = tuple(ctx.setup.backend(mode) for mode in ("smtp", "upload", "download"))
        total = session_memory(running.pid, backends)
    finally:
        for tls in held:
            tls.close()
        running.stop(ctx.reaper)
    return Memory(round(total.processes / count, 1), total.rss_kib // count, total.pss_kib // count)


def resumed(ctx: Context, server: Server, count: int) -> int:
    """How many of `count` reconnections resume the session they offer (TLS tickets)."""
    port = ctx.port()
    running = start(ctx, server, "smtp", port)
    try:
        return client.resumptions(port, count)
    finally:
        running.stop(ctx.reaper)


def works_under(ctx: Context, server: Server, limit: int, env: dict[str, str]) -> bool:
    """Whether a whole STARTTLS session succeeds with `softlimit -m limit` above tcpserver. A
    failure counts only if it happens twice: one stray failure (seen once on a busy machine, at
    128 MB for a server that works under 3 MB) would send the bisection far off."""
    return any(session_under(ctx, server, limit, env) for _ in range(2))


def session_under(ctx: Context, server: Server, limit: int, env: dict[str, str]) -> bool:
    port = ctx.port()
    try:
        running = start(ctx, server, "smtp", port, ("softlimit", "-m", str(limit)), env)
    except RuntimeError:
        return False
    try:
        client.starttls_session(port, client.client_context())
        return True
    except (OSError, client.SessionError):
        return False
    finally:
        running.stop(ctx.reaper)


def smallest(works, low: int, high: int, precision: int) -> int | None:
    """The smallest value in (low, high] for which works() holds (assumed monotone), to within
    precision; None if even high fails."""
    if not works(high):
        return None
    while high - low > precision:
        middle = (low + high) // 2
        if works(middle):
            high = middle
        else:
            low = middle
    return high


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")

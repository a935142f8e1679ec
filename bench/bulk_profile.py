"""Bulk throughput of the relay, alone and side by side with stunnel4 (issue 8).

Two ways to run it, as root from the top of the checkout:

    python3 bench/bulk_profile.py inproc --direction download --mib 256 [--profile]
        The Relay in this process between two socketpairs: a forked Python ssl client on the
        network side, a forked plain reader or writer on the backend side. --profile prints
        cProfile's top functions of the relay alone (the peers are other processes).

    python3 bench/bulk_profile.py e2e --rounds 3 --mib 512
        The same bulk transfer bench/run.py makes (same client, same backends, same kind of
        certificate), servers interleaved in a rotated order each round: stunnel4 (inetd under
        tcpserver), stunnel3 under tcpserver + makesock (-F 3), stunnel3's daemon mode. Prints
        MB/s (10^6) per run, the median per server and direction, and the ratio to stunnel4.

It is a tool for a person, not a test: nothing here asserts a number.
"""

import argparse
import cProfile
import os
import pstats
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import certs  # noqa: E402
import client  # noqa: E402
import servers  # noqa: E402

MIB = 1 << 20


class QuietLog:
    level = 0

    def log(self, level, text):
        pass

    err = warning = notice = info = debug = lambda self, text: None


def _forked(work) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            work()
        finally:
            os._exit(0)
    return pid


def _client(sock: socket.socket, direction: str, nbytes: int) -> None:
    tls = client.client_context().wrap_socket(sock, server_hostname="localhost")
    if direction == "upload":
        block = bytes(client.CHUNK)
        left = nbytes
        while left > 0:
            tls.sendall(block[: min(left, client.CHUNK)])
            left -= client.CHUNK
        tls.unwrap()
    else:
        buffer = bytearray(client.CHUNK)
        while tls.recv_into(buffer):
            pass
    sock.close()


def _backend(sock: socket.socket, direction: str, nbytes: int) -> None:
    if direction == "upload":
        while sock.recv(1 << 20):
            pass
    else:
        block = bytes(client.CHUNK)
        left = nbytes
        while left > 0:
            sock.sendall(block[: min(left, client.CHUNK)])
            left -= client.CHUNK
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    sock.close()


def _head(sock: socket.socket, direction: str, nbytes: int) -> None:
    """bench/run.py's backends: head(1) reads and writes in small blocks (4 KiB here)."""
    fd = sock.detach()
    if direction == "upload":
        os.dup2(fd, 0)
        os.execvp("sh", ["sh", "-c", f"head -c {nbytes} >/dev/null && echo done >&0"])
    os.dup2(fd, 1)
    os.execvp("head", ["head", "-c", str(nbytes), "/dev/zero"])


def inproc(args) -> None:
    from stunnel3.engine.endpoints import Endpoint
    from stunnel3.layers.protocol import Passthrough
    from stunnel3.options import Options
    from stunnel3.relay import Relay
    from stunnel3.tls import TlsSession, make_context

    nbytes = args.mib * MIB
    workdir = Path(tempfile.mkdtemp(prefix="bulk-profile-"))
    ctx = make_context(Options(pem=str(certs.write_pem(workdir, args.key))), QuietLog())
    net_ours, net_theirs = socket.socketpair()
    back_ours, back_theirs = socket.socketpair()
    everything = (net_ours, net_theirs, back_ours, back_theirs)

    def only(keep, work):  # each peer holds its own end alone, or EOF never comes
        for sock in everything:
            if sock is not keep:
                sock.close()
        work(keep, args.direction, nbytes)

    backend = _backend if not args.head else _head
    peers = [_forked(lambda: only(net_ours, _client)), _forked(lambda: only(back_ours, backend))]
    net_ours.close()
    back_ours.close()
    net_fd, back_fd = net_theirs.detach(), back_theirs.detach()
    relay = Relay(
        Endpoint(net_fd, net_fd, "network"),
        Endpoint(back_fd, back_fd, "backend"),
        Passthrough(),
        lambda: TlsSession(ctx, server=True),
        QuietLog(),
    )
    passes = [0]
    one_pass = relay._pass

    def counted() -> bool:
        passes[0] += 1
        return one_pass()

    relay._pass = counted  # type: ignore[method-assign]
    profile = cProfile.Profile() if args.profile else None
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu, wall = time.process_time(), time.perf_counter()
    if profile:
        profile.enable()
    relay.run()
    if profile:
        profile.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    relay.client.close()
    relay.backend.close()
    for pid in peers:
        os.waitpid(pid, 0)
    print(
        f"inproc {args.direction} {args.mib} MiB: {nbytes / wall / 1e6:.0f} MB/s, "
        f"relay CPU {cpu:.2f} s of {wall:.2f} s, {faults} page faults, "
        f"{passes[0]} passes ({nbytes / max(passes[0], 1) / 1024:.0f} KiB each)"
    )
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


def e2e(args) -> None:
    names = args.servers.split(",")
    chosen = [server for server in servers.SERVERS if server.name in names]
    workdir = Path(tempfile.mkdtemp(prefix="bulk-e2e-"))
    setup = servers.Setup(workdir, certs.write_pem(workdir, args.key), args.mib * MIB)
    servers.write_backends(setup)
    reaper = servers.Reaper()
    results: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}  # server tree CPU seconds per byte
    for round_no in range(args.rounds):
        turn = round_no % len(chosen)
        for server in chosen[turn:] + chosen[:turn]:
            for direction in args.directions.split(","):
                port = servers.free_port()
                argv = server.command(setup, port, direction)
                running = servers.Running(argv, workdir / f"{server.name}.log", workdir, {})
                try:
                    if not running.wait_listening(port, reaper):
                        raise RuntimeError(f"{server.name} did not listen")
                    cpu = servers.children_cpu()
                    move = client.bulk_upload if direction == "upload" else client.bulk_download
                    seconds = move(port, setup.bulk_bytes)
                finally:
                    running.stop(reaper)
                server_cpu = servers.children_cpu() - cpu
                mbps = setup.bulk_bytes / seconds / 1e6
                results.setdefault((server.name, direction), []).append(mbps)
                cpus.setdefault((server.name, direction), []).append(server_cpu / setup.bulk_bytes)
                print(
                    f"round {round_no} {server.name:16} {direction:8} {mbps:6.0f} MB/s "
                    f"(server tree CPU {server_cpu:.2f} s of {seconds:.2f} s)",
                    flush=True,
                )
    print()
    for direction in args.directions.split(","):
        base = statistics.median(results.get(("stunnel4", direction), [0.0])) or None
        for server in chosen:
            values = results.get((server.name, direction), [])
            if not values:
                continue
            median = statistics.median(values)
            ratio = f" ({median / base:.2f}x)" if base else ""
            spread = ", ".join(f"{v:.0f}" for v in values)
            gib_cpu = statistics.median(cpus[(server.name, direction)]) * (1 << 30)
            print(
                f"{direction:8} {server.name:16} median {median:6.0f} MB/s{ratio}  [{spread}]"
                f"  server CPU {gib_cpu:.2f} s/GiB"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["inproc", "e2e"])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--key", default="rsa")
    parser.add_argument("--direction", default="download", choices=["upload", "download"])
    parser.add_argument("--directions", default="upload,download")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--head", action="store_true", help="inproc: head(1) as the backend")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default="stunnel4,stunnel3,stunnel3-daemon")
    args = parser.parse_args()
    inproc(args) if args.mode == "inproc" else e2e(args)


if __name__ == "__main__":
    main()

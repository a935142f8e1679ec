"""Turn one run's measurements into benchmarks.json, benchmarks.md and benchmarks.png."""

import os
import platform
import shlex
import ssl
import subprocess
import sys
from pathlib import Path

import measure

BASE = "stunnel4"


def machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        platform.processor(),
    )
    stunnel4 = subprocess.run(
        ["stunnel4", "-version"],
        capture_output=True,
        text=True,
        timeout=10,
        stdin=subprocess.DEVNULL,
    )
    version = next((x for x in stunnel4.stderr.splitlines() if x.startswith("stunnel ")), "?")
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "stunnel4": version,
        "load average": " ".join(open("/proc/loadavg").read().split()[:3]),
    }


def python_name() -> str:
    """How the command names the Python that ran it: a venv's by its path (that is what says
    which stunnel3 was measured), else python3."""
    return sys.executable if sys.prefix != sys.base_prefix else "python3"


def collect(args, argv, servers, missing, results, memories, bounds) -> dict:
    rows: dict = {}
    for (name, key), runs in results["speeds"].items():
        greet = [1000 * s.greeting for run in runs for s in run.latencies]
        ready = [1000 * s.tls_ready for run in runs for s in run.latencies]
        rows.setdefault(name, {})[key] = {
            "sessions_per_s": measure.median([run.per_second for run in runs]),
            "per_round": [round(run.per_second, 1) for run in runs],
            "errors": sum(run.errors for run in runs),
            "clients": max(run.clients for run in runs),
            "busy": measure.median([run.busy for run in runs]),
            "first_error": next((run.first_error for run in runs if run.first_error), ""),
            "cpu_ms": measure.median([run.server_cpu_ms for run in runs]),
            "client_cpu": max(run.client_cpu_share for run in runs),
            "greeting_ms": [measure.median(greet), measure.percentile(greet, 0.99)],
            "tls_ready_ms": [measure.median(ready), measure.percentile(ready, 0.99)],
            "tls": runs[-1].tls,
        }
    bulk: dict = {}
    bulk_all: dict = {}
    for (name, direction), values in results["bulks"].items():
        bulk.setdefault(name, {})[direction] = measure.median(values)
        bulk_all.setdefault(name, {})[direction] = values
    return {
        "command": shlex.join([python_name(), "bench/run.py", *argv]),
        "machine": machine(),
        "parameters": {
            k: getattr(args, k)
            for k in (
                "rounds",
                "clients",
                "max_clients",
                "busy",
                "seconds",
                "latency_n",
                "bulk_mib",
                "bulk_repeat",
                "hold",
                "keys",
            )
        },
        "servers": {server.name: server.label for server in servers},
        "missing": missing,
        "failures": results["failures"],
        "speed": rows,
        "bulk": bulk,
        "bulk_all": bulk_all,
        "memory": {name: vars(mem) for name, mem in memories.items()},
        "many": results.get("many", {}),
        "limits": bounds,
        "profile": getattr(args, "profile", None),
    }


def ratio(value, base) -> str:
    if value is None or base in (None, 0) or value != value or base != base:
        return ""
    return f" ({value / base:.2f}×)"


def speed_table(data: dict, key: str) -> list[str]:
    lines = [
        f"### Sessions, {key.upper()} certificate",
        "",
        "| server | server CPU ms/session | capacity sessions/s | sessions/s | clients "
        "| cores busy | greeting ms (median, p99) | TLS ready ms (median, p99) | errors | TLS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = data["speed"].get(BASE, {}).get(key, {})
    cores = data["machine"]["nproc"]
    for name, by_key in data["speed"].items():
        row = by_key.get(key)
        if not row:
            continue
        greet, ready = row["greeting_ms"], row["tls_ready_ms"]
        capacity = cores * 1000 / row["cpu_ms"] if row["cpu_ms"] else float("nan")
        lines.append(
            f"| {name} | {row['cpu_ms']:.1f}{ratio(row['cpu_ms'], base.get('cpu_ms'))} "
            f"| {capacity:.0f} | {row['sessions_per_s']:.1f}"
            f"{ratio(row['sessions_per_s'], base.get('sessions_per_s'))} "
            f"| {row.get('clients', '?')} | {row.get('busy', float('nan')):.2f} "
            f"| {greet[0]:.1f}, {greet[1]:.1f} | {ready[0]:.1f}, {ready[1]:.1f}"
            f"{ratio(ready[0], base.get('tls_ready_ms', [None])[0])} "
            f"| {row['errors']} | {row['tls']} |"
        )
    return lines + [""]


def resource_table(data: dict) -> list[str]:
    lines = [
        "### Memory, bulk throughput, memory limit",
        "",
        "| server | processes/session | peak RSS KiB/session | PSS KiB/session "
        "| upload MB/s | download MB/s | TLS resumed | smallest softlimit -m "
        "| smallest STUNNEL3_MEMORY_FLOOR |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    mem, bulk, lim = data["memory"], data["bulk"], data["limits"]
    resumed = data.get("resumed", {})
    b_mem, b_bulk, b_lim = mem.get(BASE, {}), bulk.get(BASE, {}), lim.get(BASE, {})
    for name in data["servers"]:
        m, b, limit = mem.get(name, {}), bulk.get(name, {}), lim.get(name, {})

        def cell(table, base, field, fmt="{:.0f}"):
            value = table.get(field)
            return "–" if value is None else fmt.format(value) + ratio(value, base.get(field))

        floor = limit.get("floor")
        lines.append(
            f"| {name} | {m.get('processes', '–')} | {cell(m, b_mem, 'rss_kib')} "
            f"| {cell(m, b_mem, 'pss_kib')} | {cell(b, b_bulk, 'upload')} "
            f"| {cell(b, b_bulk, 'download')} "
            f"| {resumed[name] if name in resumed else '–'} of {resumed.get('of', '–')} "
            f"| {cell(limit, b_lim, 'softlimit')} "
            f"| {'–' if floor is None else floor} |"
        )
    transfers = data.get("bulk_all", {})
    if transfers:
        lines += ["", "Every bulk transfer of the run, MB/s in the order made:", ""]
        for name, directions in transfers.items():
            each = "; ".join(f"{direction} {', '.join(f'{v:.0f}' for v in values)}"
                             for direction, values in directions.items())  # fmt: skip
            lines.append(f"- {name}: {each}")
    return lines + [""]


def write(data: dict, out: Path) -> None:
    from text import document  # the prose lives apart from the table code

    plot(data, out / "benchmarks.png")
    tables = [
        line for key in data["parameters"]["keys"].split(",") for line in speed_table(data, key)
    ]
    tables += resource_table(data)
    (out / "benchmarks.md").write_text(document(data, "\n".join(tables)))


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data["servers"])
    keys = data["parameters"]["keys"].split(",")
    figure, axes = plt.subplots(2, 2, figsize=(12, 8))

    def row(n: str, k: str) -> dict:  # a failed measurement plots as 0
        return (
            data["speed"].get(n, {}).get(k, {"sessions_per_s": 0, "cpu_ms": 0, "tls_ready_ms": [0]})
        )

    panels = [
        ("sessions/s (saturating load)", lambda n, k: row(n, k)["sessions_per_s"]),
        ("server CPU ms per session", lambda n, k: row(n, k)["cpu_ms"]),
        ("TLS ready ms, one client (median)", lambda n, k: row(n, k)["tls_ready_ms"][0]),
    ]
    width = 0.8 / len(keys)
    for axis, (title, value) in zip(axes.flat, panels, strict=False):
        for i, key in enumerate(keys):
            xs = [j + i * width for j in range(len(names))]
            axis.bar(xs, [value(n, key) for n in names], width, label=key.upper())
        axis.set_title(title)
        if "sessions/s" in title or "CPU" in title:
            axis.set_yscale("log")  # stunnel3's chain and the C servers differ 10-50 fold
        axis.set_xticks([j + width * (len(keys) - 1) / 2 for j in range(len(names))], names)
        axis.tick_params(axis="x", labelrotation=20)
        axis.legend()
    axis = axes.flat[3]
    pss = [data["memory"].get(n, {}).get("pss_kib", 0) / 1024 for n in names]
    rss = [data["memory"].get(n, {}).get("rss_kib", 0) / 1024 for n in names]
    axis.bar([j - 0.2 for j in range(len(names))], rss, 0.4, label="peak RSS")
    axis.bar([j + 0.2 for j in range(len(names))], pss, 0.4, label="PSS")
    axis.set_title(f"MiB per open session ({data['parameters']['hold']} held)")
    axis.set_xticks(range(len(names)), names)
    axis.tick_params(axis="x", labelrotation=20)
    axis.legend()
    figure.suptitle(f"stunnel3 vs stunnel4 vs tlswrapper — {data['machine']['cpu']}, "
                    f"{data['machine']['nproc']} cores")  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)

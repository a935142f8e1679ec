"""Issue #8's targets, checked against one run's numbers, and what the start-up profile says
stands in the way of those not met. Every number here comes from the run's json."""

BASE = "stunnel4"


def _rate(data: dict, name: str, key: str) -> float | None:
    return data["speed"].get(name, {}).get(key, {}).get("sessions_per_s")


def _cpu(data: dict, name: str, key: str) -> float | None:
    return data["speed"].get(name, {}).get(key, {}).get("cpu_ms")


def _row(what: str, value: str, ratio: float | None, goal: float, higher: bool = True) -> tuple:
    if ratio is None:
        return (what, value, "–", "not measured")
    met = ratio >= goal if higher else ratio <= goal
    return (what, value, f"{ratio:.2f}×", "**met**" if met else "**not met**")


def rows(data: dict) -> list[tuple]:
    keys = data["parameters"]["keys"].split(",")
    found = []
    for name, goal, what in (
        ("stunnel3", 0.5, "users' chain sessions/s ≥ 0.5×"),
        ("stunnel3-warm", 0.5, "users' chain + warm helper sessions/s ≥ 0.5×"),
        ("stunnel3-warm-jail", 0.5, "the README's run script (jail) + warm helper ≥ 0.5×"),
        ("stunnel3-daemon", 1.0, "daemon sessions/s ≥ 1.0×"),
    ):
        for key in keys:
            mine, base = _rate(data, name, key), _rate(data, BASE, key)
            ratio = mine / base if mine is not None and base else None
            value = f"{mine:.1f} vs {base:.1f}" if ratio is not None else "–"
            found.append(_row(f"{what}, {key.upper()}", value, ratio, goal))
    pss = data["memory"].get("stunnel3-daemon", {}).get("pss_kib")
    rss = data["memory"].get(BASE, {}).get("rss_kib")
    ratio = pss / rss if pss is not None and rss else None
    value = f"{pss} vs {rss} KiB" if ratio is not None else "–"
    found.append(_row("daemon PSS/connection ≤ stunnel4's RSS", value, ratio, 1.0, higher=False))
    for name in ("stunnel3", "stunnel3-daemon"):
        for direction in ("upload", "download"):
            mine = data["bulk"].get(name, {}).get(direction)
            base = data["bulk"].get(BASE, {}).get(direction)
            ratio = mine / base if mine is not None and base else None
            value = f"{mine:.0f} vs {base:.0f} MB/s" if ratio is not None else "–"
            found.append(_row(f"bulk {direction} ≥ 1.0× ({name})", value, ratio, 1.0))
    return found


def _piece(profile: dict, prefix: str) -> float | None:
    """CPU ms of the start-up piece whose label starts with prefix."""
    for label, value in profile["pieces"].items():
        if label.startswith(prefix):
            return value[1] if isinstance(value, list | tuple) else value
    return None


def obstacles(data: dict) -> str:
    """The chain's CPU per session next to what starting Python costs, from bench/startup.py."""
    profile, key = data.get("profile"), data["parameters"]["keys"].split(",")[0]
    base, chain, warm = (_cpu(data, n, key) for n in (BASE, "stunnel3", "stunnel3-warm"))
    if not profile or base is None or chain is None:
        return ""
    start = _piece(profile, "python -I -S -c pass") or 0.0
    path = _piece(profile, "+ the front's path") or 0.0
    modules = _piece(profile, "+ import the session's modules") or 0.0
    fixcrio = _piece(profile, "fixcrio as installed") or 0.0
    handshake = _piece(profile, "server side of one") or 0.0
    text = (
        f"With the {key.upper()} certificate stunnel4 spends {base:.1f} ms of CPU per session"
        f" (its whole process tree), the users' chain {chain:.1f} ms. A session needs one"
        f" server-side handshake ({handshake:.1f} ms in memory) and a few small writes; the rest"
        f" of the chain's time is starting Python and importing pyOpenSSL, once per connection"
        f" (makesock runs stunnel in its own process, and leaves fixcrio out of PROG2: stunnel"
        f" adds its CRs; a fixcrio of its own would cost {fixcrio:.1f} more). From"
        f" `bench/startup.py` (CPU ms of a whole process, medians): a bare `python -I -S` costs"
        f" {start:.1f}; with the front's path and `import stunnel3`, {path:.1f}; with a session's"
        f" modules imported (pyOpenSSL, `cryptography`, ours), {modules:.1f} ms before the first"
        f" byte of TLS, on every connection: {modules / base:.1f} times stunnel4's whole session."
    )
    slowest = ", ".join(f"`{name}` {ms:.0f} ms" for name, ms in profile["imports"][:4])
    text += f" The slowest imports (cumulative, `-X importtime`; table below): {slowest}."
    if warm is not None:
        text += (
            f" The warm helper removes the import ({warm:.1f} ms per session, helper included):"
            f" each connection then starts one interpreter, the thin stunnel in makesock's process"
            f" (≈ {path:.0f} ms), and adds one fork of the helper's large process (its page"
            f" tables are copied, and torn down when the worker exits), the descriptor handoff"
            f" and the relay in Python."
        )
    slow = [r for r in rows(data) if r[0].startswith("bulk") and r[3] == "**not met**"]
    if slow:
        text += (
            "\n\nBulk: one connection's relay is a Python loop around OpenSSL's record layer"
            " (poll, recv/SSL_write, SSL_read/writev); per 16 KiB record it pays interpreter"
            " work that stunnel4's C loop does not. `bench/bulk_profile.py` measures that loop"
            " in-process, side by side with stunnel4."
        )
    return text


def section(data: dict) -> str:
    table = "".join(f"| {' | '.join(row)} |\n" for row in rows(data))
    return f"""
## Issue #8's targets in this run

Ratios to stunnel4 measured in the same run (ours vs stunnel4).

| target | ours vs stunnel4 | ratio | |
|---|---|---|---|
{table}
{obstacles(data)}
"""

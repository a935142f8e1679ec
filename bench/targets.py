"""Issue #13's targets, checked against one run's numbers. Every number here comes from the
run's json. A target on sessions or CPU counts as met only from a saturated run: one in which
the cores were at least --busy busy (stunnel4 waits 200 ms before every greeting, so an
unsaturated rate measures that wait, not the work)."""

BASE = "stunnel4"
WARM_LINE = "stunnel3-warm-jail"  # the README's whole run-script line with the helper
JAIL_LINE = "stunnel3-jail"  # the same line without it


def _row(what: str, value: str, ratio: float | None, goal: float, saturated: bool = True,
         higher: bool = False) -> tuple:  # fmt: skip
    if ratio is None:
        return (what, value, "–", "not measured")
    met = ratio >= goal if higher else ratio <= goal
    verdict = "**met**" if met else "**not met**"
    if met and not saturated:
        verdict = "not saturated"
    return (what, value, f"{ratio:.2f}×", verdict)


def _speed(data: dict, name: str, key: str) -> dict:
    return data["speed"].get(name, {}).get(key, {})


def rows(data: dict) -> list[tuple]:
    keys = data["parameters"]["keys"].split(",")
    busy = data["parameters"].get("busy", 0.9)
    found = []
    for name, goal, what in (
        (WARM_LINE, 1.5, "the README's line + helper, CPU/session ≤ 1.5×"),
        (JAIL_LINE, 7.0, "the README's line, no helper, CPU/session ≤ 7×"),
        ("stunnel3-daemon", 0.8, "daemon mode, CPU/session ≤ 0.8×"),
    ):
        for key in keys:
            mine, base = _speed(data, name, key), _speed(data, BASE, key)
            if not mine.get("cpu_ms") or not base.get("cpu_ms"):
                found.append(_row(f"{what}, {key.upper()}", "–", None, goal))
                continue
            saturated = min(mine.get("busy", 0), base.get("busy", 0)) >= busy
            value = (f"{mine['cpu_ms']:.1f} vs {base['cpu_ms']:.1f} ms"
                     f" (busy {mine.get('busy', 0):.2f}, {base.get('busy', 0):.2f})")  # fmt: skip
            found.append(_row(f"{what}, {key.upper()}", value, mine["cpu_ms"] / base["cpu_ms"],
                              goal, saturated))  # fmt: skip
    pss = data["memory"].get(WARM_LINE, {}).get("pss_kib")
    base_pss = data["memory"].get(BASE, {}).get("pss_kib")
    ratio = pss / base_pss if pss and base_pss else None
    value = f"{pss} vs {base_pss} KiB" if ratio is not None else "–"
    found.append(_row("the README's line + helper, PSS/open session ≤ 2.0×", value, ratio, 2.0))
    many = data.get("many", {}).get(WARM_LINE)
    if many:
        found.append((f"the README's line + helper, errors with {many['clients']} clients",
                      f"{many['errors']} errors, {many['sessions_per_s']:.1f}/s",
                      "–", "**met**" if many["errors"] == 0 else "**not met**"))  # fmt: skip
    greeting = _speed(data, WARM_LINE, keys[0]).get("greeting_ms")
    if greeting:
        found.append(_row("the README's line + helper, greeting p99 ≤ 25 ms (one client)",
                          f"{greeting[1]:.1f} ms", greeting[1] / 25, 1.0))  # fmt: skip
    for name in ("stunnel3", "stunnel3-daemon"):
        for direction in ("upload", "download"):
            mine = data["bulk"].get(name, {}).get(direction)
            base = data["bulk"].get(BASE, {}).get(direction)
            ratio = mine / base if mine is not None and base else None
            value = f"{mine:.0f} vs {base:.0f} MB/s" if ratio is not None else "–"
            found.append(_row(f"bulk {direction} ≥ 1.0× ({name})", value, ratio, 1.0,
                              higher=True))  # fmt: skip
    return found


def section(data: dict) -> str:
    table = "".join(f"| {' | '.join(row)} |\n" for row in rows(data))
    return f"""
## Issue #13's targets in this run

Ratios to stunnel4 measured in the same run (ours vs stunnel4). CPU is per session, the whole
process tree of the server (helper included), from a run in which the cores were busy;
"not saturated" marks a ratio that would meet its target but comes from a run in which the
cores were less than {data["parameters"].get("busy", 0.9):.0%} busy.

| target | ours vs stunnel4 | ratio | |
|---|---|---|---|
{table}"""

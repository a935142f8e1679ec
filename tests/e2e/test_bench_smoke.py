"""bench/run.py --smoke: the benchmark harness still drives every server end to end.

No number is asserted (this is not a timed test): only that every server was measured, every
session succeeded and the report was written.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVERS = {
    "stunnel4",
    "tlswrapper",
    "stunnel3",
    "stunnel3-warm",
    "stunnel3-jail",
    "stunnel3-warm-jail",
    "stunnel3-daemon",
}
SAME_RELAY = {"stunnel3-jail", "stunnel3-warm", "stunnel3-warm-jail"}  # no bulk of their own


def test_bench_smoke_measures_every_server(tmp_path, stunnel_bin):
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert data["missing"] == {}
    assert set(data["servers"]) == SERVERS
    for name in SERVERS:
        for key in ("rsa", "ecdsa"):
            row = data["speed"][name][key]
            assert row["errors"] == 0, (name, key, row["first_error"])
            assert row["cpu_ms"] > 0 and len(row["tls_ready_ms"]) == 2
            assert row["tls"].startswith("TLSv1.")
        assert data["memory"][name]["processes"] >= 1
        assert data["limits"][name]["softlimit"] is not None
        if name not in SAME_RELAY:
            assert set(data["bulk"][name]) == {"upload", "download"}
    assert data["limits"]["stunnel3"]["floor"] is not None
    # The warm variant was served by the helper's workers, not by the direct path.
    for warm in (data["warm"], data["warm_jail"]):
        assert warm["helpers"] > 0 and warm["handed_over"] > 0, warm
        assert warm["direct"] == 0 and warm["tracebacks"] == 0, warm
    assert set(data["profile"]["pieces"]) and data["profile"]["imports"]
    text = (tmp_path / "benchmarks.md").read_text()
    assert data["command"] in text and "| stunnel3-daemon |" in text
    assert (tmp_path / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The helper's workers share one ticket key: every reconnection resumed (docs/warm.md).
    for warm in ("stunnel3-warm", "stunnel3-warm-jail", "stunnel3-daemon"):
        assert data["resumed"][warm] == data["resumed"]["of"], data["resumed"]


def test_fork_pages_reports_both_sides_of_a_warm_fork():
    """bench/fork_pages.py still loads what the helper loads, forks and reads both page maps
    (root reads frame numbers: CI runs as root)."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fork_pages.py"), "--calls", "50"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    last = run.stdout.splitlines()[-1].split()
    assert last[0] == "all" and int(last[2]) > 0, run.stdout  # the child wrote some pages
    assert "[anon]" in run.stdout and "(KiB, 50 calls)" in run.stdout

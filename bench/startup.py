#!/usr/bin/env python3
"""Where one stunnel3 connection's start-up time goes: the sh front, the interpreter, the
imports, the context load, the handshake. Each piece is timed on its own (median of N runs).

    python3 bench/startup.py [N]      # prints JSON; bench/run.py includes it in the report
"""

import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(sysconfig.get_path("scripts"))
# What a session of `stunnel -n smtp- -F 3` loads (those that exist yet), after what its
# options let it leave unloaded (stunnel.defer_unused: cryptography.x509 and the like).
SESSION_MODULES = ["stunnel3.stunnel", "stunnel3.engine.service", "stunnel3.relay", "stunnel3.smtp",
                   "stunnel3.tls", "OpenSSL.SSL"]  # fmt: skip
SESSION_ARGS = ["-p", "stunnel.pem", "-n", "smtp-", "-f", "-F", "3"]
DEFERRAL = f"""try:
    from stunnel3 import stunnel
    from stunnel3.options import parse
    stunnel.defer_unused(parse({SESSION_ARGS!r}))
except (ImportError, AttributeError):  # an older stunnel3: it loads them all
    pass
"""
# The fronts' own way in: -I -S, then site-packages by hand, no .pth files (see bin/stunnel).
PRELUDE = """import sys, site
add, site.addsitepackages = site.addsitepackages, lambda known_paths, prefixes=None: None
site.venv(None)
site.addsitepackages = add
sys.path += site.getsitepackages()
try:
    import stunnel3
except ImportError:  # an editable install: its path comes from a .pth file
    site.main()
"""


def cost(argv: list[str], repeat: int, env: dict | None = None) -> tuple[float, float]:
    """Medians of wall-clock ms and of CPU ms (user + system, the process and its children) of
    running argv to its end. CPU is what limits sessions per second, and it is less disturbed
    than wall time by others' work on a shared machine."""
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60, check=True)  # fmt: skip
        walls.append(1000 * (time.perf_counter() - start))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(1000 * (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime))
    return statistics.median(walls), statistics.median(cpus)


def present(modules: list[str]) -> list[str]:
    found = []
    for name in modules:
        try:
            if importlib.util.find_spec(name) is not None:
                found.append(name)
        except ImportError:
            pass
    return found


def importtime(modules: list[str]) -> list[tuple[str, float]]:
    """The slowest imports, cumulative ms, from python -X importtime."""
    code = PRELUDE + DEFERRAL + "".join(f"import {name}\n" for name in modules)
    run = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", "-c", code],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    rows = []
    for line in run.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "self" not in line:
            _self, cumulative, name = line.split(":", 1)[1].split("|")
            rows.append((name.strip(), int(cumulative) / 1000))
    return sorted(rows, key=lambda row: -row[1])[:12]


IN_PROCESS = """
import time, sys
t0 = time.perf_counter()
from OpenSSL import SSL
t1 = time.perf_counter()
def context():
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate_chain_file(sys.argv[1])
    ctx.use_privatekey_file(sys.argv[1])
    ctx.check_privatekey()
    return ctx
t2 = time.perf_counter(); server_ctx = context(); t3 = time.perf_counter()
client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
server, client = SSL.Connection(server_ctx), SSL.Connection(client_ctx)
server.set_accept_state(); client.set_connect_state()
spent = 0.0
for _ in range(20):  # each side until both are done; only the server's CPU is counted
    for side in (client, server):
        start = time.process_time()
        try:
            side.do_handshake()
        except SSL.WantReadError:
            pass
        if side is server:
            spent += time.process_time() - start
    for a, b in ((client, server), (server, client)):
        try:
            b.bio_write(a.bio_read(65536))
        except SSL.WantReadError:
            pass
print(1000 * (t1 - t0), 1000 * (t3 - t2), 1000 * spent)
"""


def in_process(pem: str, repeat: int) -> tuple[float, float, float]:
    """Medians of: import OpenSSL.SSL, context load from the pem, one server-side handshake."""
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-I", "-S", "-c", PRELUDE + IN_PROCESS, pem],
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        runs.append([float(x) for x in out.stdout.split()])
    return tuple(statistics.median(column) for column in zip(*runs, strict=True))  # type: ignore


def regular_install_prelude() -> str:
    """What the fronts do when stunnel3 is installed with `pip install .` (no editable finder,
    no .pth files processed): the package's own directory on the path, nothing else."""
    import stunnel3

    home = str(Path(stunnel3.__file__).resolve().parent.parent)
    return f"import sys, site\nsite.venv(None)\nsys.path += site.getsitepackages() + [{home!r}]\n"


def profile(pem: str, repeat: int = 15, key: str = "rsa") -> dict:
    modules = present(SESSION_MODULES)
    python = [sys.executable, "-I", "-S"]
    regular = regular_install_prelude()
    imports = DEFERRAL + "".join(f"import {name}\n" for name in modules)
    front_env = {**os.environ, "STUNNEL3_PYTHON": "/bin/true"}
    pieces = {
        "sh front, exec'ing /bin/true instead of Python": cost(
            [str(SCRIPTS / "stunnel")], repeat, front_env
        ),
        "python -I -S -c pass": cost([*python, "-c", "pass"], repeat),
        "+ the front's path and `import stunnel3`, as installed here": cost(
            [*python, "-c", PRELUDE], repeat
        ),
        "+ the same, were it a regular `pip install .`": cost([*python, "-c", regular], repeat),
        "+ import the session's modules, regular install": cost(
            [*python, "-c", regular + imports], repeat
        ),
        "+ import stdlib ssl instead of them, regular install": cost(
            [*python, "-c", regular + "import ssl, select, socket\n"], repeat
        ),
        "fixcrio as installed (front + Python), on empty input": cost(
            [str(SCRIPTS / "fixcrio"), "true"], repeat
        ),
        "stunnel -V as installed (front + Python, exits before a session)": cost(
            [str(SCRIPTS / "stunnel"), "-V"], repeat
        ),
    }
    openssl, context, handshake = in_process(pem, max(5, repeat // 2))
    pieces["import OpenSSL.SSL alone (in process, wall)"] = (openssl, openssl)
    pieces["context load from the pem (in process, wall)"] = (context, context)
    pieces[f"server side of one {key.upper()} handshake (in memory, CPU)"] = (handshake, handshake)
    return {"repeat": repeat, "entry": ", ".join(modules), "pieces": pieces,
            "imports": importtime(modules)}  # fmt: skip


def main(argv: list[str]) -> int:
    import certs

    repeat = int(argv[0]) if argv else 15
    with tempfile.TemporaryDirectory() as directory:
        pem = certs.write_pem(Path(directory), "rsa")
        print(json.dumps(profile(str(pem), repeat), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

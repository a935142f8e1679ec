"""The import graph of stunnel3/ (issue #17): data flows from the programs into the
engine, never back, and no two modules import each other round a circle.

The graph is read from the source (every `import` and `from ... import`, those
inside functions too: a late import is an arrow all the same), so it holds
whatever a process happens to load. docs/architecture.md draws the same groups.
"""

import ast
from pathlib import Path

import stunnel3

PACKAGE = Path(stunnel3.__file__).parent
MODULES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")

# The programs, each a main(argv) -> int where exceptions become messages, and
# stunnel3-setup's parts (named one by one: a module of the engine may begin with
# "setup" too).
PROGRAMS = {"stunnel", "makesock", "fixcrio", "warm"}
PROGRAMS |= {"setup_service", "setup_host", "setup_pem", "setup_scripts"}
# The engine: the relay loop, TLS, the session, and every protocol layer.
LAYERS = {"protocol", "layer", "lines", "runs", "client_negotiation", "imap", "pop3"}
LAYERS |= {m for m in MODULES if m == "smtp" or m.startswith("smtp_")}
ENGINE = {"relay", "tls", "session"} | LAYERS

# Arrows and circles there still are, each to go with issue #17's start-up work
# (items 2 and 3: the CR rule as the relay's parameter, one start-up without the
# daemon/service circle). The tests below hold them to exactly this: one that
# goes must leave this list too, and no new one may come.
KNOWN_ENGINE_TO_PROGRAM = {("relay", "fixcrio")}  # relay.py's CrAdder
KNOWN_CIRCLES = {("daemon", "service")}


def imports(name: str) -> set[str]:
    """The modules of ours that stunnel3/<name>.py imports, anywhere in it."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "stunnel3":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stunnel3."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("stunnel3.")}
    return (found & set(MODULES)) - {name}


GRAPH = {name: imports(name) for name in MODULES}


def reachable(start: str) -> dict[str, list[str]]:
    """Every module start leads to, with one path to it."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        here = todo.pop()
        for there in sorted(GRAPH[here]):
            if there not in paths:
                paths[there] = [*paths[here], there]
                todo.append(there)
    return paths


def circles() -> set[tuple[str, ...]]:
    """Each circle once, as its modules in order from the alphabetically first."""
    found = set()
    for start in MODULES:
        for there, path in reachable(start).items():
            if start in GRAPH[there] and start == min(path):
                found.add(tuple(path))
    return found


def test_the_groups_name_real_modules():
    assert PROGRAMS | ENGINE <= set(MODULES)
    assert PROGRAMS & ENGINE == set()


def test_no_engine_module_leads_to_a_program_module():
    arrows = set()
    for name in sorted(ENGINE):
        for there, path in reachable(name).items():
            if there in PROGRAMS:
                arrows.add((path[-2], there))  # the arrow that crosses into a program
    assert arrows == KNOWN_ENGINE_TO_PROGRAM


def test_the_layers_lead_to_no_module_outside_the_layers_but_record_and_policy():
    for name in sorted(LAYERS):
        outside = set(reachable(name)) - LAYERS - {"record", "policy"}
        assert outside == set(), (name, outside)


def test_the_import_graph_has_no_circle_but_the_known_ones():
    assert circles() == KNOWN_CIRCLES


def test_the_circle_finder_finds_a_circle():
    GRAPH["lines"].add("layer")  # layer imports lines: now they import each other
    try:
        assert ("layer", "lines") in circles()
    finally:
        GRAPH["lines"].discard("layer")

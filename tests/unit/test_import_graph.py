"""The package's import graph (issue #17): no circle, and no arrow from the engine to a program.

Drawn from the source, the imports inside functions included (the direct path imports
lazily: a circle there is still one a reader must untangle).
"""

import ast
from pathlib import Path

import stunnel3

PACKAGE = Path(stunnel3.__file__).parent
# Programs: each a main(argv) of its own (bin/'s fronts). The engine runs stunnel's
# sessions; it may use a program's rules only through a module of their own.
PROGRAMS = {"stunnel3.fixcrio", "stunnel3.makesock", "stunnel3.stunnel", "stunnel3.warm"}
ENGINE = {
    "stunnel3.service",
    "stunnel3.session",
    "stunnel3.relay",
    "stunnel3.daemon",
    "stunnel3.context",
    "stunnel3.signals",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (`from stunnel3 import x` names x)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        edges[name] = {other for other in found if other in modules and other != name}
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph, or None (a depth-first search)."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for other in sorted(edges[node]):
            if state.get(other) == 1:
                return path[path.index(other) :] + [other]
            if other not in state:
                found = visit(other)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_is_read_from_the_source():
    edges = graph()
    assert "stunnel3.session" in edges["stunnel3.service"]
    assert "stunnel3.daemon" in edges["stunnel3.service"]  # a lazy import counts
    assert "stunnel3.stunnel" in edges["stunnel3.makesock"]


def test_the_search_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_no_circle():
    assert cycle(graph()) is None


def test_the_engine_imports_no_program():
    edges = graph()
    for name in ENGINE:
        assert not edges[name] & PROGRAMS, name

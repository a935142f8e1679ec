"""The package's import graph (issue #17): no circle, no arrow from the engine to a program,
and support/ standing on nothing else of ours.

Drawn from the source, the imports inside functions included (the direct path imports
lazily: a circle there is still one a reader must untangle). `from stunnel3.engine import
daemon` is an arrow to stunnel3.engine.daemon; the package it is read from is run first,
but a package's __init__ that imports nothing at its top cannot close a circle.
"""

import ast
from pathlib import Path

import stunnel3

PACKAGE = Path(stunnel3.__file__).parent
# Programs: each a main(argv) of its own (bin/'s fronts, bin/stunnel3-setup), and the
# modules only a program uses (the warm helper's, administration's). Everything else
# (the engine, the layers, support) runs stunnel's sessions or serves several programs;
# it may use a program's rules only through a module of their own.
PROGRAMS = ("stunnel3.fixcrio", "stunnel3.makesock", "stunnel3.stunnel")
PROGRAM_PACKAGES = ("stunnel3.warm", "stunnel3.setup")
SUPPORT = "stunnel3.support"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_program(name: str) -> bool:
    return name in PROGRAMS or any(
        name == package or name.startswith(package + ".") for package in PROGRAM_PACKAGES
    )


def imports(source: str, modules) -> set[str]:
    """The modules of ours (names in `modules`) that `source` imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            named = {f"{node.module}.{alias.name}" for alias in node.names}
            submodules = named & set(modules)
            found |= submodules or {node.module}
            if len(submodules) < len(named):  # names defined in the module itself
                found.add(node.module)
    return found & set(modules)


def graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imports(path.read_text(), modules) - {name} for name, path in modules.items()}


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


def arrows_to_programs(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(module, program) for each module that is no program's and imports one."""
    return {
        (name, other)
        for name, others in edges.items()
        if not is_program(name)
        for other in others
        if is_program(other)
    }


def arrows_out_of_support(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(support module, other) for each arrow from support/ to anything of ours outside."""
    inside = (SUPPORT, "stunnel3")  # the package's __init__: the version, nothing else
    return {
        (name, other)
        for name, others in edges.items()
        if name.startswith(SUPPORT + ".")
        for other in others
        if not other.startswith(SUPPORT + ".") and other not in inside
    }


def test_the_graph_is_read_from_the_source():
    edges = graph()
    assert "stunnel3.engine.session" in edges["stunnel3.engine.service"]
    assert "stunnel3.engine.daemon" in edges["stunnel3.engine.service"]  # a lazy import
    assert "stunnel3.stunnel" in edges["stunnel3.makesock"]
    assert "stunnel3.warm.worker" in edges["stunnel3.warm.helper"]
    assert "stunnel3.layers.line_proxy" in edges["stunnel3.smtp"]
    assert "stunnel3.warm.helper" in edges["stunnel3.warm"]  # the front's main
    # from a package, a submodule is the arrow; from a module, the module
    assert edges["stunnel3.warm.helper"] & {"stunnel3.warm"} == set()
    assert "stunnel3.options" in edges["stunnel3.stunnel"]


def test_every_group_is_in_the_graph():
    names = set(graph())
    for group in ("engine", "layers", "support", "warm", "setup"):
        assert f"stunnel3.{group}" in names
        assert any(name.startswith(f"stunnel3.{group}.") for name in names), group


def test_the_search_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_checks_find_a_forbidden_arrow():
    edges = {
        "stunnel3.engine.session": {"stunnel3.makesock", "stunnel3.relay"},
        "stunnel3.layers.imap": {"stunnel3.warm.worker"},
        "stunnel3.support.limits": {"stunnel3.engine.bounds", "stunnel3.support.record"},
        "stunnel3.makesock": {"stunnel3.stunnel"},  # a program may use another
    }
    assert arrows_to_programs(edges) == {
        ("stunnel3.engine.session", "stunnel3.makesock"),
        ("stunnel3.layers.imap", "stunnel3.warm.worker"),
    }
    assert arrows_out_of_support(edges) == {("stunnel3.support.limits", "stunnel3.engine.bounds")}


def test_no_circle():
    assert cycle(graph()) is None


def test_the_engine_imports_no_program():
    assert arrows_to_programs(graph()) == set()


def test_support_stands_on_nothing_else_of_ours():
    assert arrows_out_of_support(graph()) == set()

"""The launcher's command modules import downwards only (issue 21): a cycle through any of them
(say cli_cluster -> results -> cli_cluster, held together by imports inside functions) fails here.
Imports inside functions count: they are cycles all the same, only deferred."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The modules of the run lifecycle's CLIs; plan/pods/render/trainjob have their own layering.
CLI_MODULES = {"launcher.cli_cluster", "launcher.cli_render", "launcher.cli_validate", "launcher.cluster_jobs",
               "launcher.results", "launcher.run_local", "launcher.procs", "launcher.k8s", "launcher.local_jobs"}


def import_graph() -> dict[str, set[str]]:
    """launcher module -> the launcher modules it imports anywhere in its file."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in ROOT.glob("launcher/**/*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names}  # `from launcher import k8s`
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for dep in graph.get(node, ()):
            if dep == start:
                return path + [start]
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, path + [dep]))
    return None


def test_no_import_cycle_through_the_cli_modules():
    graph = import_graph()
    assert "launcher.cli_cluster" in graph and "launcher.results" in graph  # the walk found the package
    cycles = {m: c for m in sorted(CLI_MODULES & set(graph)) if (c := cycle_through(graph, m))}
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles.values())


def test_the_graph_sees_a_cycle_made_of_function_level_imports():
    assert cycle_through({"a": {"b"}, "b": {"a"}}, "a") == ["a", "b", "a"]
    assert cycle_through({"a": {"b"}, "b": set()}, "a") is None

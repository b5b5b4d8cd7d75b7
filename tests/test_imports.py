"""The module structure stays a one-way street (issue 21): no import cycle among launcher modules or
dlrm modules, counting imports inside functions; nothing outside dlrm/training imports the training
code; and no test hook read from the environment inside dlrm/."""
from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "launcher"


def _module(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, modules: set[str]) -> set[str]:
    """The launcher modules an import statement names (`from launcher import a, b` names launcher.a, launcher.b)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
        return set()
    return {n for n in names if n in modules and "." in n}  # the package itself (`from dlrm import x`) is no edge


def import_graph(package: Path = LAUNCHER) -> dict[str, set[str]]:
    """{module: launcher modules it imports}, anywhere in the file (module level, functions, classes)."""
    files = {_module(p, package.parent): p for p in package.rglob("*.py")}
    modules = set(files)
    return {m: set().union(*(_imported(n, modules) for n in ast.walk(ast.parse(p.read_text())))) - {m}
            for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None: depth-first search, grey nodes on the current path."""
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n, path + [n])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m, [m])):
            return found
    return None


def test_the_cycle_finder_sees_function_level_imports(tmp_path):
    pkg = tmp_path / "launcher"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from launcher import b\n")
    (pkg / "b.py").write_text("def f():\n    from launcher.c import x\n")
    (pkg / "c.py").write_text("class K:\n    def g(self):\n        import launcher.a\n")
    graph = import_graph(pkg)
    assert graph["launcher.b"] == {"launcher.c"}
    assert find_cycle(graph) == ["launcher.a", "launcher.b", "launcher.c", "launcher.a"]
    graph["launcher.c"] = set()
    assert find_cycle(graph) is None


def test_no_import_cycle_among_launcher_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_among_dlrm_modules():
    cycle = find_cycle(import_graph(ROOT / "dlrm"))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_training_and_the_cli_import_the_training_code():
    """io, data, modules, dist, preprocess and serving sit below training (docs/architecture.md):
    an import of dlrm.training from them is an arrow pointing up."""
    graph = import_graph(ROOT / "dlrm")
    up = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                if d.startswith("dlrm.training") and not m.startswith(("dlrm.training", "dlrm.__main__")))
    assert not up, up


def test_the_plan_is_the_hub():
    """plan.py is data: it imports no builder, encoder, decoder, renderer or CLI."""
    low = {"launcher.plan", "launcher.trainjob", "launcher.names", "launcher.command"}
    assert import_graph()["launcher.plan"] <= low


DLRM_TEST_HOOK = "DLRM_TEST_"


def _env_reads(path: Path, root: Path = ROOT) -> list[str]:
    """`os.environ[...]` / `.get(...)` / `os.getenv(...)` with a literal name starting DLRM_TEST_."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        args = []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "getenv", "pop", "setdefault"):
            args = node.args[:1]
        elif isinstance(node, ast.Subscript):
            args = [node.slice]
        found += [f"{path.relative_to(root)}:{node.lineno}: {a.value}" for a in args
                  if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith(DLRM_TEST_HOOK)]
    return found


def test_the_env_read_finder_sees_each_form(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\na = os.environ.get('DLRM_TEST_X')\nb = os.getenv('DLRM_TEST_Y')\n"
                 "c = os.environ['DLRM_TEST_Z']\nd = os.environ.get('HOME')\n")
    assert [r.split(": ")[1] for r in _env_reads(f, tmp_path)] == ["DLRM_TEST_X", "DLRM_TEST_Y", "DLRM_TEST_Z"]


def test_no_test_hook_is_read_from_the_environment_in_dlrm():
    reads = [r for p in sorted((ROOT / "dlrm").rglob("*.py")) for r in _env_reads(p)]
    assert not reads, "test hooks read from the environment (inject them from the tests instead):\n" + "\n".join(reads)

"""The library's modules import each other without cycles, and never an experiment file.

Imports are read with `ast` (module-level and inside functions alike: a lazy import is still
a dependency), except the body of `if __name__ == "__main__":`, a script entry point that runs
once its module is fully imported.
"""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("bertjax", "data_pipelines")
# The command line resolves `--config NAME` among the shipped experiments and builds their
# ConfigDicts; every other module receives configs.
EXPERIMENT_READERS = {"bertjax.main"}


def _modules() -> dict[str, str]:
    out = {}
    for package in PACKAGES:
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if name.endswith(".py"):
                module = package if name == "__init__.py" else f"{package}.{name[:-3]}"
                out[module] = os.path.join(ROOT, package, name)
    return out


def _is_main_guard(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def _imports(path: str, module: str) -> set[str]:
    """Every module name `path` imports (`from a import b` gives a and, when a module, a.b)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_main_guard(node):
            return
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = module.rsplit(".", node.level)[0]
                base = f"{package}.{base}" if base else package
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        m: {n for n in _imports(path, m) if n in modules and n != m} for m, path in modules.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycles():
    graph = _graph()
    assert {"bertjax.config", "bertjax.model", "bertjax.pretrain"} <= set(graph)
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_config_is_a_leaf_and_configs_flow_one_way():
    graph = _graph()
    assert graph["bertjax.config"] <= {"bertjax", "bertjax.storage"}
    assert "bertjax.config" in graph["bertjax.model"] and "bertjax.config" in graph["bertjax.optim"]
    assert "bertjax.model" not in graph["bertjax.optim"]
    assert {"bertjax.pretrain_config", "bertjax.model", "bertjax.optim"} <= graph[
        "bertjax.pretrain"
    ]


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_library_imports_no_experiment():
    for module, path in _modules().items():
        if module in EXPERIMENT_READERS:
            continue
        bad = sorted(n for n in _imports(path, module) if n.split(".")[0] == "experiments")
        assert not bad, f"{module} imports {bad}"

"""The project's top-level modules import each other without a cycle, imports inside functions included."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def project_modules(repo=REPO) -> set:
    """The names of the repo's top-level modules (its flat .py files)."""
    return {p.stem for p in repo.glob("*.py")}


def imports_of(path: Path, modules: set) -> set:
    """The project modules that `path` imports anywhere: at the top, inside functions, in `from x import y`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return (found & modules) - {path.stem}


def import_graph(repo=REPO) -> dict:
    modules = project_modules(repo)
    return {name: imports_of(repo / f"{name}.py", modules) for name in sorted(modules)}


def find_cycle(graph: dict):
    """One import cycle as a list of module names (first repeated at the end), or None."""
    state = {}  # name -> "open" while on the path, "done" after

    def visit(name, path):
        state[name] = "open"
        path.append(name)
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep, path)
                if cycle:
                    return cycle
        path.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name, [])
            if cycle:
                return cycle
    return None


@pytest.mark.parametrize(("graph", "cycle"), [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"a"}}, ["a", "a"]),
    ({"a": set(), "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
])
def test_find_cycle_on_small_graphs(graph, cycle):
    assert find_cycle(graph) == cycle


def test_imports_inside_functions_count(tmp_path):
    (tmp_path / "a.py").write_text("import os\n\ndef f():\n    import b\n    from c.d import e\n")
    (tmp_path / "b.py").write_text("")
    (tmp_path / "c.py").write_text("")
    assert imports_of(tmp_path / "a.py", project_modules(tmp_path)) == {"b", "c"}


def test_the_project_has_no_import_cycle():
    graph = import_graph()
    assert {"app", "fullprocess", "ingestion", "training"} <= set(graph)
    assert find_cycle(graph) is None

"""The import structure of the ``mmc`` package: no import cycle, and no import from a lower layer up.

Every module under ``mmc/`` is parsed with ``ast`` (nothing is imported or run), and every ``import``
of an ``mmc`` module is an edge of the graph, wherever it stands: at the top of the module or inside
a function (a lazy import still runs, later, and can still close a circle). ``from P import name``
is an edge to the module ``P.name`` where that is a module, else to ``P`` itself. Modules imported
by name at run time (``importlib.import_module`` of the CLI's command table and of the dataset
readers' registry) are not edges: they are the entry points' way of staying fast.

The layers, lowest first. A module imports only from its own layer or a lower one; any module not
named below is a stage (pipeline stages and their commands: data, pretrain, evaluation, select,
tables, figures, report, publish, provenance, pipeline_info, ... and their subpackages):

0. foundation: ``mmc`` (the package itself: its version), ``mmc.errors``, ``mmc.files``;
1. formats and tools: ``mmc.records`` (the job-record format), ``mmc.config`` (the typed
   configuration), ``mmc.dvc``, ``mmc.versions`` (what code and software ran);
2. tracking: ``mmc.mlflow_store`` (records -> MLflow), ``mmc.tracking`` (the recorder every stage
   uses);
3. stages: everything else;
4. entry points: ``mmc.cli``, ``mmc.__main__``, imported by nothing.

Besides, ``mmc.records`` knows the record format with the standard library alone (and at most
``mmc.errors``/``mmc.files``), so any reader of records can use it without configuration or MLflow.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
from workflow_helpers import REPO

PACKAGE_DIR = REPO / "mmc"

FOUNDATION = {"mmc", "mmc.errors", "mmc.files"}
FORMATS = {"mmc.records", "mmc.config", "mmc.dvc", "mmc.versions"}
TRACKING = {"mmc.mlflow_store", "mmc.tracking"}
ENTRY_POINTS = {"mmc.cli", "mmc.__main__"}
STAGES = 3
LAYER_NAMES = {0: "foundation", 1: "formats and tools", 2: "tracking", 3: "stages", 4: "entry points"}
# what the lowest modules may import from mmc (besides the standard library)
ALLOWED = {"mmc.errors": set(), "mmc.files": {"mmc.errors"}, "mmc.records": {"mmc.errors", "mmc.files"}}


def layer(module: str) -> int:
    for number, members in enumerate((FOUNDATION, FORMATS, TRACKING)):
        if module in members:
            return number
    return 4 if module in ENTRY_POINTS else STAGES


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (``pkg/__init__.py`` is ``pkg``)."""
    root = package_dir.name
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [root, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterable[tuple[str, list[str]]]:
    """(base, names) pairs: ``import a.b`` -> (a.b, []); ``from a import b, c`` -> (a, [b, c])."""
    if isinstance(node, ast.Import):
        return [(alias.name, []) for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the module's own package, one level up per extra dot
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join([*package, *([base] if base else [])])
    return [(base, [alias.name for alias in node.names])]


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in its body)."""
    modules = module_names(package_dir)
    root = package_dir.name
    graph: dict[str, set[str]] = {name: set() for name in modules}

    def resolve(dotted: str) -> str | None:  # the longest prefix that is a module of the package
        parts = dotted.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts) or None

    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for base, names in _imported(node, name, path.name == "__init__.py"):
                if base != root and not base.startswith(f"{root}."):
                    continue
                targets = [f"{base}.{n}" if f"{base}.{n}" in modules else base for n in names] or [base]
                graph[name].update(t for t in map(resolve, targets) if t and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (``[a, b, ..., a]``), or None."""
    visiting, done = [], set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node):], node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            if cycle := visit(target):
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return None


def top_level_imports(path: Path) -> set[str]:
    """The top-level names of everything a module imports (``os.path`` -> ``os``; relative -> '')."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("" if node.level else (node.module or "").split(".")[0])
    return names


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE_DIR)


def test_the_graph_sees_top_level_and_function_level_imports(graph):
    assert {"mmc.records", "mmc.errors", "mmc.tracking", "mmc.mlflow_store", "mmc.cli"} <= set(graph)
    assert "mmc.records" in graph["mmc.tracking"]  # at the top of the module
    assert "mmc.mlflow_store" in graph["mmc.tracking"]  # inside a function
    assert "mmc" in graph["mmc.cli"]  # from mmc import __version__


def test_named_layers_exist(graph):
    """A renamed module must be moved in the table above, not silently dropped into the stages."""
    named = FOUNDATION | FORMATS | TRACKING | ENTRY_POINTS | set(ALLOWED)
    assert named <= set(graph), sorted(named - set(graph))


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_lowest_modules_import_only_what_they_are_allowed(graph):
    for module, allowed in ALLOWED.items():
        assert graph[module] <= allowed, f"{module} imports {sorted(graph[module] - allowed)}"


def test_records_needs_only_the_standard_library():
    outside = {name for name in top_level_imports(PACKAGE_DIR / "records.py")
               if name not in sys.stdlib_module_names and name != "__future__"}
    assert outside <= {"mmc"}, sorted(outside)


def test_no_import_from_a_higher_layer(graph):
    upward = [f"{module} ({LAYER_NAMES[layer(module)]}) imports {target} ({LAYER_NAMES[layer(target)]})"
              for module, targets in sorted(graph.items()) for target in sorted(targets)
              if layer(target) > layer(module)]
    assert not upward, "\n".join(upward)
    importers = {module for module, targets in graph.items() if targets & ENTRY_POINTS}
    assert importers <= ENTRY_POINTS, sorted(importers)


def test_the_checks_catch_a_lazy_circle_and_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def later():\n    from pkg.sub import c\n")
    (package / "sub" / "__init__.py").write_text("from . import c\n")
    (package / "sub" / "c.py").write_text("import os\n\ndef f():\n    from ..a import x\n")
    graph = import_graph(package)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"}, "pkg.sub": {"pkg.sub.c"},
                     "pkg.sub.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (package / "sub" / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(package)) is None

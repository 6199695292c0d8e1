"""The evaluation package imports in layers: no module imports one after it, none imports itself
back through another; the two commands never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import mmc.evaluation

# The order of mmc/evaluation/__init__.py's docstring: each module may import only those before it.
LAYERS = ["metrics", "bootstrap", "protocol", "summary", "job", "features", "segment", "similarity"]
PACKAGE = Path(mmc.evaluation.__file__).parent


def evaluation_imports(path: Path) -> set[str]:
    """The mmc.evaluation modules that ``path`` imports anywhere (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "mmc.evaluation":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmc.evaluation."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("mmc.evaluation.")}
    return found


def test_every_module_is_in_a_layer():
    assert sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__") == sorted(LAYERS)


def test_modules_import_only_earlier_layers():
    for i, name in enumerate(LAYERS):
        imported = evaluation_imports(PACKAGE / f"{name}.py")
        assert imported <= set(LAYERS[:i]), f"mmc.evaluation.{name} imports {sorted(imported - set(LAYERS[:i]))}"
    assert "segment" not in evaluation_imports(PACKAGE / "similarity.py")


def test_the_package_init_stays_light():
    assert evaluation_imports(PACKAGE / "__init__.py") == set()
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]

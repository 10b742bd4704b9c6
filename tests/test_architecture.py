"""The package tree is the architecture: every import (at module level, inside functions, or for type checking)
goes down the layers below, the store knows nothing of models, and no two modules or packages import each other."""

from __future__ import annotations

import ast
import itertools
import sys
from pathlib import Path

import simengine

ROOT = Path(simengine.__file__).parent
# Top to bottom; a package may import the ones in lower layers only (and itself).
LAYERS = [
    {"__main__"},
    {"cli"},
    {"service"},
    {"query", "curation"},
    {"index"},
    {"training"},
    {"dedup", "shards"},
    {"model"},
    {"evaluation"},
    {"data", "store", "ray_cluster"},
    {"files"},
    {"errors"},
]
STORE_MAY_IMPORT = {"simengine.errors", "simengine.files", "numpy", "faiss", "sqlite3", "sqlite_utils", "filelock"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it; `from package import name` counts `package.name` when that is a
    module."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if is_module(f"{base}.{alias.name}"))
    return found


def is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for m in imported_modules(path) if m.startswith("simengine.") and is_module(m)} - {name}
            for name, path in modules.items()}


def package_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_the_walk_sees_the_whole_package():
    edges = graph()
    assert len(edges) > 80 and "simengine.store.writer" in edges and "simengine.index.build" in edges
    assert "simengine.store.layout" in edges["simengine.store.writer"]  # imports inside functions count too
    assert "simengine.training.pipeline" in edges["simengine.index.build"]


def test_every_package_sits_in_one_layer():
    packages = {package_of(m) for m in graph() if m != "simengine"}
    placed = [p for layer in LAYERS for p in layer]
    assert sorted(placed) == sorted(set(placed)) and packages == set(placed)


def test_imports_only_go_down_the_layers():
    rank = {package: n for n, layer in enumerate(LAYERS) for package in layer}
    upward = sorted((m, i) for m, targets in graph().items() if m != "simengine" for i in targets
                    if package_of(i) != package_of(m) and rank[package_of(i)] <= rank[package_of(m)])
    assert upward == []


def test_the_store_imports_nothing_that_knows_models_evaluation_or_datasets():
    store_files = sorted((ROOT / "store").glob("*.py"))
    assert len(store_files) >= 8
    outside = {}
    for path in store_files:
        for name in imported_modules(path):
            if name.startswith("simengine.store") or name.split(".")[0] in sys.stdlib_module_names:
                continue
            if not any(name == allowed or name.startswith(allowed + ".") for allowed in STORE_MAY_IMPORT):
                outside.setdefault(path.name, []).append(name)
    assert outside == {}


def test_no_two_modules_or_packages_import_each_other():
    edges = graph()
    modules = sorted((a, b) for a, b in itertools.combinations(edges, 2) if b in edges[a] and a in edges[b]
                     and "simengine" not in (a, b))
    package_edges = {(package_of(a), package_of(b)) for a, targets in edges.items() for b in targets
                     if package_of(a) != package_of(b) and a != "simengine"}
    packages = sorted((a, b) for a, b in package_edges if (b, a) in package_edges and a < b)
    assert modules == [] and packages == []

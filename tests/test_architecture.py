"""The package's shape: no import cycles, no import of a layer above the importer, small modules
and functions, and a module table in docs/pipeline.md in the same order as the layers declared here."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sentence_sae"
PIPELINE_PAGE = PACKAGE.parents[1] / "docs" / "pipeline.md"

LAYERS: list[tuple[str, ...]] = [
    ("errors", "version"),
    ("files", "prefetch", "signals"),
    ("config",),
    ("recipe",),
    ("tracking",),
    ("data", "openvino_encoder", "embeddings"),
    ("cache",),
    ("corpus",),
    ("activation_store", "cache_fill"),
    ("sae",),
    ("finalize",),
    ("checkpoint",),
    ("metrics", "schedules"),
    ("steering",),
    ("distributed",),
    ("trainer",),
    ("training", "sweep"),
    ("runs", "plots"),
    ("evaluation", "hub", "sparse_module", "export"),
    ("analysis",),
    ("cli",),
    ("__init__", "__main__"),
]
"""Bottom to top: a module may import from its own layer (without cycles) and the layers below."""

MAX_FUNCTION_LINES = 60
MAX_BASE_SAE_LINES = 150


def modules() -> dict[str, Path]:
    """Dotted module name (relative to the package) -> file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (functions and TYPE_CHECKING too)."""
    is_package = path.name == "__init__.py" and name != "__init__"
    package_parts = name.split(".") if is_package else name.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level > 0:
                stem = package_parts[: len(package_parts) - (node.level - 1)] + (node.module or "").split(".")
            elif (node.module or "").split(".")[0] == "sentence_sae":
                stem = node.module.split(".")[1:]
            else:
                continue
            stem = [part for part in stem if part]
            submodules = {".".join(stem + [alias.name]) for alias in node.names} & known
            targets.update(submodules or {".".join(stem) or "__init__"})
        elif isinstance(node, ast.Import):
            targets.update(alias.name.removeprefix("sentence_sae.") for alias in node.names
                           if alias.name.startswith("sentence_sae."))
    targets &= known
    targets.discard(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported_modules(name, path, set(found)) for name, path in found.items()}


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"module {module} is in no layer of tests/test_architecture.py; add it to LAYERS")


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_module_imports_a_layer_above_it():
    wrong = [f"{name} imports {target}" for name, targets in import_graph().items() for target in sorted(targets)
             if layer_of(target) > layer_of(name)]
    assert not wrong, "imports of a higher layer:\n" + "\n".join(wrong)


CACHE_READERS = {"corpus", "cache_fill", "__init__"}
"""The modules that may open cache files: the data layer's corpus and cache filler (and the package,
which re-exports ``load_embeddings``); everything else reads embeddings through a ``Corpus``."""


def cache_importers(graph: dict[str, set[str]]) -> set[str]:
    return {name for name, targets in graph.items() if "cache" in targets}


def test_only_the_data_layer_opens_cache_files():
    graph = import_graph()
    assert cache_importers(graph) <= CACHE_READERS, sorted(cache_importers(graph) - CACHE_READERS)
    assert cache_importers({**graph, "training": graph["training"] | {"cache"}}) - CACHE_READERS == {"training"}


def test_the_imports_have_no_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above fail on the faults they look for (a test that cannot fail is a defect)."""
    fake = tmp_path / "sentence_sae"
    (fake / "sae").mkdir(parents=True)
    (fake / "config.py").write_text("from .sae import base\n")
    (fake / "sae" / "__init__.py").write_text("from .base import X\n")
    (fake / "sae" / "base.py").write_text("from ..config import Y\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    graph = import_graph()
    assert graph["config"] == {"sae.base"} and graph["sae.base"] == {"config"} and graph["sae"] == {"sae.base"}
    with pytest.raises(AssertionError, match="import cycle"):
        test_the_imports_have_no_cycle()
    with pytest.raises(AssertionError, match="config imports sae"):
        test_no_module_imports_a_layer_above_it()


def test_functions_stay_small():
    """Functions and the SAE base class have a cap; modules do not: code goes where its concept is."""
    long = []
    for name, path in modules().items():
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            size = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size > MAX_FUNCTION_LINES:
                long.append(f"function {name}.{node.name}: {size} lines (at most {MAX_FUNCTION_LINES})")
            if isinstance(node, ast.ClassDef) and node.name == "BaseSAE" and size >= MAX_BASE_SAE_LINES:
                long.append(f"class BaseSAE: {size} lines (under {MAX_BASE_SAE_LINES})")
    assert not long, "\n".join(long)


def test_module_table_follows_the_layers():
    section = PIPELINE_PAGE.read_text().split("<!-- modules -->")[1]
    listed = re.findall(r"^\| `([a-z_]+)(?:\.py|/)?` \|", section, flags=re.MULTILINE)
    expected = [name for layer in LAYERS for name in layer if not name.startswith("__")]
    assert listed == expected, "docs/pipeline.md's module table (between <!-- modules --> markers) is out of date"

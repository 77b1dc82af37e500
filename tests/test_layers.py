"""The layer rule, read off the imports of every module under src/clinkd (docs/architecture.md draws it).

A module may import from its own layer and the layers below it, never from a layer above. The four ClinKD parts
(and the tiny base's pre-training) sit side by side and import none of each other. An entry names a package or a
module; the longest entry that names a module decides its layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),  # the command line
    ("recipes",),  # the stages, each with its loop in plain sight
    ("interactive",),  # clinkd infer and the demo
    ("distill", "reflect", "sasg", "pretrain"),  # the ClinKD parts, and the tiny base's pre-training
    (
        "engine",
        "endpoint",
        "model",
        "data",
        "batching",
        "config",
        "synth",
        "doctor",
        "testing",
    ),  # engines, models, data
    (
        "boxes",
        "chat",
        "losses",
        "metrics",
        "markdown",
        "io",
        "images",
        "progress",
        "model.positions",
        "data.records",
    ),  # pure maths, plain types
)
SIDE_BY_SIDE = frozenset(LAYERS[3])
# Entries of one layer that must not import one another, though the layers allow it: ``model`` takes plain values,
# never the recipe (``config`` imports ``model.bases`` and ``model.positions``, so the two would import each other).
NEVER_IMPORTS: dict[str, frozenset[str]] = {"model": frozenset({"config"})}


def layer_of(module: str) -> tuple[int, str]:
    """``(layer index, table entry)`` of a dotted module name below ``clinkd``."""
    found = [
        (len(entry), index, entry)
        for index, layer in enumerate(LAYERS)
        for entry in layer
        if module == entry or module.startswith(entry + ".")
    ]
    if not found:
        raise LookupError(f"clinkd.{module} is in no layer: add it to LAYERS and docs/architecture.md")
    _, index, entry = max(found)
    return index, entry


def modules() -> dict[str, Path]:
    """Every module under src/clinkd, by its dotted name below ``clinkd`` (a package by its own name)."""
    found = {}
    for path in sorted((SRC / "clinkd").rglob("*.py")):
        parts = path.relative_to(SRC / "clinkd").with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if parts:
            found[".".join(parts)] = path
    return found


def clinkd_imports(module: str, path: Path) -> set[str]:
    """The clinkd modules ``module`` imports (lazy imports inside functions included), below ``clinkd``."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            names = [".".join([*base, node.module] if node.module else base)]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        targets.update(name.removeprefix("clinkd.") for name in names if name.startswith("clinkd."))
    return targets


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_runs_up_the_layers(module):
    mine, my_entry = layer_of(module)
    for target in clinkd_imports(module, MODULES[module]):
        theirs, their_entry = layer_of(target)
        assert theirs >= mine, f"clinkd.{module} (layer {mine}) imports clinkd.{target} from layer {theirs} above it"
        side_by_side = {my_entry.split(".")[0], their_entry.split(".")[0]} <= SIDE_BY_SIDE
        assert not side_by_side or my_entry == their_entry, (
            f"clinkd.{module} imports clinkd.{target}: the ClinKD parts stand apart"
        )
        forbidden = NEVER_IMPORTS.get(module.split(".")[0], frozenset())
        assert target.split(".")[0] not in forbidden, (
            f"clinkd.{module} imports clinkd.{target}: model takes plain values, never the recipe"
        )


def test_only_the_command_line_imports_the_recipes():
    importers = {
        module
        for module in MODULES
        if any(layer_of(target)[1] == "recipes" for target in clinkd_imports(module, MODULES[module]))
    }
    assert {module.split(".")[0] for module in importers} <= {"cli", "recipes"}


def test_the_rule_sees_the_imports_it_forbids():
    assert "engine.generate" in clinkd_imports("distill.pseudo", MODULES["distill.pseudo"])
    assert layer_of("model.positions") == (5, "model.positions") and layer_of("model.rope") == (4, "model")
    with pytest.raises(LookupError):
        layer_of("somewhere_new")
    assert "config" in clinkd_imports("engine.sft", MODULES["engine.sft"])  # what model.* may not do


def test_architecture_page_names_every_entry_of_the_table():
    page = ARCHITECTURE.read_text(encoding="utf-8")
    assert [entry for layer in LAYERS for entry in layer if f"`{entry}`" not in page] == []

"""The layout's rules (docs/architecture.md, "Layers"), checked on the source's own imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "paysim"
LAYERS = ("domain", "infra", "stack", "pipeline", "edge", "load", "ops", "bench", "dashboard",
          "cli")

# What each layer may import of paysim's own (besides itself and the package root).
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "infra": set(),
    "stack": {"infra"},
    "pipeline": {"domain", "infra"},
    "edge": {"domain", "infra", "pipeline"},
    "load": {"domain", "infra", "pipeline"},
    "ops": {"domain", "infra", "pipeline", "stack"},
    "bench": {"domain", "infra", "pipeline", "load", "ops", "stack"},
    "dashboard": {"domain", "infra", "pipeline", "load"},
    "cli": set(LAYERS),
}
SERVICE_NAMES = ("authorizer", "processor", "notifier")


def layer_of(path: Path) -> str | None:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else None


def imported_modules(path: Path) -> list[str]:
    """Every module a file imports, lazily inside functions too."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "paysim":  # from paysim import x: x is the layer
                names += [f"paysim.{alias.name}" for alias in node.names]
    return names


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_sits_in_a_layer() -> None:
    loose = [p.name for p in SOURCES if layer_of(p) is None
             and p.name not in ("__init__.py", "__main__.py")]
    assert loose == []
    assert {layer_of(p) for p in SOURCES} - {None} == set(LAYERS)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path) -> None:
    layer = layer_of(path)
    if layer is None:
        return
    wrong = []
    for module in imported_modules(path):
        parts = module.split(".")
        if parts[0] == "rich" and layer != "cli":
            wrong.append(module)  # only the CLI renders
        if parts[0] != "paysim" or len(parts) < 2 or parts[1] not in LAYERS:
            continue
        if parts[1] != layer and parts[1] not in ALLOWED[layer]:
            wrong.append(module)
    assert wrong == [], f"{layer} may import only {sorted(ALLOWED[layer])}"


def test_each_service_name_is_spelled_in_the_registry_only() -> None:
    spelled = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in SERVICE_NAMES:
                spelled.setdefault(node.value, set()).add(str(path.relative_to(PACKAGE)))
    assert spelled == {name: {"pipeline/registry.py"} for name in SERVICE_NAMES}

"""The package layering (docs/architecture.md), enforced: imports may only point down.

Every module under src/affina is parsed with `ast`; every import in it (module level, inside
functions, relative or absolute) that names an affina module is mapped to that module's layer.
An import into a higher layer, or a cycle between packages, fails with the full list.

  1 core     config, errors, ui, paths, __init__, models/, data/, methods/
  2 record   record/, runs
  3 recipes  evaluate/ < train/ < tune/, export (and any parity module); bias/, rag/ beside train/
  4 govern   govern/, monitor/
  5 service  serve/, jobs/, cli, export_commands, every */commands.py
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

CORE, RECORD, RECIPES, GOVERN, SERVICE = 1, 2, 3, 4, 5
LAYER_NAMES = {CORE: "core", RECORD: "record", RECIPES: "recipes", GOVERN: "govern",
               SERVICE: "service/CLI"}
# Within the recipes layer: evaluate < train < tune; export and parity beside them.
RECIPE_ORDER = {"evaluate": 0, "train": 1, "tune": 2, "export": 0, "gguf_export": 0, "parity": 0,
                "bias": 1, "rag": 1}
PACKAGE_LAYER = {
    "config": CORE, "errors": CORE, "ui": CORE, "paths": CORE, "__init__": CORE,
    "models": CORE, "data": CORE, "methods": CORE,
    "record": RECORD, "runs": RECORD,
    "evaluate": RECIPES, "train": RECIPES, "tune": RECIPES, "export": RECIPES, "gguf_export": RECIPES,
    "parity": RECIPES, "bias": RECIPES, "rag": RECIPES,
    "govern": GOVERN, "monitor": GOVERN,
    "serve": SERVICE, "jobs": SERVICE, "cli": SERVICE, "__main__": SERVICE, "export_commands": SERVICE,
}


def package_of(module: str) -> str:
    """'affina.train.recipe' → 'train'; 'affina' → '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(module: str) -> tuple[int, int]:
    """(layer, rank within the layer) of a dotted affina module name."""
    parts = module.split(".")
    if parts[-1] == "commands" or (len(parts) > 2 and parts[-1].endswith("_commands")):
        return SERVICE, 0
    if parts[-1] == "parity":
        return RECIPES, 0
    package = package_of(module)
    if package not in PACKAGE_LAYER:
        raise KeyError(f"{module}: no layer assigned; add its package to tests/test_layers.py "
                       "and docs/architecture.md")
    layer = PACKAGE_LAYER[package]
    return layer, RECIPE_ORDER.get(package, 0) if layer == RECIPES else 0


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported affina module) for every import in `source`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "affina"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                base = here[:len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "affina":
                continue
            # `from . import x` / `from .pkg import mod` may name submodules: check each one.
            for alias in node.names:
                found.append((node.lineno, f"{target}.{alias.name}"))
    return found


def _existing(name: str, modules: set[str]) -> str:
    """The longest prefix of `name` that is a module (`affina.x.func` → `affina.x`)."""
    parts = name.split(".")
    while len(parts) > 1 and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts)


def violations(files: dict[str, tuple[str, bool]]) -> list[str]:
    """Upward imports and package cycles among `files` (module → (source, is_package))."""
    modules = set(files)
    problems = []
    package_edges: dict[str, set[str]] = {}
    for module, (source, is_package) in sorted(files.items()):
        mine = layer_of(module)
        for line, imported in imports_of(source, module, is_package):
            target = _existing(imported, modules)
            if target == module or target == "affina":
                continue
            theirs = layer_of(target)
            if theirs > mine:
                problems.append(
                    f"{module}:{line} imports {target}: {LAYER_NAMES[mine[0]]} (layer {mine[0]}) "
                    f"→ {LAYER_NAMES[theirs[0]]} (layer {theirs[0]})"
                    + (" — recipes go evaluate < train < tune" if mine[0] == theirs[0] else ""))
            a, b = package_of(module), package_of(target)
            if a != b and layer_of(module)[0] != SERVICE:
                package_edges.setdefault(a, set()).add(b)
    problems += [f"import cycle between packages: {' → '.join(c)}" for c in _cycles(package_edges)]
    return problems


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles, seen = [], set()
    def walk(node, stack):
        if node in stack:
            cycle = stack[stack.index(node):] + [node]
            key = frozenset(cycle)
            if key not in seen:
                seen.add(key)
                cycles.append(cycle)
            return
        for nxt in sorted(edges.get(node, ())):
            walk(nxt, stack + [node])
    for start in sorted(edges):
        walk(start, [])
    return cycles


def read_tree(src: Path = SRC) -> dict[str, tuple[str, bool]]:
    return {module_name(p, src): (p.read_text(), p.name == "__init__.py")
            for p in sorted((src / "affina").rglob("*.py"))}


def test_every_import_points_down():
    files = read_tree()
    assert len(files) > 50  # the walk found the package
    problems = violations(files)
    assert not problems, "imports that break the layering:\n  " + "\n  ".join(problems)


def test_every_module_has_a_layer():
    for module in read_tree():
        layer_of(module)


@pytest.mark.parametrize("module,source,expected", [
    # module-level, absolute: core → govern
    ("affina.data.extra", "from affina.govern.registry import lookup\n", "affina.govern.registry"),
    # function-level, relative: record → recipes
    ("affina.record.extra", "def f():\n    from ..train.recipe import train\n", "affina.train.recipe"),
    # `from .. import x` naming a submodule: core → service
    ("affina.models.extra", "from .. import cli\n", "affina.cli"),
    # inside the recipes layer: evaluate must not import train
    ("affina.evaluate.extra", "import affina.train.recipe\n", "affina.train.recipe"),
])
def test_a_synthetic_upward_import_is_caught(module, source, expected):
    files = read_tree()
    files[module] = (source, False)
    problems = violations(files)
    assert any(p.startswith(module) and expected in p for p in problems), problems


def test_a_package_cycle_is_caught():
    files = read_tree()
    # two same-layer packages importing each other: not upward, but a cycle
    files["affina.models.extra"] = ("from affina.data import records\n", False)
    files["affina.data.extra"] = ("from affina.models import resolve\n", False)
    problems = violations(files)
    assert any(p.startswith("import cycle") and "models" in p and "data" in p for p in problems), problems

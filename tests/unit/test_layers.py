"""The layers of vigil/ point only down, and no modules import each other in a cycle.

Read from the source (ast), so an import inside a function or a TYPE_CHECKING block counts
as much as one at the top: a lazy import does not make an upward dependency any less upward.
The order, lowest first, is docs/architecture.md's ("Layers"); a module that no layer names
fails the test, so a new package has to be given its place.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import vigil
from vigil.graph import find_cycles

ROOT = Path(vigil.__file__).resolve().parent

#: Lowest first. A module may import from its own layer and the layers below it. A name is
#: a module or a package (then every module under it).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("vigil", "vigil.messages", "vigil.notifications", "vigil.status", "vigil.graph",
              "vigil.config", "vigil.config_diff")),
    ("core", ("vigil.cluster", "vigil.guard.core", "vigil.guard.holdings")),
    ("system", ("vigil.resources", "vigil.transports", "vigil.local", "vigil.fencing",
                "vigil.guard", "vigil.journal", "vigil.sdnotify", "vigil.netlink")),
    ("shell", ("vigil.actors",)),
    ("daemon", ("vigil.daemon", "vigil.metrics")),
    ("faces", ("vigil.cli", "vigil.api", "vigil.ha", "vigil.demo")),
)


@dataclass(frozen=True, slots=True)
class Import:
    importer: str
    imported: str
    line: int
    top_level: bool  # runs when the importer is imported (not inside a function)

    def __str__(self) -> str:
        return f"{self.importer} (line {self.line}) imports {self.imported}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer_of(module: str) -> int:
    """The index of ``module``'s layer in LAYERS (the longest name that covers it)."""
    best: tuple[int, int] | None = None  # (length of the matching name, layer)
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            covers = module == name or (module.startswith(name + ".") and name != "vigil")
            if covers and (best is None or len(name) > best[0]):
                best = (len(name), index)
    if best is None:
        pytest.fail(f"{module} belongs to no layer: add it to LAYERS in {__file__} and to the "
                    "layer list of docs/architecture.md")
    return best[1]


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    # "from . import x" in a package's __init__ is relative to the package itself
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _target(name: str) -> str | None:
    """The Vigil module ``name`` is, or the innermost one it is inside; None: not Vigil's."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> Iterator[Import]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            in_function.update(id(inner) for inner in ast.walk(node) if inner is not node)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            source = _resolve(module, is_package, node)
            # "from vigil.resources import proc" imports the module vigil.resources.proc
            names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES
                     else source for alias in node.names]
        for name in dict.fromkeys(names):
            target = _target(name)
            if target is not None and target != module:
                yield Import(module, target, node.lineno, id(node) not in in_function)


ALL_IMPORTS = [imp for module in MODULES for imp in imports_of(module)]


def test_every_module_has_a_layer_and_the_parser_sees_the_imports() -> None:
    for module in MODULES:
        layer_of(module)
    # The walk finds imports inside functions and TYPE_CHECKING blocks too.
    found = {(imp.importer, imp.imported, imp.top_level) for imp in ALL_IMPORTS}
    assert ("vigil.api", "vigil.actors.node", True) in found  # TYPE_CHECKING
    assert ("vigil.api", "vigil.actors.node", False) in found  # inside a function
    assert ("vigil.resources.application", "vigil.resources.proc", True) in found


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    upward = [
        f"{imp} (layer {LAYERS[layer_of(imp.importer)][0]} imports layer "
        f"{LAYERS[layer_of(imp.imported)][0]})"
        for imp in ALL_IMPORTS if layer_of(imp.imported) > layer_of(imp.importer)]
    assert not upward, "imports that point up:\n" + "\n".join(upward)


@pytest.mark.parametrize("top_level_only", [True, False],
                         ids=["module-level imports", "all imports"])
def test_no_import_cycle(top_level_only: bool) -> None:
    edges: dict[str, set[str]] = {module: set() for module in MODULES}
    for imp in ALL_IMPORTS:
        if imp.top_level or not top_level_only:
            edges[imp.importer].add(imp.imported)
    cycles = find_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", ["vigil.cli.main", "vigil.ha", "vigil.api.client",
                                    "vigil.guard.process"])
def test_the_cli_fuse_and_client_do_not_load_the_actor_system(module: str) -> None:
    # A fresh interpreter: this one has long imported Pykka for other tests.
    code = f"import sys, {module}; print(sorted(m for m in ('pykka', 'vigil.actors') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]", f"importing {module} loads {out.stdout.strip()}"

"""The shape of the package: public API, __all__, no borrowed private names, one version, citations that resolve."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import re
from pathlib import Path

import pytest

import finc_cli

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "finc_cli"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", [p for p in MODULES if p.name != "__main__.py"], ids=_module_name)
def test_every_public_module_declares_all(path):
    module = importlib.import_module(_module_name(path))
    assert isinstance(getattr(module, "__all__", None), (list, tuple)), f"{path} has no __all__"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{path}: __all__ names {missing} that it does not define"


def _imported_modules(tree: ast.Module) -> set[str]:
    """Local names bound to finc_cli modules by `import finc_cli.x as y` or `from finc_cli[.x] import y`."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("finc_cli")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("finc_cli"):
            for alias in node.names:
                try:
                    importlib.import_module(f"{node.module}.{alias.name}")
                except ImportError:
                    continue
                names.add(alias.asname or alias.name)
    return names


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_no_module_uses_another_modules_private_names(path):
    tree = ast.parse(path.read_text())
    borrowed = [
        f"from {node.module} import {a.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("finc_cli")
        for a in node.names
        if a.name.startswith("_") and not a.name.startswith("__")
    ]
    modules = _imported_modules(tree)
    borrowed += [
        f"{node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
        if node.attr.startswith("_") and not node.attr.startswith("__")
    ]
    assert not borrowed, f"{path} uses private names of other modules: {borrowed}"


def test_the_version_is_defined_once():
    assert importlib.metadata.version("finc") == finc_cli.__version__
    assert not re.search(r"(?m)^version\s*=\s*\"", (ROOT / "pyproject.toml").read_text())  # dynamic, from __version__


CITING = [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.c"), *(ROOT / "kernels").glob("*.cu")]
CITING += [
    *(ROOT / "presets").glob("*.yaml"),
    *(ROOT / "tests").glob("*.py"),
    ROOT / "README.md",
    ROOT / "BENCHMARKS.md",
]


def _sections(doc: Path) -> set[str]:
    return set(re.findall(r"(?m)^## (\d+)\.", doc.read_text()))


@pytest.mark.parametrize("path", CITING, ids=lambda p: str(p.relative_to(ROOT)))
def test_citations_point_into_the_repository(path):
    text = path.read_text()
    if path != Path(__file__):
        assert not re.search(r"\bDESIGN\b|\bSTYLE \d|\b[Ii]ssue #?\d", text), (
            f"{path} cites a document or issue a reader cannot open"
        )
    for doc, numbers in re.findall(r"docs/([\w-]+\.md)((?:\s*§\d+(?:[–,-]\s*§?\d+)*)?)", text):
        target = ROOT / "docs" / doc
        assert target.is_file(), f"{path} cites docs/{doc}, which does not exist"
        for number in re.findall(r"\d+", numbers):
            assert number in _sections(target), f"{path} cites docs/{doc} §{number}, which has no such section"


# The layers, lowest first. A module may import its own layer and the layers below it, never above:
# the folder a module sits in says what it may use. `bench` sits below the commands because
# `finc compare` times its variants with the model benchmark.
LAYERS = [
    (
        "base",
        [
            "finc_cli",
            "finc_cli.errors",
            "finc_cli.config",
            "finc_cli.dataset_shapes",
            "finc_cli.files",
            "finc_cli.runtime",
            "finc_cli.text",
        ],
    ),
    ("inverse", ["finc_cli.inverse"]),
    ("flows", ["finc_cli.flows"]),
    ("model", ["finc_cli.model", "finc_cli.losses", "finc_cli.health", "finc_cli.decode_precision"]),
    ("data", ["finc_cli.data"]),
    ("checkpoint", ["finc_cli.checkpoint"]),
    ("train", ["finc_cli.train"]),
    ("bench", ["finc_cli.bench"]),
    ("commands", ["finc_cli.commands"]),
    ("cli", ["finc_cli.cli", "finc_cli.__main__"]),
]
# Optional packages a module may import inside a function (and cli/, to keep `finc --help` free of torch).
LAZY_PACKAGES = ("cupy", "matplotlib", "tensorboard", "torch.utils.tensorboard", "gdown", "sklearn")


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix that owns `module`."""
    best, index = "", None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            owns = module == prefix or (module.startswith(prefix + ".") and prefix != "finc_cli")
            if owns and len(prefix) > len(best):
                best, index = prefix, i
    assert index is not None, f"{module} is in no layer: add it to LAYERS in tests/test_structure.py"
    return index


def package_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported finc_cli module, line, at module level) for every import of the package in a file."""
    out = []
    tree = ast.parse(path.read_text())
    inner = _inside_functions(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("finc_cli"):
            for alias in node.names:  # `from finc_cli.x import y` imports module x.y when y is one, else x
                target = f"{node.module}.{alias.name}"
                out.append((target if _is_module(target) else node.module, node.lineno, id(node) not in inner))
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) not in inner) for a in node.names if a.name.startswith("finc_cli")]
    return out


def _inside_functions(tree: ast.Module) -> set[int]:
    """The ids of the import statements inside a function body (a module-level try/except counts as top)."""
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return {id(n) for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_imports_run_down_the_layers(path):
    """The package root is exempt for its lazy re-exports (`finc_cli.load_checkpoint`), which keep it free of torch."""
    here = _module_name(path)
    mine = layer_of(here)
    upward = [
        f"line {line}: {target} ({LAYERS[layer_of(target)][0]}) from the {LAYERS[mine][0]} layer"
        for target, line, top in package_imports(path)
        if layer_of(target) > mine and (top or path != PACKAGE / "__init__.py")
    ]
    assert not upward, f"{here} imports upward: {upward}"


@pytest.mark.parametrize("path", [p for p in MODULES if p.relative_to(PACKAGE).parts[0] != "cli"], ids=_module_name)
def test_imports_sit_at_the_top_outside_cli(path):
    """Outside cli/, a function-level import is for an optional package only, never to hide a cycle."""
    tree = ast.parse(path.read_text())
    inner = _inside_functions(tree)
    lazy = []
    for node in ast.walk(tree):
        if id(node) in inner:
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            lazy += [f"line {node.lineno}: {n}" for n in names if n and not n.startswith(LAZY_PACKAGES)]
    if path == PACKAGE / "__init__.py":  # its lazy re-exports keep `import finc_cli` (and `finc --help`) free of torch
        lazy = [item for item in lazy if "finc_cli." not in item]
    assert not lazy, f"{_module_name(path)} imports inside functions: {lazy}"


def test_no_import_cycles_between_modules():
    graph = {_module_name(p): {t for t, _, _ in package_imports(p) if t != _module_name(p)} for p in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith("finc_cli") and nxt in graph and _is_package(nxt, node):
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if state.get(nxt) is None and nxt in graph:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if state.get(module) is None:
            visit(module)


def _is_package(target: str, importer: str) -> bool:
    """A package's __init__ re-exports its modules: importing the package from inside it is no cycle."""
    return importer.startswith(target + ".")

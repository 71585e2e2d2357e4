"""The shape of the package: public API, __all__, no borrowed private names, one version, citations that resolve."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
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

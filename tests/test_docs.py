"""The docs against the code: lists that mirror code, the README's front door, links and commands that resolve."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import typer

from finc_cli.cli.main import app
from finc_cli.config import RESUMABLE_KEYS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "finc_cli"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README = ROOT / "README.md"
MARKDOWN = [README, ROOT / "BENCHMARKS.md", *DOCS]


def _between(text: str, name: str) -> str:
    match = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert match, f"no {name} markers"
    return match.group(1)


def _section(text: str, title: str) -> str:
    match = re.search(rf"(?ms)^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text)
    assert match, f"no section {title!r}"
    return match.group(1)


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"(?ms)^```[\w-]*\n(.*?)^```", text)


def test_the_resume_keys_in_the_docs_are_the_configs():
    listed = _between((ROOT / "docs" / "training.md").read_text(), "resume-keys")
    keys = re.findall(r"`((?:data|model|train)\.\w+)`", listed)
    assert len(keys) == len(set(keys)), "a resume key is listed twice"
    assert set(keys) == set(RESUMABLE_KEYS)


def _layout_entries() -> set[str]:
    """Names in the layout tree one level below finc_cli/: `name.py` modules and `name/` folders."""
    tree = _code_blocks((ROOT / "docs" / "layout.md").read_text())[0]
    lines = tree.splitlines()
    assert lines[0] == "finc_cli/"
    entries = set()
    for line in lines[1:]:
        if not line.startswith("  ") or line.startswith("   "):
            continue  # a top-level sibling of finc_cli/, or a description's continuation
        names = re.split(r"\s{2,}", line.strip())[0]
        entries.update(name.strip() for name in names.split("·"))
    return entries


def _package_entries() -> set[str]:
    modules = {p.name for p in PACKAGE.glob("*.py")}
    folders = {f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    return modules | folders


def test_the_layout_tree_lists_every_folder_and_top_level_module():
    entries = _layout_entries()
    assert entries, "the layout tree lists nothing"
    assert entries == _package_entries(), (
        f"missing from docs/layout.md: {sorted(_package_entries() - entries)}; "
        f"not in finc_cli/: {sorted(entries - _package_entries())}"
    )


def test_the_layout_tree_also_names_the_folders_beside_the_package():
    tree = _code_blocks((ROOT / "docs" / "layout.md").read_text())[0]
    siblings = re.findall(r"(?m)^(\w+)/", tree)
    assert "finc_cli" in siblings
    for name in siblings:
        assert (ROOT / name).is_dir(), f"docs/layout.md names {name}/, which does not exist"


def test_the_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) < 150
    assert _code_blocks(_section(text, "Quickstart")) == ["make demo\nmake test\n"]
    assert "](docs/report.png)" in text


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    for target in LINK.findall(path.read_text()):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_m_command_names_a_module_that_exists(path):
    for module in re.findall(r"python3? -m (finc_cli[\w.]*)", path.read_text()):
        assert importlib.util.find_spec(module) is not None, f"{path.name} runs {module}, which does not exist"


def _resolve(words: list[str]):
    """The command that `finc WORDS...` runs, descending into groups (`finc data download`)."""
    command = typer.main.get_command(app)
    for word in words[1:]:
        if not hasattr(command, "commands"):  # a leaf command, not a group
            break
        assert word in command.commands, f"README runs `{' '.join(words)}`: no command {word}"
        command = command.commands[word]
    return command


def test_every_command_and_option_in_the_readme_exists():
    block = _code_blocks(_section(README.read_text(), "Commands"))[0]
    lines = [line.split("#")[0].split() for line in block.splitlines() if line.startswith("finc ")]
    assert len(lines) >= 10
    for words in lines:
        command = _resolve(words)
        options = {option for param in command.params for option in param.opts}
        unknown = [w for w in words if w.startswith("--") and w not in options]
        assert not unknown, f"README runs `{' '.join(words)}`, which takes no {unknown}"

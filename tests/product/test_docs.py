"""The documentation stays true: every ```python block of README.md and docs/**/*.md runs, the API page lists every
public name, the parameters the docstrings describe exist, and the paths and links the pages name exist.

Blocks run page by page, in page order, in one namespace per page (so a page can build a model once and use it in
later blocks); a block inside a content tab (``=== "PyTorch"``) continues the namespace of the earlier blocks of
that tab, so each tab is a reader's path of its own. Each page runs in an empty working folder, and a failing block
shows its page and line in the traceback.

A block that must not run here carries a marker on the line before its fence:

* ``<!-- docs-test: skip REASON -->``: not run (a reason is required; keep these few);
* ``<!-- docs-test: recipe NAME -->``: run by ``tests/product/test_readme_recipes.py`` with what the recipe leaves
  to the user supplied, and checked for what it promises.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
# Pages whose blocks train real ResNets for a few steps: the slow tier.
SLOW_PAGES = {"docs/guide/optimizers.md"}

MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<kind>\S+)\s*(?P<arg>.*?)\s*-->$")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
TAB = re.compile(r'^===\+?\s+"(?P<label>[^"]+)"')


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the block's first line of code
    code: str
    lang: str
    tab: str | None  # the content tab the block sits in
    marker: str | None  # "skip" / "recipe" / another word (an error)
    arg: str  # the marker's reason or recipe name

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, with the tab they sit in and their marker."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, tab, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        if line and not line[0].isspace():
            tab = m.group("label") if (m := TAB.match(line)) else None
        opening = FENCE.match(line)
        if not opening:
            i += 1
            continue
        indent, fence = opening.group("indent"), opening.group("fence")
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        code = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        found.append(
            Block(
                path,
                i + 2,
                code,
                opening.group("lang"),
                tab if indent else None,
                marker.group("kind") if marker else None,
                marker.group("arg") if marker else "",
            )
        )
        i = end + 1
    return found


def run_blocks(blocks: list[Block]) -> dict:
    """Run the unmarked python blocks in order; returns the namespaces (key None: the page's, else a tab label)."""
    spaces: dict = {None: {"__name__": "__docs__"}}
    for block in blocks:
        if block.lang != "python" or block.marker:
            continue
        space = spaces[None] if block.tab is None else spaces.setdefault(block.tab, dict(spaces[None]))
        source = "\n" * (block.line - 1) + block.code  # tracebacks point at the page's own line numbers
        exec(compile(source, str(block.path), "exec"), space)
    return spaces


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _pages_to_run():
    for path in PAGES:
        if any(b.lang == "python" and not b.marker for b in blocks_of(path)):
            marks = [pytest.mark.slow] if _page_id(path) in SLOW_PAGES else []
            yield pytest.param(path, id=_page_id(path), marks=marks)


@pytest.mark.parametrize("page", list(_pages_to_run()))
def test_the_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files the examples save land here
    run_blocks(blocks_of(page))


def test_a_broken_block_fails_and_names_its_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n```python\nx = 1\n```\n\n<!-- docs-test: skip shown only -->\n```python\nraise SystemExit\n```\n\n"
        '=== "A"\n\n    ```python\n    y = x + 1\n    ```\n\n```python\nassert "y" not in globals()\n'
        "assert x == 2, 'the recipe is broken'\n```\n"
    )
    with pytest.raises(AssertionError, match="the recipe is broken") as caught:
        run_blocks(blocks_of(page))
    assert (caught.traceback[-1].path, caught.traceback[-1].lineno + 1) == (page, 20)


def test_every_marker_is_known_and_says_why():
    problems = []
    for path in PAGES:
        for block in blocks_of(path):
            if block.marker not in (None, "skip", "recipe"):
                problems.append(f"{block.where}: unknown marker {block.marker!r} (expected skip or recipe)")
            elif block.marker and not block.arg:
                problems.append(f"{block.where}: a {block.marker} marker needs a reason or a recipe name")
            elif block.marker and block.lang != "python":
                problems.append(f"{block.where}: a marker on a {block.lang!r} block: only python blocks run")
    assert not problems, "\n".join(problems)


def _public_names() -> list[str]:
    tree = ast.parse((ROOT / "xfreeze" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return [ast.literal_eval(e) for e in node.value.elts]
    raise AssertionError("xfreeze/__init__.py has no __all__")


def _integrations() -> list[str]:
    return sorted(p.stem for p in (ROOT / "xfreeze" / "integrations").glob("*.py") if not p.stem.startswith("_"))


def test_the_api_page_lists_every_public_name():
    documented = set(re.findall(r"^::: (\S+)", (DOCS / "api.md").read_text(), re.M))
    wanted = {f"xfreeze.{name}" for name in _public_names()}
    wanted |= {f"xfreeze.integrations.{module}.Finetuning" for module in _integrations()}
    assert not wanted - documented, f"add to docs/api.md: {sorted(wanted - documented)}"


@pytest.mark.classic_stack  # griffe: the docs tools live in .venv/
def test_documented_parameters_exist():
    """mkdocs.yml turns off griffe's unknown-parameter warning (an entry may name several parameters,
    "lr_mult, no_decay, layer_decay: ..."); this checks every name of every entry against the signature instead."""
    import griffe  # the docs extra, which the test extra includes

    package = griffe.load("xfreeze", search_paths=[str(ROOT)], docstring_parser="google")
    objects = [package[name] for name in _public_names()]
    objects += [package[f"integrations.{module}.Finetuning"] for module in _integrations()]
    problems = []
    for obj in objects:
        targets = [obj, *(m for name, m in obj.members.items() if not name.startswith("_") and m.is_function)]
        for target in targets:
            problems += _unknown_parameters(griffe, target)
    assert not problems, "\n".join(problems)


def _unknown_parameters(griffe, obj) -> list[str]:
    if obj.docstring is None or not (obj.is_function or obj.is_class):
        return []
    function = obj.members.get("__init__") if obj.is_class else obj
    if function is None:  # a dataclass: its fields are its parameters
        signature, takes_keywords = set(obj.attributes), False
    else:
        signature = {p.name for p in function.parameters}
        takes_keywords = any(p.kind is griffe.ParameterKind.var_keyword for p in function.parameters)
    problems = []
    for section in obj.docstring.parse(griffe.Parser.google, warnings=False):
        if section.kind is not griffe.DocstringSectionKind.parameters:
            continue
        for entry in section.value:
            for name in (n.strip().lstrip("*") for n in entry.name.split(",")):
                if name not in signature and not takes_keywords:  # **options takes documented keywords
                    problems.append(f"{obj.path}: the docstring describes {name!r}, which is not a parameter")
    return problems


@pytest.mark.classic_stack  # griffe
def test_a_described_parameter_that_does_not_exist_is_found(tmp_path):
    import griffe

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text(
        'def f(a, b):\n    """Do.\n\n    Args:\n        a, c: numbers.\n        b: another.\n    """\n'
    )
    package = griffe.load("pkg", search_paths=[str(tmp_path)], docstring_parser="google")
    assert _unknown_parameters(griffe, package["f"]) == ["pkg.f: the docstring describes 'c', which is not a parameter"]


PATH = re.compile(r"`((?:xfreeze|backends|tests|bench|examples)/[\w/.*-]*\.py)`")


def test_the_files_the_pages_name_exist():
    """Paths written in code spans (`bench/ema.py`, `backends/*/names.py`) name files of this repository."""
    missing = [
        f"{_page_id(page)}: {path}"
        for page in PAGES
        for path in PATH.findall(page.read_text(encoding="utf-8"))
        if not any(ROOT.glob(path))
    ]
    assert not missing, "\n".join(missing)


LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_the_readme_links_resolve():
    """The README is read on the repository's front page, outside the site: its links are paths in the checkout."""
    broken = [
        target
        for target, _ in LINK.findall((ROOT / "README.md").read_text(encoding="utf-8"))
        if "://" not in target and not (ROOT / target).exists()
    ]
    assert not broken, broken

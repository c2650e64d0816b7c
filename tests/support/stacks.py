"""The two pinned environments (issue 19), as a pytest plugin that tests/conftest.py loads.

The classic stack (``.venv``, constraints.txt: PaddleNLP 2.8.1, transformers 4.57, pytorch-lightning) and the current
stack (``.venv-current``, constraints-current.txt: transformers 5, PaddleFormers 1.2, PEFT, ``lightning``) cannot share
one environment, so ``make test`` runs pytest in each. A test that needs one stack says so:

- ``@pytest.mark.classic_stack`` / ``@pytest.mark.current_stack`` on a test or class, or ``pytestmark = ...`` in a
  module. Unmarked tests are the core: they run in both environments.
- With arguments, only the parametrizations whose id has one of them as a ``-``-separated part need that stack:
  ``@pytest.mark.classic_stack("paddle")`` on a test over ``fw`` (its Paddle side builds a PaddleNLP model, its torch
  side runs everywhere), ``@pytest.mark.classic_stack("paddlenlp")`` for ids like ``paddlenlp-ernie``.
- In the other stack's environment such a test is deselected (counted in the summary line); a module whose
  ``pytestmark`` names the other stack is not even imported (its module-level imports may not exist here).
- In its own stack's environment it must run: a ``pytest.importorskip`` that finds its package missing there FAILS
  (a missing package is a broken install, not a reason to skip).

Which stack this environment is: ``XFREEZE_STACK`` (classic or current) if set, else ``current`` where transformers
5 or later is installed, else ``classic``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
from pathlib import Path

import pytest

STACKS = ("classic", "current")
# the packages each stack is defined by (tests/product/test_packaging.py checks they are installed at their pins)
CONSTRAINTS = {"classic": "constraints.txt", "current": "constraints-current.txt"}
DEFINING = {
    "classic": ("paddlenlp", "transformers", "pytorch-lightning"),
    "current": ("paddleformers", "transformers", "peft", "lightning"),
}
VENVS = {"classic": ".venv", "current": ".venv-current"}
_MODULE_MARK = re.compile(r"\bpytest\.mark\.(classic|current)_stack\b")
_MISSING = "could not import"  # how pytest.importorskip words its skip
_STATE = pytest.StashKey[dict]()


def version_of(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def this_stack() -> str:
    """The stack of the running environment."""
    forced = os.environ.get("XFREEZE_STACK")
    if forced:
        if forced not in STACKS:
            raise pytest.UsageError(f"XFREEZE_STACK={forced!r}: expected one of {STACKS}")
        return forced
    transformers = version_of("transformers")
    return "current" if transformers and int(transformers.split(".")[0]) >= 5 else "classic"


def declared_stack(path: Path) -> str | None:
    """The stack a test module's top-level ``pytestmark`` names, read from its source (before importing it)."""
    if path.suffix != ".py" or not path.name.startswith("test_"):
        return None
    source = path.read_text(encoding="utf-8")
    if "_stack" not in source:
        return None
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            found = _MODULE_MARK.search(ast.get_source_segment(source, node.value) or "")
            if found:
                return found.group(1)
    return None


def pytest_configure(config):
    for stack in STACKS:
        config.addinivalue_line(
            "markers",
            f"{stack}_stack: needs the {stack} stack ({CONSTRAINTS[stack]}, {VENVS[stack]}/): deselected in the other "
            "environment, and a missing package fails it in its own",
        )
    config.stash[_STATE] = {"stack": this_stack(), "modules": set(), "tests": 0}


@pytest.hookimpl(tryfirst=True, specname="pytest_make_collect_report")
def pytest_make_collect_report_of_other_stack(collector):
    """A module whose ``pytestmark`` names the other stack is not imported, even when named on the command line."""
    if isinstance(collector, pytest.Module):
        state = collector.config.stash[_STATE]
        declared = declared_stack(Path(collector.path))
        if declared and declared != state["stack"]:
            state["modules"].add(collector.nodeid)
            return pytest.CollectReport(collector.nodeid, "passed", None, [])
    return None


def pytest_collection_modifyitems(config, items):
    state = config.stash[_STATE]
    keep, other = [], []
    for item in items:
        marked = {stack for stack in STACKS if _needs(item, stack)}
        if len(marked) > 1:
            raise pytest.UsageError(f"{item.nodeid}: marked for both stacks; a core test carries neither marker")
        (other if marked and marked != {state["stack"]} else keep).append(item)
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = keep
        state["tests"] = len(other)


def _needs(item, stack: str) -> bool:
    mark = item.get_closest_marker(f"{stack}_stack")
    if mark is None or not mark.args:
        return mark is not None
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        raise pytest.UsageError(f"{item.nodeid}: {stack}_stack{mark.args} names parameters, but it has none")
    return any(f"-{arg}-" in f"-{callspec.id}-" for arg in mark.args)


def _missing_package(report, message: str) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"{message}\nA package this test needs is not installed in this environment, which is meant to run it. "
        "Install it in this stack's pins (constraints.txt / constraints-current.txt via the Makefile), or mark the "
        "test @pytest.mark.classic_stack / @pytest.mark.current_stack so that it runs in the environment that has it."
    )


def _skip_message(longrepr) -> str:
    return str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and call.excinfo is not None and str(call.excinfo.value).startswith(_MISSING):
        _missing_package(report, str(call.excinfo.value))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    if report.skipped and _MISSING in _skip_message(report.longrepr):
        _missing_package(report, _skip_message(report.longrepr))
    return report


def pytest_terminal_summary(terminalreporter, config):
    state = config.stash[_STATE]
    other = STACKS[1 - STACKS.index(state["stack"])]
    versions = ", ".join(f"{name} {version_of(name) or 'MISSING'}" for name in DEFINING[state["stack"]])
    line = f"xfreeze stack: {state['stack']} ({versions})"
    if state["tests"] or state["modules"]:
        line += (
            f"; left to the {other} stack ({VENVS[other]}/): {state['tests']} tests deselected"
            f" and {len(state['modules'])} modules not collected"
        )
    terminalreporter.write_line(line)

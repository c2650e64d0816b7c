"""Backend selection: inferred from the model, forced by a flag, and never importing a framework needlessly."""

import os
import re
import subprocess
import sys

import pytest

import xfreeze
from xfreeze import XFreezeError
import harness
from harness import BACKENDS, KITS, kit
from xfreeze.backends import FRAMEWORKS, FrameworkSpec


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **env},
        timeout=300,
    )


def test_backend_is_inferred_from_the_model(fw):
    model = fw.nn.Linear(2, 2)
    assert xfreeze.get_backend(model) == fw.name
    assert xfreeze.get_backend() is None


def test_matching_flags_are_accepted(fw, monkeypatch):
    model = fw.nn.Linear(2, 2)
    assert xfreeze.select(model, "*", backend=fw.name) == ["weight", "bias"]
    xfreeze.set_backend(fw.name)
    assert xfreeze.get_backend() == fw.name and xfreeze.select(model, "weight") == ["weight"]
    xfreeze.set_backend(None)
    monkeypatch.setenv("XFREEZE_BACKEND", fw.name)
    assert xfreeze.get_backend() == fw.name and xfreeze.get_backend(model) == fw.name


def test_a_flag_contradicting_the_model_is_an_error(fw, monkeypatch):
    other = next(name for name in BACKENDS if name != fw.name)
    model = fw.nn.Linear(2, 2)
    kit(other)  # both frameworks are installed here
    with pytest.raises(XFreezeError, match=f"backend='{other}' was requested but Linear is a"):
        xfreeze.freeze(model, "*", backend=other)
    xfreeze.set_backend(other)
    with pytest.raises(XFreezeError, match=f"pass backend='{fw.name}'"):
        xfreeze.summary(model)
    xfreeze.set_backend(None)
    monkeypatch.setenv("XFREEZE_BACKEND", other)
    with pytest.raises(XFreezeError, match="XFREEZE_BACKEND"):
        xfreeze.replace_head(model, 3, head="*")
    assert xfreeze.select(model, "*", backend=fw.name) == ["weight", "bias"], "backend= beats the environment"
    assert fw.is_trainable(model.weight)


@pytest.mark.parametrize(
    "call",
    [lambda: xfreeze.set_backend("jax"), lambda: xfreeze.select(kit(BACKENDS[0]).linear(2, 2), "*", backend="tf")],
)
def test_unknown_backend_names(call):
    with pytest.raises(XFreezeError, match=re.escape(f"Expected one of {BACKENDS}. Received: backend=")):
        call()


def test_unknown_backend_in_the_environment(monkeypatch):
    monkeypatch.setenv("XFREEZE_BACKEND", "mxnet")
    with pytest.raises(XFreezeError, match=r"Received: XFREEZE_BACKEND='mxnet'"):
        xfreeze.select(kit(BACKENDS[0]).linear(2, 2), "*")


def test_every_registered_framework_has_a_kit_with_the_same_surface():
    """The test kit reads the registry: one kit class per framework, each answering the same names."""
    assert set(KITS) == set(FRAMEWORKS)
    surfaces = {name: {a for a in dir(type(kit(name))) if not a.startswith("_")} for name in FRAMEWORKS}
    first = surfaces[BACKENDS[0]]
    assert all(surface == first for surface in surfaces.values()), {n: s ^ first for n, s in surfaces.items()}
    assert all(kit(name).name == name for name in FRAMEWORKS)


def test_a_registered_framework_without_a_kit_or_an_install_fails_loudly(monkeypatch):
    spec = FrameworkSpec("mxnet", "mxnet_not_installed", "m.Block", "m.NDArray", "pip install mxnet", ".mxnet")
    monkeypatch.setitem(FRAMEWORKS, "mxnet", spec)
    with pytest.raises(LookupError, match=r"'mxnet' is registered .* has no kit for it"):
        kit("mxnet")
    monkeypatch.setitem(harness.KITS, "mxnet", harness.TorchKit)
    with pytest.raises(ImportError, match=r"mxnet_not_installed cannot be imported: pip install mxnet"):
        kit("mxnet")


@pytest.mark.parametrize("obj", [[1, 2], "resnet18", None, 3.0])
def test_non_models_are_refused(obj):
    with pytest.raises(XFreezeError, match="is not a supported model type"):
        xfreeze.summary(obj)


def test_import_xfreeze_imports_no_framework():
    result = run_python(
        "import sys, xfreeze\n"
        "try:\n    xfreeze.select([1], '*')\nexcept xfreeze.XFreezeError as e:\n    print('refused:', e)\n"
        "print(sorted(m for m in ('torch', 'paddle') if m in sys.modules))"
    )
    assert result.returncode == 0, result.stderr
    assert "refused: list is not a supported model type" in result.stdout
    assert result.stdout.strip().endswith("[]")


@pytest.mark.parametrize(
    "present, absent, install",
    [("torch", "paddle", "pip install paddlepaddle"), ("paddle", "torch", "pip install torch")],
)
def test_with_one_framework_installed_the_other_is_a_clear_error(present, absent, install):
    build = {"torch": "import torch; m = torch.nn.Linear(2, 2)", "paddle": "import paddle; m = paddle.nn.Linear(2, 2)"}[
        present
    ]
    code = (
        f"import sys; sys.modules[{absent!r}] = None  # as if {absent} were not installed\n"
        f"import xfreeze\n{build}\n"
        "print(xfreeze.freeze(m, 'weight').changed)\n"
        f"try:\n    xfreeze.set_backend({absent!r})\nexcept xfreeze.XFreezeError as e:\n    print('error:', e)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "['weight']" in result.stdout
    assert f"error: backend {absent!r} needs {absent}, which is not installed: {install}" in result.stdout


def test_the_core_never_imports_a_framework():
    """Only backends/ may import torch, paddle or their model zoos (docstring examples aside)."""
    import ast
    from pathlib import Path

    frameworks = {"torch", "torchvision", "paddle", "paddlenlp", "transformers", "timm"}
    offenders = []
    core = Path(__file__).resolve().parents[2] / "xfreeze"
    for path in core.rglob("*.py"):
        if "integrations" in path.parts:  # each integration imports its training framework, by design
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in frameworks]
    assert not offenders, offenders


def test_the_core_never_branches_on_a_backend_name():
    """Framework differences live in the adapters: no `adapter.name == "torch"` (or "paddle") in xfreeze/."""
    import ast
    from pathlib import Path
    from xfreeze.backends import ADAPTERS

    offenders = []
    for path in (Path(__file__).resolve().parents[2] / "xfreeze").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                constants = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if any(value in ADAPTERS for value in constants):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders

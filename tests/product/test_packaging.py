"""backends/ installs as xfreeze.backends, in a built wheel and in the editable install; never as `backends`."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def python(code: str, cwd, **env):
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **env},
    )


@pytest.mark.slow
def test_built_wheel_holds_backends_inside_the_package(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("xfreeze", "backends"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("xfreeze-*.whl")
    files = zipfile.ZipFile(wheel).namelist()
    assert "xfreeze/backends/torch/adapter.py" in files and "xfreeze/backends/paddle/adapter.py" in files
    assert {"xfreeze/model/view.py", "xfreeze/weights/files.py", "xfreeze/training/ema.py"} <= set(files)
    assert not [f for f in files if f.startswith("backends/")], "no top-level backends package"

    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    code = (
        "import xfreeze, xfreeze.backends, torch\n"
        "from xfreeze.backends.torch import adapter as torch_backend\n"
        "print(xfreeze.__file__); print(xfreeze.select(torch.nn.Linear(2, 2), 'bias'))\n"
        "import importlib.util; print('top-level backends:', importlib.util.find_spec('backends'))"
    )
    # -I-like isolation: the wheel's copy must win, and the repository must not be on the path
    result = python(code, cwd=tmp_path, PYTHONPATH=str(target), PYTHONNOUSERSITE="1")
    assert result.returncode == 0, result.stderr
    assert str(target) in result.stdout and "['bias']" in result.stdout
    assert "top-level backends: None" in result.stdout


def test_editable_install_maps_backends_into_the_package(tmp_path):
    result = python(
        "import xfreeze.backends, importlib.util\n"
        "print(xfreeze.backends.__file__)\n"
        "print('top-level backends:', importlib.util.find_spec('backends'))",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.splitlines()[0]) == ROOT / "backends" / "__init__.py"
    assert "top-level backends: None" in result.stdout


def test_a_plain_checkout_imports_without_an_install(tmp_path):
    """A copy of the repository on sys.path, with site's .pth files (the editable install's finder) not processed:
    ``xfreeze.backends`` still resolves, to the copy's backends/ folder."""
    import site
    import sysconfig

    for name in ("xfreeze", "backends"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    packages = sysconfig.get_paths()["purelib"]
    code = (
        "import sys, xfreeze, torch\n"
        "import xfreeze.backends.torch.adapter as a\n"
        "print(a.__file__); print(xfreeze.select(torch.nn.Linear(2, 2), 'bias'))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), packages, *site.getsitepackages()])},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(tmp_path / "backends" / "torch" / "adapter.py")
    assert "['bias']" in result.stdout


# The two pinned environments (issue 19; tests/support/stacks.py): each environment runs its own stack's tests.


def direct_pins(constraints: Path) -> dict[str, str]:
    """The pins above the resolved part of a constraints file: the stack's direct dependencies, with their reasons."""
    head = constraints.read_text().split("# Everything else")[0]
    return dict(line.split("#")[0].strip().split("==") for line in head.splitlines() if line[:1].isalpha())


def test_this_environment_holds_its_stack_at_its_pins():
    from stacks import CONSTRAINTS, DEFINING, this_stack, version_of

    stack = this_stack()
    pins = direct_pins(ROOT / CONSTRAINTS[stack])
    assert set(DEFINING[stack]) <= set(pins), f"{CONSTRAINTS[stack]} pins every package that defines the {stack} stack"
    installed = {name: version_of(name) for name in pins}
    wrong = {name: (pin, installed[name]) for name, pin in pins.items() if installed[name] != pin}
    assert not wrong, f"{stack}: (pinned, installed) differ in {wrong}; `make` installs {CONSTRAINTS[stack]}"


def test_the_two_constraints_files_pin_disjoint_stacks():
    classic, current = direct_pins(ROOT / "constraints.txt"), direct_pins(ROOT / "constraints-current.txt")
    assert "paddlenlp" in classic and "paddlenlp" not in current
    assert "paddleformers" in current and "paddleformers" not in classic
    assert classic["transformers"].startswith("4.") and current["transformers"].startswith("5.")
    shared = ("torch", "torchvision", "paddlepaddle")  # the frameworks themselves: the same builds in both
    assert {name: classic[name] for name in shared} == {name: current[name] for name in shared}


STACKED_TESTS = """
import pytest

def test_core():
    pass

@pytest.mark.classic_stack
def test_classic():
    pass

@pytest.mark.current_stack
def test_current():
    pass

@pytest.mark.classic_stack
def test_classic_needs_a_missing_package():
    pytest.importorskip("xfreeze_no_such_package")
"""
OTHER_STACK_MODULE = """
import pytest
pytestmark = pytest.mark.current_stack
pytest.importorskip("xfreeze_no_such_package")  # never imported in the classic environment

def test_current_module():
    pass
"""
KEEP_GOING = ["--continue-on-collection-errors"]  # to see every outcome; make test stops at a collection error
OWN_STACK_MODULE = OTHER_STACK_MODULE.replace("current_stack", "classic_stack").replace("current_module", "own")


def test_stack_markers_deselect_the_other_stack_and_fail_a_missing_package(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\n")
    (tmp_path / "test_stacked.py").write_text(STACKED_TESTS)
    (tmp_path / "test_other_stack.py").write_text(OTHER_STACK_MODULE)
    (tmp_path / "test_own_stack.py").write_text(OWN_STACK_MODULE)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "stacks",
            "-p",
            "no:cacheprovider",
            "-rA",
            *KEEP_GOING,
            "-c",
            "pytest.ini",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests" / "support"), "XFREEZE_STACK": "classic"},
    )
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    assert "PASSED test_stacked.py::test_core" in out and "PASSED test_stacked.py::test_classic" in out
    assert "test_current " not in out and "test_current_module" not in out
    assert "FAILED test_stacked.py::test_classic_needs_a_missing_package" in out
    assert "ERROR test_own_stack.py" in out, "a module-level import missing in its own stack fails its collection"
    assert "could not import 'xfreeze_no_such_package'" in out and "SKIPPED" not in out
    assert "1 deselected" in out
    assert "left to the current stack (.venv-current/): 1 tests deselected and 1 modules not collected" in out


@pytest.mark.slow
@pytest.mark.current_stack
def test_the_current_stack_imports_together():
    """PEFT beside PaddleFormers: paddlecodec's torchcodec/ folder (the Makefile removes it) breaks ``import peft``."""
    result = python(
        "import torch, peft, paddleformers, lightning.pytorch, transformers, xfreeze\nprint(transformers.__version__)",
        cwd=ROOT,
        FLAGS_enable_paddleformers_monkey_patch="0",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1].startswith("5.")

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

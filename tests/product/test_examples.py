"""The examples run end to end in both frameworks (small settings; the defaults are for people)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def example(*argv, cwd):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / argv[0]), *argv[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "paddle"])
def test_resnet_transfer(backend, tmp_path):
    out = example(
        "resnet_transfer.py",
        "--backend",
        backend,
        "--epochs",
        "2",
        "--pretrain-epochs",
        "1",
        "--shots",
        "3",
        "--test-images",
        "60",
        "--out",
        str(tmp_path),
        cwd=tmp_path,
    )
    for strategy in ("scratch", "linear probe", "staged", "full, 10x head"):
        assert strategy in out
    assert "final accuracy, best first:" in out
    assert (tmp_path / f"resnet_transfer_{backend}.png").stat().st_size > 10_000
    assert list(tmp_path.glob("pretrained_digits04_*"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "paddle"])
def test_ernie_classify_and_carry_over(backend, tmp_path):
    out = example("ernie_classify.py", "--backend", backend, "--epochs", "2", "--sentences", "120", cwd=tmp_path)
    assert "GENERATED sentences" in out
    other = "paddle" if backend == "torch" else "torch"
    assert f"{backend} -> {other}: same predicted label on 100.0% of the test sentences" in out


@pytest.mark.slow
def test_weights_imagenet_fails_clearly_offline(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "resnet_transfer.py"),
            "--weights",
            "imagenet",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "TORCH_HOME": str(tmp_path)},
    )
    if result.returncode == 0:
        pytest.skip("this machine is online: the ImageNet weights downloaded")
    assert "could not get the ImageNet ResNet-18 weights for torch (offline?)" in result.stderr


@pytest.mark.slow
@pytest.mark.current_stack
@pytest.mark.parametrize("backend", ["torch", "paddle"])
def test_ernie45_finetune_keeps_frozen_bits_and_carries_over(backend, tmp_path):
    out = example("ernie45_finetune.py", "--backend", backend, "--epochs", "2", "--examples", "80", cwd=tmp_path)
    assert "GENERATED examples" in out
    assert "frozen tensors unchanged: True" in out
    other = "paddle" if backend == "torch" else "torch"
    assert f"{backend} -> {other}: same answer on 100.0% of the test prompts" in out

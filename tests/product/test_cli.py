"""The xfreeze command line: plan, inspect, convert; one-line errors with a non-zero exit."""

import subprocess
import sys

import numpy as np
import pytest

import xfreeze
from xfreeze.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("backend", ["torch", "paddle"])
def test_plan_shows_what_trains_with_exact_bytes(capsys, backend):
    code, out, err = run(
        capsys, "plan", "resnet18", "--backend", backend, "--freeze", "*", "!fc", "--head", "10", "--optimizer", "adamw"
    )
    assert code == 0, err
    assert f"xfreeze plan: resnet18 ({backend})" in out
    assert "5,130 of 11,181,642 parameters train" in out
    # 5,130 float32 parameters: 20,520 bytes each for the weights and gradients, twice that for AdamW's moments
    assert "trainable parameters 20,520; gradients 20,520; adamw state 41,040" in out
    assert "locked" in out


def test_plan_of_a_module_callable(capsys):
    code, out, _ = run(capsys, "plan", "torch.nn:Identity")
    assert code == 0 and "0 of 0 parameters train" in out


def test_inspect(capsys, tmp_path):
    path = xfreeze.save_checkpoint(
        {"fc.weight": np.ones((2, 3), "float32"), "bn.running_mean": np.zeros(2)}, tmp_path / "w.safetensors"
    )
    code, out, _ = run(capsys, "inspect", str(path))
    assert code == 0
    assert "fc.weight" in out and "2x3" in out and "float32" in out
    assert "format: safetensors; framework: torch; 2 keys; 40 bytes" in out


def test_convert_with_an_architecture(capsys, tmp_path):
    import torchvision

    src = xfreeze.save_checkpoint(torchvision.models.resnet18(), tmp_path / "r18.pt")
    code, out, err = run(
        capsys, "convert", str(src), str(tmp_path / "r18.pdparams"), "--to", "paddle", "--arch", "resnet18"
    )
    assert code == 0, err
    assert "transposed" in out and "dropped" in out and "unplaced: 0" in out
    import paddle

    model = paddle.vision.models.resnet18()
    report = xfreeze.load_matched(model, tmp_path / "r18.pdparams")
    assert not report.missing and not report.mismatched and not report.converted  # already Paddle's layout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plan", "resnt18"], "unknown model 'resnt18' for torch: not a torchvision name"),
        (
            ["plan", "resnet18", "--freeze", "layr4"],
            "Pattern 'layr4' matched no parameters of ResNet (torch). Did you mean",
        ),
        (["plan", "resnet18", "--head", "0"], "num_classes must be an integer >= 1"),
        (["inspect", "/nonexistent/w.pt"], "checkpoint '/nonexistent/w.pt' does not exist"),
        (["convert", "/nonexistent/w.pt", "out.pdparams", "--to", "paddle"], "does not exist"),
    ],
)
def test_errors_are_one_line_and_non_zero(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("xfreeze: error: ") and message in err and err.count("\n") == 1


def test_console_script_and_help_document_every_option():
    exe = sys.executable.replace("python", "xfreeze") if sys.executable.endswith("python") else "xfreeze"
    for command in ([], ["plan"], ["inspect"], ["convert"]):
        result = subprocess.run([exe, *command, "--help"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        if command == ["plan"]:
            for option in ("--freeze", "--norm", "--head", "--optimizer", "--backend"):
                assert option in result.stdout
        if command == ["convert"]:
            assert "--to" in result.stdout and "--arch" in result.stdout


def test_inspect_prints_key_names_and_metadata_as_data(capsys, tmp_path):
    from xfreeze.weights import files as _checkpoint

    keys = ["[/x]", "[bold]b[/bold]", "\x1b[31mred\x1b[0m", "a b\u202eevil"]
    path = _checkpoint._save(
        {k: np.ones(1, "float32") for k in keys}, tmp_path / "w.safetensors", None, {"framework": "\x1b[2J[/x]"}
    )
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 0, err
    assert "[/x]" in out and "[bold]b[/bold]" in out and "\\x1b[31mred" in out and "\\u202e" in out
    assert "\x1b" not in out and "\u202e" not in out
    assert "note: metadata framework='\\x1b[2J[/x]' ignored" in out


def test_errors_naming_hostile_keys_print_no_escapes(capsys, tmp_path):
    import pickle

    path = tmp_path / "w.pdparams"
    path.write_bytes(pickle.dumps({"\x1b[31mk": np.ones(1), "[/x]": 0.5}, protocol=4))
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 2 and "\x1b" not in err and "values that are not tensors: '[/x]' (float)" in err


def test_hostile_files_are_one_line_errors(capsys, tmp_path):
    import hostile_files

    for path in hostile_files.generate(tmp_path):
        code, out, err = run(capsys, "inspect", path)
        assert code == 2 and err.startswith("xfreeze: error: ") and err.count("\n") == 1, (path, err)


def test_read_only_destination_is_one_line(capsys, tmp_path):
    src = xfreeze.save_checkpoint({"fc.weight": np.ones((2, 3), "float32")}, tmp_path / "w.pt")
    code, out, err = run(capsys, "convert", str(src), "/sys/w.pdparams", "--to", "paddle")
    assert code == 2 and err.count("\n") == 1 and "cannot write '/sys/w.pdparams'" in err


def test_disk_full_is_one_line_with_exit_2(tmp_path):
    src = xfreeze.save_checkpoint({"fc.weight": np.ones((300, 300), "float32")}, tmp_path / "w.pt")
    script = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); from xfreeze.cli import main; "
        f"sys.exit(main(['convert', {str(src)!r}, {str(tmp_path / 'out.pdparams')!r}, '--to', 'paddle']))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    last = result.stderr.splitlines()[-1]  # (importing Paddle may warn first)
    assert last.startswith("xfreeze: error: cannot write") and "EFBIG" in last
    assert result.stderr.count("xfreeze: error") == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]


def test_inspect_a_bf16_checkpoint(capsys, tmp_path):
    import torch

    path = xfreeze.save_checkpoint({"w": torch.ones(2, 3, dtype=torch.bfloat16)}, tmp_path / "w.safetensors")
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 0, err
    assert "bfloat16" in out and "1 keys; 12 bytes" in out

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


@pytest.mark.parametrize("source, target, to", [("w.pt", "out.pdparams", "paddle"), ("w.pdparams", "out.pt", "torch")])
def test_disk_full_is_one_line_with_exit_2(tmp_path, source, target, to):
    """A real file size limit (RLIMIT_FSIZE): torch.save's own RuntimeError is reported as the disk error it is."""
    src = xfreeze.save_checkpoint({"fc.weight": np.ones((300, 300), "float32")}, tmp_path / source)
    script = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); from xfreeze.cli import main; "
        f"sys.exit(main(['convert', {str(src)!r}, {str(tmp_path / target)!r}, '--to', {to!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    last = result.stderr.splitlines()[-1]  # (importing Paddle may warn first)
    assert last.startswith("xfreeze: error: cannot write") and "EFBIG" in last
    assert result.stderr.count("xfreeze: error") == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [source]


def test_inspect_a_bf16_checkpoint(capsys, tmp_path):
    import torch

    path = xfreeze.save_checkpoint({"w": torch.ones(2, 3, dtype=torch.bfloat16)}, tmp_path / "w.safetensors")
    code, out, err = run(capsys, "inspect", str(path))
    assert code == 0, err
    assert "bfloat16" in out and "1 keys; 12 bytes" in out


# --- issue 18: output a person reads, convert that says what it refused ---------------------------------------
def test_convert_refuses_a_file_of_another_architecture(capsys, tmp_path):
    import torchvision

    src = xfreeze.save_checkpoint(torchvision.models.resnet18(), tmp_path / "r18.pt")
    out = tmp_path / "out.pdparams"
    code, _, err = run(capsys, "convert", str(src), str(out), "--to", "paddle", "--arch", "resnet50")
    assert code == 2 and "do not fit arch='resnet50'" in err and "--allow-partial" in err and err.count("\n") == 1
    assert not out.exists()
    code, printed, err = run(
        capsys, "convert", str(src), str(out), "--to", "paddle", "--arch", "resnet50", "--allow-partial"
    )
    assert code == 0 and "shape differs from --arch" in printed and out.exists()


@pytest.mark.parametrize(
    "output, message",
    [
        ("{dir}", "is a directory"),
        ("{dir}/missing/out.pdparams", "does not exist"),
        ("{dir}/out.weights", "cannot tell the format"),
        ("/sys/out.pdparams", "cannot write '/sys/out.pdparams'"),
    ],
)
def test_convert_checks_its_output_before_importing_a_framework(tmp_path, output, message):
    src = xfreeze.save_checkpoint({"fc.weight": np.ones((2, 3), "float32")}, tmp_path / "w.npz")
    script = (
        "import sys; from xfreeze.cli import main; "
        f"code = main(['convert', {str(src)!r}, {output.format(dir=tmp_path)!r}, '--to', 'paddle']); "
        "print(sorted(m for m in ('torch', 'paddle') if m in sys.modules)); sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout.strip() == "[]", result.stdout + result.stderr
    assert result.stderr.startswith("xfreeze: error: ") and message in result.stderr
    assert "unknown format" not in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "argv", [["plan", "resnet5"], ["convert", "{src}", "{dir}/o.pdparams", "--to", "paddle", "--arch", "resnet5"]]
)
def test_suggestions_name_each_model_once(capsys, tmp_path, argv):
    src = xfreeze.save_checkpoint({"conv1.weight": np.ones((2, 3, 1, 1), "float32")}, tmp_path / "w.pt")
    code, _, err = run(capsys, *(a.format(src=src, dir=tmp_path) for a in argv))
    suggested = err.partition("Did you mean ")[2].strip().rstrip("?").split(" or ")
    assert code == 2 and len(suggested) == len(set(suggested)) >= 2 and "'resnet50'" in suggested, err


@pytest.mark.parametrize("flags", [["--lr", "0.1"], ["--weight-decay", "0.05"], ["--layer-decay", "0.7", "--lr", "1"]])
def test_rates_without_params_are_refused(capsys, flags):
    code, out, err = run(capsys, "plan", "resnet18", *flags)
    assert code == 2 and out == "" and "only --params prints" in err and flags[0] in err


def test_plan_collapses_repeated_blocks(capsys):
    code, out, err = run(capsys, "plan", "resnet50", "--freeze", "*", "!layer4", "!fc")
    assert code == 0, err
    assert "layer3.1-5 (x5)" in out and "layer3.4.conv1" not in out and len(out.splitlines()) < 60
    assert "107 modules, repeated blocks collapsed" in out
    # the totals count every module, collapsed or not
    assert "17,013,736 of 25,557,032 parameters train" in out and "frozen parameters 34,173,184" in out
    code, out, _ = run(capsys, "plan", "resnet50", "--all")
    assert code == 0 and "layer3.4.conv1" in out and "collapsed" not in out


def first_column(table: str) -> list:
    """The first column's cells of a rendered table, each as its list of wrapped lines."""
    cells: list = []
    for line in table.splitlines():
        if not line.startswith("│"):
            continue
        parts = [p.strip() for p in line.strip("│").split("│")]
        if any(parts[1:]) or not cells:
            cells.append([parts[0]])
        else:
            cells[-1].append(parts[0])
    return cells


@pytest.mark.parametrize("columns", ["60", "80"])
def test_narrow_terminals_wrap_names_at_dots_and_headers_between_words(capsys, monkeypatch, columns):
    from xfreeze.core.table import render

    monkeypatch.setenv("COLUMNS", columns)
    names = ["encoder.layers.11.self_attention.query_key_value", "embeddings.word_embeddings", "head"]
    headers = ["module", "type", "parameters", "trainable parameters", "norm"]
    rows = [[n, "Linear", "1,234,567", "1,234,567", "locked"] for n in names]
    table = render("title", headers, rows)
    assert max(map(len, table.splitlines())) <= int(columns)
    for lines, name in zip(first_column(table), names):
        assert "".join(lines) == name and all(line.endswith((".", "_")) for line in lines[:-1]), lines
    head = table.split("┡")[0]
    assert all(word in head for h in headers for word in h.split()), head
    code, out, _ = run(capsys, "plan", "resnet50", "--freeze", "*", "!fc")
    shown = [cell for cell in first_column(out) if cell != ["module"]]
    assert code == 0 and all(all(line.endswith((".", " ")) for line in cell[:-1]) for cell in shown), shown
    assert all(
        f" {word} " in out or f" {word}\n" in out or f"{word} ┃" in out for word in ("params", "trainable", "norm")
    )


def test_paths_too_long_or_not_paths_are_one_line_errors(capsys, tmp_path):
    long = str(tmp_path) + ("/" + "d" * 200) * 25 + "/w.pt"
    for argv, message in (
        (["inspect", long], "path is too long"),
        (["inspect", str(tmp_path / ("n" * 300 + ".pt"))], "NAME_MAX"),
        (["convert", long, "out.pdparams", "--to", "paddle"], "path is too long"),
    ):
        code, out, err = run(capsys, *argv)
        assert code == 2 and message in err and err.count("\n") == 1 and len(err) < 600, err


# `xfreeze plan` fits the width it is given (round 3): one line per module, paths elided in their middle, columns that
# other figures give left out (and named) where the width asks for it, every total kept.
def table_rows(out: str) -> list:
    """The cells of each body row of every table in ``out`` (a row of the module table or the parameter table)."""
    return [[c.strip() for c in line.strip("│").split("│")] for line in out.splitlines() if line.startswith("│ ")]


def footer(out: str) -> str:
    """The lines under the module table, joined into one line (a folded line reads the same as a whole one)."""
    return " ".join(out.split("┘", 1)[1].split("xfreeze.param_table")[0].split())


def same_path(short: str, full: str) -> bool:
    """``short`` is ``full`` or ``full`` with middle names elided: its pieces appear in order and the end is kept."""
    pieces, at = [p for p in short.split("…") if p], 0
    for piece in pieces:
        at = full.find(piece.strip("."), at)
        if at < 0:
            return False
    return short == full or (short.startswith("…") or full.startswith(pieces[0])) and full.endswith(pieces[-1])


def in_order(some: list, cells: list) -> bool:
    """``some`` are cells of ``cells``, in the same order."""
    rest = iter(cells)
    return all(cell in rest for cell in some)


@pytest.fixture
def tiny_bert(monkeypatch, fw):
    """``plan_models:bert`` for the command line: a 2-layer BERT of ``fw``'s transformers library."""
    import types

    text = fw.zoo.text
    builder = types.SimpleNamespace(
        bert=lambda: text.BertForSequenceClassification(text.BertConfig(num_hidden_layers=2))
    )
    monkeypatch.setitem(sys.modules, "plan_models", builder)
    return ["plan_models:bert", "--freeze", "*", "!classifier", f"!bert.{fw.zoo.encoder_layers}.1", "--params"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet50", "bert"])
def test_plan_fits_the_width_it_is_given(capsys, monkeypatch, fw, tiny_bert, model):
    argv = tiny_bert if model == "bert" else ["resnet50", "--backend", fw.name, "--freeze", "*", "!layer4", "!fc"]
    monkeypatch.setenv("COLUMNS", "1000")
    code, whole, err = run(capsys, "plan", *argv, "--optimizer", "adamw")
    assert code == 0 and "not shown" not in whole, err
    for columns in (80, 100, 120, 170):
        monkeypatch.setenv("COLUMNS", str(columns))
        code, out, err = run(capsys, "plan", *argv, "--optimizer", "adamw")
        assert code == 0, err
        assert max(map(len, out.splitlines())) <= columns, out
        rows, full = table_rows(out), table_rows(whole)
        assert len(rows) == len(full), out  # one line per module and per parameter: no wrapped cell
        for row, ref in zip(rows, full):
            assert same_path(row[0], ref[0]), (row[0], ref[0])
            assert in_order([c for c in row[1:] if c[:1].isdigit()], ref[1:]), (row, ref)  # the figures, as they are
            if len(ref) == 8:  # a module row: params, trainable and trainable (= gradient) bytes always shown
                assert in_order([ref[2], ref[3], ref[5]], row[1:]), (row, ref)
        assert footer(whole) in footer(out)  # every total, word for word
        assert ("not shown at" in out) == (len(out.split("┏")[1].split("┳")) < 8)
    assert "type" in out.split("┡")[0] and "adamw state bytes" in out.split("┡")[0]  # 170 columns: every column


@pytest.mark.parametrize("width", [12, 18, 24, 30, 40])
@pytest.mark.parametrize(
    "path",
    [
        "encoder.layers.encoder_layer_10.self_attention.out_proj",
        "layer1.0.downsample.0",
        "bert.encoder.layer.0.attention.self.query",
        "model.layers.31.mlp.experts.17.down_proj",
        "encoder.layers.encoder_layer_1-10 (x10)",
    ],
)
def test_long_paths_lose_their_middle_never_their_end_or_half_a_number(path, width):
    from xfreeze.core.table import elide_path

    short = elide_path(path, width)
    assert len(short) <= width and same_path(short, path), short
    assert short.endswith(path.rsplit(".", 1)[-1][-(width - 1) :])  # the last name, or as much of it as fits
    for number in {n for n in __import__("re").findall(r"\d+", short)}:  # a number shown is a whole number of path
        assert number in __import__("re").findall(r"\d+", path), (short, number)


def test_footer_lines_fold_after_semicolons_within_the_width():
    from xfreeze.core.table import fold

    line = "bytes: frozen parameters 314,843,136 (300.3 MiB); trainable parameters 31,427,488; sgd state 31,427,488"
    assert fold(line, 200) == [line]
    lines = fold(line, 60, indent=7)
    assert len(lines) == 2 and lines[0].endswith("(300.3 MiB);") and lines[1].startswith(" " * 7 + "trainable")
    assert all(len(out) <= 60 for out in lines) and " ".join(" ".join(lines).split()) == line

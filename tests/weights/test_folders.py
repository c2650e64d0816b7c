"""Checkpoint folders (issue 19): save_pretrained folders and sharded indexes of transformers, PaddleNLP and
PaddleFormers, read by load_checkpoint / load_matched / inspect / convert; shards streamed one at a time; a bad
folder refused naming the file, the model unchanged."""

import gc
import json
import os
import weakref

import numpy as np
import pytest

import xfreeze
from xfreeze import XFreezeError
from xfreeze.cli import main
from xfreeze.core.dispatch import adapter_for
from xfreeze.weights import folders, fusedshards, shards
from harness import Spec, kit, random_state
from statehash import state_hash

CNN = Spec("cnn", (4, 3))
# (single file, index, format, framework whose model writes it: None = the fw under test)
LAYOUTS = {
    "safetensors": ("model.safetensors", "model.safetensors.index.json", "safetensors", None),
    "torch-bin": ("pytorch_model.bin", "pytorch_model.bin.index.json", "torch", "torch"),
    "paddle": ("model_state.pdparams", "model_state.pdparams.index.json", "paddle", "paddle"),
}


def model(fw, seed=0):
    m = fw.build(CNN)
    fw.load(m, random_state(CNN, "float32", seed))
    return m


def native(m) -> dict:
    """The model's own state (its framework's names and tensors)."""
    return dict(adapter_for(m).state_tensors(m))


def write_folder(path, state, layout="safetensors", shards_count=3, config=None):
    """``state`` saved as a save_pretrained folder: one file, or ``shards_count`` shards and an index."""
    single, index, fmt, _ = LAYOUTS[layout]
    path.mkdir(parents=True, exist_ok=True)
    keys = list(state)
    if shards_count == 1:
        xfreeze.save_checkpoint(dict(state), path / single, format=fmt)
    else:
        stem, suffix = single.split(".", 1)
        groups = np.array_split(np.arange(len(keys)), shards_count)
        weight_map = {}
        for i, group in enumerate(groups, 1):
            name = f"{stem}-{i:05d}-of-{shards_count:05d}.{suffix}"
            xfreeze.save_checkpoint({keys[j]: state[keys[j]] for j in group}, path / name, format=fmt)
            weight_map.update({keys[j]: name for j in group})
        (path / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    return path


def source_of(fw, layout):
    writer = LAYOUTS[layout][3]
    source_kit = kit(writer) if writer else fw
    return source_kit, model(source_kit, seed=1)


# --- reading ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("count", [1, 3])
def test_a_folder_loads_as_its_merged_file_does(fw, tmp_path, layout, count):
    source_kit, source = source_of(fw, layout)
    state = native(source)
    folder = write_folder(tmp_path / "ckpt", state, layout, count)
    merged = xfreeze.save_checkpoint(dict(state), tmp_path / f"merged.{LAYOUTS[layout][0].split('.')[1]}")
    by_folder, by_file = model(fw), model(fw)
    report = xfreeze.load_matched(by_folder, folder)
    xfreeze.load_matched(by_file, merged)
    assert state_hash(by_folder) == state_hash(by_file) != state_hash(model(fw))
    assert not report.missing and not report.unexpected and report.loaded
    read = xfreeze.load_checkpoint(folder)
    assert sorted(read) == sorted(state) and read.framework == source_kit.name


def test_shards_are_read_one_at_a_time_and_twice(fw, tmp_path, monkeypatch):
    """Streaming: when a shard is read, no earlier shard's tensors are alive; every shard is read in the checking
    pass and again in the placing pass."""
    folder = write_folder(tmp_path / "ckpt", native(model(fw, seed=1)), shards_count=4)
    alive, reads, most = [], [], []
    real = shards.read_shard

    def tracked(opened, shard):
        gc.collect()
        most.append(sum(ref() is not None for ref in alive))
        state = real(opened, shard)
        alive.extend(weakref.ref(v) for v in state.values())
        reads.append(shard.name)
        return state

    monkeypatch.setattr(shards, "read_shard", tracked)
    target = model(fw)
    xfreeze.load_matched(target, folder)
    assert max(most) == 0 and len(reads) == 8 and reads[:4] == reads[4:]
    assert state_hash(target) == state_hash(model(fw, seed=1))


def test_a_single_file_folder_is_read_once(fw, tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "ckpt", native(model(fw, seed=1)), shards_count=1)
    calls = []
    real = folders.read_file
    monkeypatch.setattr(folders, "read_file", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    xfreeze.load_matched(model(fw), folder)
    assert len(calls) == 1


def test_the_report_of_a_sharded_load_is_the_whole_sources(fw, tmp_path):
    state = native(model(fw, seed=1))
    dropped = next(k for k in state if k.endswith("weight"))
    source = {k: v for k, v in state.items() if k != dropped}
    source["extra.weight"] = next(iter(state.values()))
    whole, sharded = model(fw), model(fw)
    expected = xfreeze.load_matched(whole, dict(source), allow_partial=True)
    got = xfreeze.load_matched(sharded, write_folder(tmp_path / "ckpt", source, shards_count=3), allow_partial=True)
    assert got.missing == expected.missing == [dropped]
    assert got.unexpected == ["extra.weight"] and got.loaded == expected.loaded
    assert state_hash(whole) == state_hash(sharded)


# --- the framework a folder holds ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("metadata", "config", "expected"),
    [
        ({"format": "pt"}, {}, "torch"),
        ({"format": "np"}, {}, "paddle"),
        ({}, {"transformers_version": "5.3.0"}, "torch"),
        ({}, {"paddleformers_version": "1.2.0"}, "torch"),  # PaddleFormers' default save is transformers' layout
        ({}, {"paddleformers_version": "1.2.0", "source": "paddle"}, "paddle"),
        ({}, {"paddlenlp_version": "2.8.1"}, "paddle"),
        ({"format": "pt"}, {"paddlenlp_version": "2.8.1"}, "torch"),  # the header first
    ],
)
def test_the_files_tell_whose_layout_a_folder_holds(tmp_path, metadata, config, expected):
    from xfreeze.weights.files import _save

    state = {"model.layers.0.mlp.up_proj.weight": np.ones((4, 2), "float32")}
    (tmp_path / "ckpt").mkdir()
    _save(state, tmp_path / "ckpt" / "model.safetensors", None, {"framework": "", **metadata})
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    assert xfreeze.load_checkpoint(tmp_path / "ckpt").framework == expected


# --- bad folders: an error naming the file, nothing changed -------------------------------------------------
def refused(fw, source, match, **options):
    target = model(fw)
    before = state_hash(target)
    with pytest.raises(XFreezeError, match=match):
        xfreeze.load_matched(target, source, **options)
    assert state_hash(target) == before


def sharded(fw, tmp_path, layout="safetensors", count=3):
    return write_folder(tmp_path / "ckpt", native(model(fw, seed=1)), layout, count)


def index_of(folder, layout="safetensors"):
    path = folder / LAYOUTS[layout][1]
    return path, json.loads(path.read_text())


def test_a_folder_without_a_known_checkpoint(fw, tmp_path):
    (tmp_path / "empty").mkdir()
    refused(fw, tmp_path / "empty", r"'.*empty' is a directory with no checkpoint xfreeze knows.*it is empty")
    (tmp_path / "other").mkdir()
    xfreeze.save_checkpoint(native(model(fw)), tmp_path / "other" / "weights.pt")
    refused(fw, tmp_path / "other", r"expected one of model\.safetensors.*pass it: '.*weights\.pt'")


def test_shards_without_their_index(fw, tmp_path):
    folder = sharded(fw, tmp_path)
    (folder / "model.safetensors.index.json").unlink()
    refused(fw, folder, r"holds shards but not their index model\.safetensors\.index\.json")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (
            lambda path, index: path.write_text("{not json"),
            r"index '.*model\.safetensors\.index\.json'.*not valid JSON",
        ),
        (lambda path, index: path.write_text(json.dumps({"metadata": {}})), r"index .* has no weight_map"),
        (lambda path, index: path.write_text("[1, 2]"), r"index .* has no weight_map"),
        (
            lambda path, index: path.write_text(json.dumps({"weight_map": {"a.weight": 3}})),
            r"entry 'a\.weight' -> 3 does not name a shard file",
        ),
    ],
)
def test_a_broken_index(fw, tmp_path, damage, match):
    folder = sharded(fw, tmp_path)
    damage(*index_of(folder))
    refused(fw, folder, match)


def test_an_absent_shard(fw, tmp_path):
    folder = sharded(fw, tmp_path)
    (folder / "model-00002-of-00003.safetensors").unlink()
    refused(fw, folder, r"names shard 'model-00002-of-00003\.safetensors' \(holding \d+ tensors\), which is missing")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_truncated_last_shard_changes_nothing(fw, tmp_path, layout):
    """The last shard is cut: a load that wrote shard by shard without checking first would have changed the
    model's first tensors already."""
    source_kit, source = source_of(fw, layout)
    folder = write_folder(tmp_path / "ckpt", native(source), layout, 3)
    last = sorted(p for p in folder.iterdir() if "-00003-of-" in p.name)[0]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) * 2 // 3])
    refused(fw, folder, rf"{last.name}.*(truncated|not a valid|not a torch|forged|cut short|corrupt)")


@pytest.mark.parametrize("name", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/../../x.safetensors"])
def test_an_index_naming_a_shard_outside_the_folder(fw, tmp_path, name):
    folder = sharded(fw, tmp_path)
    xfreeze.save_checkpoint({"a": np.zeros(1, "float32")}, tmp_path / "outside.safetensors")
    path, index = index_of(folder)
    index["weight_map"][next(iter(index["weight_map"]))] = name
    path.write_text(json.dumps(index))
    refused(fw, folder, rf"names shard '{name}', a path outside the folder; refused")


def test_a_shard_symlinked_out_of_the_folder(fw, tmp_path):
    folder = sharded(fw, tmp_path)
    shard = folder / "model-00001-of-00003.safetensors"
    shard.rename(tmp_path / "moved.safetensors")
    shard.symlink_to(tmp_path / "moved.safetensors")
    refused(fw, folder, r"names shard 'model-00001-of-00003\.safetensors', which leads outside the folder")


@pytest.mark.parametrize("layout", ["safetensors", "paddle"])
def test_a_tensor_in_two_shards(fw, tmp_path, layout):
    source_kit, source = source_of(fw, layout)
    state = native(source)
    folder = write_folder(tmp_path / "ckpt", state, layout, 2)
    first = next(iter(state))
    second = sorted(p for p in folder.iterdir() if "-00002-of-" in p.name)[0]
    again = dict(xfreeze.load_checkpoint(second))
    again[first] = state[first]
    xfreeze.save_checkpoint(again, second, format=LAYOUTS[layout][2])
    refused(fw, folder, rf"{second.name}.*(holds tensor '{first}'|tensor '{first}'.*index puts it in)")


def test_an_index_that_disagrees_with_its_shards(fw, tmp_path):
    folder = sharded(fw, tmp_path)
    path, index = index_of(folder)
    index["weight_map"]["not.in.any.shard"] = "model-00001-of-00003.safetensors"
    path.write_text(json.dumps(index))
    refused(fw, folder, r"model-00001-of-00003\.safetensors.*lacks 1 tensors the index puts there")


def test_a_refused_folder_load_changes_nothing_with_strict(fw, tmp_path):
    state = native(model(fw, seed=1))
    state.pop(next(iter(state)))
    refused(fw, write_folder(tmp_path / "ckpt", state), "strict load", strict=True)


# --- inspect and convert ------------------------------------------------------------------------------------
def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_describes_a_sharded_folder_from_its_headers(capsys, tmp_path, fw, monkeypatch):
    folder = sharded(fw, tmp_path, count=3)
    monkeypatch.setattr(folders, "read_file", lambda *a, **k: pytest.fail("inspect read tensor data"))
    code, out, _ = run(capsys, "inspect", folder, "--limit", "0")
    assert code == 0 and "folder: 3 shards, read through model.safetensors.index.json" in out
    assert f"framework: {fw.name}" in out and all(k in out for k in native(model(fw)))


def test_inspect_of_a_bad_folder_is_one_line(capsys, tmp_path, fw):
    folder = sharded(fw, tmp_path)
    (folder / "model-00003-of-00003.safetensors").unlink()
    code, _, err = run(capsys, "inspect", folder)
    assert code == 2 and "model-00003-of-00003.safetensors" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("count", [1, 3])
def test_convert_a_folder_to_the_other_framework_and_back(capsys, tmp_path, count):
    torch_kit = kit("torch")
    source = model(torch_kit, seed=1)
    config = {"model_type": "cnn", "transformers_version": "5.3.0", "dtype": "float32"}
    folder = write_folder(tmp_path / "hf", native(source), "safetensors", count, config)
    (folder / "tokenizer.json").write_text("{}")
    code, out, err = run(capsys, "convert", folder, tmp_path / "pd", "--to", "paddle")
    assert code == 0, err
    single = "model_state.pdparams" if count == 1 else "model_state.pdparams.index.json"
    assert (tmp_path / "pd" / single).is_file() and (tmp_path / "pd" / "tokenizer.json").is_file()
    written = json.loads((tmp_path / "pd" / "config.json").read_text())
    assert written["source"] == "paddle" and "transformers_version" not in written
    paddle_model = model(kit("paddle"))
    xfreeze.load_matched(paddle_model, xfreeze.load_checkpoint(tmp_path / "pd"))
    assert xfreeze.load_checkpoint(tmp_path / "pd").framework == "paddle"
    code, _, err = run(capsys, "convert", tmp_path / "pd", tmp_path / "back", "--to", "torch")
    assert code == 0, err
    back = model(torch_kit)
    xfreeze.load_matched(back, tmp_path / "back")
    assert state_hash(back) == state_hash(source)
    header = folders.open_folder(tmp_path / "back").headers
    assert all(meta.get("format") == "pt" for _, meta in header.values())  # transformers requires it


def test_convert_refuses_a_non_empty_output_folder_and_leaves_nothing(capsys, tmp_path):
    folder = write_folder(tmp_path / "hf", native(model(kit("torch"))), "safetensors", 2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    code, _, err = run(capsys, "convert", folder, tmp_path / "out", "--to", "paddle")
    assert code == 2 and "not an empty directory" in err
    assert os.listdir(tmp_path / "out") == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["hf", "out"]


# --- transformers <-> PaddleFormers folders (the current stack) ---------------------------------------------
LLAMA = dict(  # the same model in both: untied head, no padding row (PaddleFormers defaults: tied, pad 0)
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=False,
    pad_token_id=None,
)
IDS = np.array([[1, 5, 7, 99, 3, 64]])


def paddleformers_llama(folder=None):
    """A PaddleFormers Llama: from ``folder`` (its native layout: load_checkpoint_format="", convert_from_hf=False)
    or built from LLAMA. CPU needs fuse_rms_norm=False."""
    pf = pytest.importorskip("paddleformers.transformers")
    if folder is None:
        return pf.LlamaForCausalLM(pf.LlamaConfig(**LLAMA, fuse_rms_norm=False)).eval()
    config = pf.LlamaConfig.from_pretrained(folder)
    config.fuse_rms_norm = False
    return pf.LlamaForCausalLM.from_pretrained(
        folder, config=config, load_checkpoint_format="", convert_from_hf=False
    ).eval()


def torch_logits(model):
    import torch

    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.numpy()


def paddle_logits(model):
    import paddle

    with paddle.no_grad():
        out = model(paddle.to_tensor(IDS))
    return (out.logits if hasattr(out, "logits") else out[0]).numpy()


@pytest.mark.current_stack
def test_a_transformers_llama_folder_becomes_one_paddleformers_loads(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = T.LlamaForCausalLM(T.LlamaConfig(**LLAMA)).eval()
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    code, _, err = run(capsys, "convert", tmp_path / "hf", tmp_path / "pd", "--to", "paddle", "--arch", "paddleformers")
    assert code == 0, err
    np.testing.assert_allclose(paddle_logits(paddleformers_llama(tmp_path / "pd")), torch_logits(hf), atol=1e-5)
    streamed = paddleformers_llama()  # and load_matched from the sharded transformers folder, converting
    report = xfreeze.load_matched(streamed, tmp_path / "hf")
    assert not report.missing and not report.mismatched
    np.testing.assert_allclose(paddle_logits(streamed), torch_logits(hf), atol=1e-5)


@pytest.mark.current_stack
def test_a_paddleformers_llama_folder_becomes_one_transformers_loads(capsys, tmp_path):
    pytest.importorskip("torch")
    T = pytest.importorskip("transformers")
    pd = paddleformers_llama()
    pd.save_pretrained(str(tmp_path / "pd"), save_to_hf=False, save_checkpoint_format="")
    assert xfreeze.load_checkpoint(tmp_path / "pd").framework == "paddle"
    code, _, err = run(capsys, "convert", tmp_path / "pd", tmp_path / "hf", "--to", "torch", "--arch", "paddleformers")
    assert code == 0, err
    hf = T.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    np.testing.assert_allclose(torch_logits(hf), paddle_logits(pd), atol=1e-5)


# --- fused layers whose parts lie in different shards (names only: both stacks) ---------------------------------
Q, K, V = (f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv")
GATE, UP = "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"


def test_fused_parts_wait_for_their_partners_one_layer_at_a_time():
    """transformers -> PaddleFormers ERNIE 4.5: q waits for k and v, gate for up; only the waiting parts are held,
    and each completed set comes with the shard that completes it, naming the shards it draws from."""
    parts = fusedshards.waiting("torch", "paddle", "ernie4_5")
    shards_keys = [[Q], [K, V, GATE], [UP, "model.norm.weight"]]
    seen = []
    for i, keys in enumerate(shards_keys):
        chunk, drawn = parts.chunk(f"s{i}", dict.fromkeys(keys, np.zeros(2)))
        seen.append((sorted(chunk), drawn, sum(map(len, parts.held.values()))))
    assert seen == [
        ([], ["s0"], 1),
        (sorted([Q, K, V]), ["s1", "s0"], 1),
        (sorted([GATE, UP, "model.norm.weight"]), ["s2", "s1"], 0),
    ]
    parts.finish(str)


def test_a_fused_part_without_its_partner_is_named_with_it():
    parts = fusedshards.waiting("torch", "paddle", "ernie4_5")
    parts.chunk("s0", {Q: np.zeros(2), V: np.zeros(2)})
    with pytest.raises(XFreezeError, match=rf"s0 holds '{Q}'.*partner '{K}'.*cannot be joined"):
        parts.finish(str)


def test_nothing_waits_when_the_target_does_not_fuse():
    for parts in (fusedshards.waiting(None, "paddle"), fusedshards.waiting("torch", "paddle", "paddleformers")):
        assert sorted(parts.chunk("s0", {Q: 1, GATE: 2})[0]) == sorted([Q, GATE]) and not parts.held

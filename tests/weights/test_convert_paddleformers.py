"""transformers <-> PaddleFormers decoder LMs, both directions (current stack): Llama and Phi3 (same names, every
Linear transposed but PaddleFormers' ``LMHead``, which keeps torch's [vocab, hidden]), ERNIE 4.5 and Gemma3
(PaddleFormers fuses ``q/k/v_proj`` into ``qkv_proj``, interleaved per key-value head, and ``gate_proj``/``up_proj``
into ``up_gate_proj``). Same logits on tiny configs (float32), bf16 carried bit for bit (a conversion is a permutation),
and the head interleaving checked against a reference written here from PaddleFormers' ``fused_qkv`` rule."""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.current_stack

import paddle  # noqa: E402
import paddleformers.transformers as P  # noqa: E402
import torch  # noqa: E402
import transformers as T  # noqa: E402

import xfreeze  # noqa: E402
from xfreeze import XFreezeError  # noqa: E402
from xfreeze.core.tensors import to_raw  # noqa: E402
from xfreeze.weights.folderconvert import convert_folder  # noqa: E402

# vocab != hidden != intermediate: a Linear transposed when it should not be (or the reverse) cannot place
BASE = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,  # the two Ernie4_5 configs default to different thetas (transformers 500000, Paddle 10000)
    pad_token_id=0,
    tie_word_embeddings=False,
)
# arch -> (transformers model, its config, PaddleFormers model, its config, the name map xfreeze picks)
ARCHS = {
    "llama": (T.LlamaForCausalLM, T.LlamaConfig, P.LlamaForCausalLM, P.LlamaConfig, "paddleformers"),
    "phi3": (T.Phi3ForCausalLM, T.Phi3Config, P.Phi3ForCausalLM, P.Phi3Config, "paddleformers"),
    "ernie4_5": (T.Ernie4_5ForCausalLM, T.Ernie4_5Config, P.Ernie4_5ForCausalLM, P.Ernie4_5Config, "ernie4_5"),
    "gemma3": (T.Gemma3ForCausalLM, T.Gemma3TextConfig, P.Gemma3ForCausalLM, P.Gemma3TextConfig, "ernie4_5"),
}
IDS = np.random.RandomState(0).randint(1, 64, (2, 10))  # no padding token: Paddle outputs zeros there, torch the row


def hf_model(arch, dtype="float32", seed=0, **over):
    torch.manual_seed(seed)
    model = ARCHS[arch][0](ARCHS[arch][1](**{**BASE, **over}, attn_implementation="eager"))
    with torch.no_grad():  # norm gains away from their init so that a misplaced one shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.to(getattr(torch, dtype)).eval()


def pf_model(arch, dtype="float32", seed=0, **over):
    paddle.seed(seed)
    paddle.set_default_dtype(dtype)
    try:
        model = ARCHS[arch][2](ARCHS[arch][3](**{**BASE, **over}, fuse_rms_norm=False, dtype=dtype))
    finally:
        paddle.set_default_dtype("float32")
    for name, p in model.named_parameters():
        if "norm" in name:
            p.set_value(paddle.uniform(p.shape, min=0.5, max=1.5).astype(p.dtype))
    model.eval()
    return model


def relative_difference(hf, pd) -> float:
    """Largest logit difference over the largest logit; bf16 models are compared in float32 (Paddle's CPU build
    has no bf16 matmul), from the same (converted) bf16 weights."""
    with torch.no_grad():
        a = hf.float()(torch.from_numpy(IDS)).logits.numpy()
    out = pd.to(dtype="float32")(paddle.to_tensor(IDS))
    b = (out.logits if hasattr(out, "logits") else out[0]).numpy()
    return float(np.abs(a - b).max() / np.abs(a).max())


@pytest.mark.parametrize("to", ["paddle", "torch"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_converts_both_ways_with_same_logits(arch, to):
    hf, pd = hf_model(arch), pf_model(arch, seed=1)
    assert relative_difference(hf, pd) > 0.1  # different weights before
    target, source = (pd, hf) if to == "paddle" else (hf, pd)
    state = source.state_dict()
    assert xfreeze.convert(state, to=to, model=target).arch == ARCHS[arch][4]
    report = xfreeze.load_matched(target, state)
    assert len(report.loaded) == len(target.state_dict()) and not report.missing and not report.unexpected
    assert relative_difference(hf, pd) <= 1e-5


def test_linears_transpose_and_the_lm_head_keeps_its_layout():
    """Llama: every Linear transposed, the embedding and PaddleFormers' LMHead ([vocab, hidden]) as they are."""
    hf, pd = hf_model("llama"), pf_model("llama", seed=1)
    xfreeze.load_matched(pd, hf.state_dict())
    source, target = hf.state_dict(), pd.state_dict()
    assert set(source) == set(target)
    for key, value in source.items():
        a, b = to_raw(value).bits, to_raw(target[key]).bits
        flat = a.ndim != 2 or "embed" in key or key == "lm_head.weight"
        assert np.array_equal(a if flat else a.T, b), key


def reference_fused(q, k, v, kv_heads):
    """PaddleFormers' ``fused_qkv`` (paddle/distributed/flex_checkpoint/aoa/macros.py) on torch-layout weights: for
    each key-value head g, the query heads of its group, key head g, value head g; returned in Paddle's [in, out]."""
    groups = [np.split(x, kv_heads, axis=0) for x in (q, k, v)]
    return np.concatenate([part for g in range(kv_heads) for part in (groups[0][g], groups[1][g], groups[2][g])]).T


@pytest.mark.parametrize("kv_heads", [1, 2, 4])  # MQA, GQA, MHA
def test_ernie45_fused_layers_split_and_join_per_key_value_head(kv_heads):
    hf, pd = hf_model("ernie4_5", num_key_value_heads=kv_heads), pf_model("ernie4_5", num_key_value_heads=kv_heads)
    source = {k: v.numpy() for k, v in hf.state_dict().items()}
    xfreeze.load_matched(pd, hf.state_dict())
    layer = "model.layers.1."
    fused = pd.state_dict()[layer + "self_attn.qkv_proj.weight"].numpy()
    q, k, v = (source[f"{layer}self_attn.{x}_proj.weight"] for x in "qkv")
    assert np.array_equal(fused, reference_fused(q, k, v, kv_heads))
    up_gate = pd.state_dict()[layer + "mlp.up_gate_proj.weight"].numpy()
    gate, up = source[layer + "mlp.gate_proj.weight"], source[layer + "mlp.up_proj.weight"]
    assert np.array_equal(up_gate, np.concatenate([gate, up]).T)  # gate first (PaddleFormers' fused_ffn)
    assert relative_difference(hf, pd) <= 1e-5
    back = hf_model("ernie4_5", seed=2, num_key_value_heads=kv_heads)
    report = xfreeze.load_matched(back, pd.state_dict())
    assert not report.missing and not report.unexpected
    assert all(np.array_equal(source[key], value.numpy()) for key, value in back.state_dict().items())


@pytest.mark.parametrize("arch", ["llama", "ernie4_5"])
def test_bf16_round_trip_is_bit_for_bit(arch):
    hf, pd = hf_model(arch, "bfloat16"), pf_model(arch, "bfloat16", seed=1)
    original = {k: to_raw(v).bits.copy() for k, v in hf.state_dict().items()}
    xfreeze.load_matched(pd, hf.state_dict())
    assert all(str(p.dtype).endswith("bfloat16") for p in pd.parameters())
    back = hf_model(arch, "bfloat16", seed=2)
    xfreeze.load_matched(back, pd.state_dict())
    for key, value in back.state_dict().items():
        bits = to_raw(value).bits
        assert bits.dtype == original[key].dtype and np.array_equal(bits, original[key]), key
    assert relative_difference(hf, pd) <= 1e-5


def test_a_paddleformers_state_without_a_model_converts_by_its_names():
    pd = pf_model("llama")
    state = pd.state_dict()
    out = xfreeze.convert(state, to="torch")
    assert out.arch == "paddleformers"
    assert np.array_equal(out["lm_head.weight"].numpy(), state["lm_head.weight"].numpy())  # [vocab, hidden] kept
    k = "model.layers.0.self_attn.k_proj.weight"
    assert tuple(out[k].shape) == (16, 32) and np.array_equal(out[k].numpy(), state[k].numpy().T)


def test_a_transformers_state_converts_to_paddleformers_by_name_map():
    """Without a model, a transformers Llama state goes to PaddleNLP's names ("llama."); arch="paddleformers" names
    PaddleFormers' (the LMHead kept [vocab, hidden])."""
    state = hf_model("llama").state_dict()
    assert xfreeze.convert(state, to="paddle").arch == "llama"
    out = xfreeze.convert(state, to="paddle", arch="paddleformers")
    assert set(out) == set(state)
    assert tuple(out["lm_head.weight"].shape) == (64, 32)
    assert tuple(out["model.layers.0.self_attn.k_proj.weight"].shape) == (32, 16)


def test_fused_query_key_value_without_the_number_of_heads_is_refused():
    with pytest.raises(XFreezeError, match=r"qkv_proj.*numbers of heads(.|\n)*Pass model="):
        xfreeze.convert(pf_model("ernie4_5").state_dict(), to="torch")
    with pytest.raises(XFreezeError, match=r"numbers of heads"):
        xfreeze.convert(hf_model("ernie4_5").state_dict(), to="paddle", arch="ernie4_5")


def test_a_config_whose_heads_do_not_fit_the_checkpoint_is_refused_and_nothing_loads():
    from statehash import state_hash

    pd = pf_model("ernie4_5")
    hf = hf_model("ernie4_5", num_attention_heads=3, num_key_value_heads=3, head_dim=16)  # q, k, v: 48 rows each
    before = state_hash(hf)
    with pytest.raises(XFreezeError, match=r"do not split into 3 query and 2 x 3 key/value heads"):
        xfreeze.load_matched(hf, pd.state_dict())
    assert state_hash(hf) == before


def test_lm_head_is_a_linear_kind_but_never_a_classification_head():
    pd = pf_model("llama")
    assert "lm_head.weight" in xfreeze.select(pd, "type:linear")
    with pytest.raises(XFreezeError, match=r"found no classification head"):
        xfreeze.replace_head(pd, 3)


def test_a_state_no_paddleformers_key_tells_keeps_the_plain_map():
    """The PaddleFormers maps are chosen only when keys tell them: a GPT-2-like state's lm_head transposes as any
    Linear does."""
    state = {"transformer.h.0.attn.c_proj.weight": torch.zeros(4, 4), "lm_head.weight": torch.zeros(10, 4)}
    out = xfreeze.convert(state, to="paddle")
    assert out.arch == "resnet" and tuple(out["lm_head.weight"].shape) == (4, 10)


# --- checkpoint folders: heads from config.json (no model=), fused layers whose parts lie in different shards ------
def save_split(hf, folder, cut_after=("q_proj.weight", "gate_proj.weight")):
    """``hf`` saved as a transformers folder whose shards end after every key ending in ``cut_after``: q_proj apart
    from k_proj / v_proj, gate_proj apart from up_proj (transformers' max_shard_size keeps them together here)."""
    import safetensors.torch

    hf.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    state, groups = hf.state_dict(), [[]]
    for key in state:
        groups[-1].append(key)
        if key.endswith(cut_after):
            groups.append([])
    weight_map = {}
    for i, keys in enumerate(groups, 1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        tensors = {k: state[k].contiguous() for k in keys}
        safetensors.torch.save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def shard_of(folder, key):
    return json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"][key]


def paddleformers_from(folder, arch):
    config = ARCHS[arch][3].from_pretrained(str(folder))
    config.fuse_rms_norm = False
    model = ARCHS[arch][2].from_pretrained(str(folder), config=config, load_checkpoint_format="", convert_from_hf=False)
    return model.eval()


@pytest.mark.parametrize("arch", ["ernie4_5", "gemma3"])
def test_a_fused_folder_converts_without_a_model_both_ways(arch, tmp_path):
    """config.json gives the heads and the name map; q and k (gate and up) in different shards are joined."""
    hf = hf_model(arch)
    source = save_split(hf, tmp_path / "hf")
    layer = "model.layers.0."
    assert shard_of(source, layer + "self_attn.q_proj.weight") != shard_of(source, layer + "self_attn.k_proj.weight")
    result = convert_folder(source, tmp_path / "pd", to="paddle")
    assert ("", f"name map 'ernie4_5': config.json says model_type {hf.config.model_type!r}") in result["notes"]
    pd = paddleformers_from(tmp_path / "pd", arch)
    assert layer + "self_attn.qkv_proj.weight" in pd.state_dict()
    assert relative_difference(hf, pd) <= 1e-5
    convert_folder(tmp_path / "pd", tmp_path / "back", to="torch")
    back = ARCHS[arch][0].from_pretrained(tmp_path / "back")
    original = hf.state_dict()
    assert all(np.array_equal(original[k].numpy(), v.numpy()) for k, v in back.state_dict().items())


def test_a_state_read_from_a_folder_converts_its_fused_layers_without_a_model(tmp_path):
    """load_checkpoint(folder) keeps the folder's config.json: convert() splits the fused layers by its heads."""
    hf = hf_model("ernie4_5", num_key_value_heads=1)  # MQA: a wrong number of heads would permute the rows
    source = save_split(hf, tmp_path / "hf")
    state = xfreeze.load_checkpoint(source)
    assert state.config["num_key_value_heads"] == 1
    pd_state = xfreeze.convert(state, to="paddle", arch="ernie4_5")
    convert_folder(source, tmp_path / "pd", to="paddle")
    by_folder = xfreeze.load_checkpoint(tmp_path / "pd")
    assert set(pd_state) == set(by_folder)
    assert all(np.array_equal(np.asarray(pd_state[k]), np.asarray(by_folder[k])) for k in by_folder)
    state.config = {}  # the same tensors without their config: refused, naming the fix
    with pytest.raises(xfreeze.XFreezeError, match="numbers of heads"):
        xfreeze.convert(state, to="paddle", arch="ernie4_5")


def test_the_command_line_converts_an_ernie45_folder_without_arch(tmp_path, capsys):
    from xfreeze.cli import main

    hf = hf_model("ernie4_5", num_key_value_heads=1)  # MQA: a wrong number of heads would permute the rows
    source = save_split(hf, tmp_path / "hf")
    assert main(["convert", str(source), str(tmp_path / "pd"), "--to", "paddle"]) == 0, capsys.readouterr().err
    assert relative_difference(hf, paddleformers_from(tmp_path / "pd", "ernie4_5")) <= 1e-5


def test_a_streamed_load_joins_parts_from_different_shards(tmp_path, monkeypatch):
    """load_matched from the sharded folder: q/k/v and gate/up joined although q and gate wait for the next shard,
    and the placing pass reads again the shard an earlier part came from."""
    from xfreeze.weights import shards

    hf = hf_model("ernie4_5")
    folder = save_split(hf, tmp_path / "hf")
    held, real = [], shards.read_shard
    monkeypatch.setattr(shards, "read_shard", lambda f, s: held.append(s.name) or real(f, s))
    pd = pf_model("ernie4_5", seed=1)
    report = xfreeze.load_matched(pd, folder)
    assert not report.missing and not report.unexpected and len(report.loaded) == len(pd.state_dict())
    assert relative_difference(hf, pd) <= 1e-5
    count = len(set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values()))
    assert len(held) == 2 * count and held[:count] == held[count:]


def drop_from_folder(folder, key):
    """``key`` removed from its shard and the index (a folder whose fused layer lacks a part)."""
    import safetensors.torch

    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = folder / index["weight_map"].pop(key)
    state = safetensors.torch.load_file(str(shard))
    del state[key]
    safetensors.torch.save_file(state, str(shard), metadata={"format": "pt"})
    index_path.write_text(json.dumps(index))


def test_a_part_whose_partner_no_shard_holds_is_refused(tmp_path):
    from statehash import state_hash

    folder = save_split(hf_model("ernie4_5"), tmp_path / "hf")
    drop_from_folder(folder, "model.layers.1.self_attn.k_proj.weight")
    pd = pf_model("ernie4_5", seed=1)
    before = state_hash(pd)
    pattern = r"'model\.layers\.1\.self_attn\.q_proj\.weight'.*partner 'model\.layers\.1\.self_attn\.k_proj\.weight'"
    with pytest.raises(XFreezeError, match=pattern):
        xfreeze.load_matched(pd, folder)
    assert state_hash(pd) == before
    with pytest.raises(XFreezeError, match=pattern):
        convert_folder(folder, tmp_path / "pd", to="paddle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


@pytest.mark.parametrize(
    "damage, match",
    [
        ("no config", r"has no config\.json \(which would give num_attention_heads and num_key_value_heads\)"),
        ("no heads", r"config\.json of .* lacks num_attention_heads and num_key_value_heads"),
    ],
)
def test_a_fused_folder_without_its_heads_is_refused_and_nothing_written(tmp_path, damage, match):
    pd = pf_model("ernie4_5")
    folder = tmp_path / "pd"
    pd.save_pretrained(str(folder), save_to_hf=False, save_checkpoint_format="")
    config = json.loads((folder / "config.json").read_text())
    if damage == "no config":
        (folder / "config.json").unlink()
    else:
        for key in ("num_attention_heads", "num_key_value_heads"):
            config.pop(key)
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(XFreezeError, match=match + r"(.|\n)*pass model="):
        convert_folder(folder, tmp_path / "hf", to="torch", arch="ernie4_5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pd"]


def test_a_model_whose_heads_differ_from_config_json_is_refused(tmp_path):
    folder = save_split(hf_model("ernie4_5"), tmp_path / "hf")
    other = pf_model("ernie4_5", num_key_value_heads=4)
    with pytest.raises(
        XFreezeError,
        match=r"model= has num_attention_heads=4, num_key_value_heads=4.*says "
        r"num_attention_heads=4, num_key_value_heads=2",
    ):
        convert_folder(folder, tmp_path / "pd", to="paddle", model=other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    convert_folder(folder, tmp_path / "pd", to="paddle", model=pf_model("ernie4_5"))  # the same heads: converts
    assert relative_difference(hf_model("ernie4_5"), paddleformers_from(tmp_path / "pd", "ernie4_5")) <= 1e-5

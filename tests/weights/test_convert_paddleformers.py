"""transformers <-> PaddleFormers decoder LMs, both directions (current stack): Llama and Phi3 (same names, every
Linear transposed but PaddleFormers' ``LMHead``, which keeps torch's [vocab, hidden]), ERNIE 4.5 and Gemma3
(PaddleFormers fuses ``q/k/v_proj`` into ``qkv_proj``, interleaved per key-value head, and ``gate_proj``/``up_proj``
into ``up_gate_proj``). Same logits on tiny configs (float32), bf16 carried bit for bit (a conversion is a permutation),
and the head interleaving checked against a reference written here from PaddleFormers' ``fused_qkv`` rule."""

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

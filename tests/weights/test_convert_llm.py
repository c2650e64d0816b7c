"""Llama weights between transformers and PaddleNLP, both directions: same logits on a small config (float32), and
bf16 weights carried bit for bit (Paddle's CPU build has no bf16 matmul, so bf16 logits are compared after both
models are cast to float32 from the converted bf16 weights)."""

import numpy as np
import pytest

import xfreeze
from xfreeze.weights.statedict import guess_framework
from xfreeze.core.tensors import to_raw

CONFIG = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
)


def _pair(dtype):
    import paddle
    import torch
    import transformers as T
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    paddle.seed(0)
    hf = T.LlamaForCausalLM(T.LlamaConfig(**CONFIG, attn_implementation="eager")).to(getattr(torch, dtype)).eval()
    paddle.set_default_dtype(dtype)
    try:
        pd = LlamaForCausalLM(LlamaConfig(**CONFIG, dtype=dtype))
    finally:
        paddle.set_default_dtype("float32")
    pd.eval()
    with torch.no_grad():  # norm gains away from 1 so a misplaced one shows
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    for name, p in pd.named_parameters():
        if "norm" in name:
            p.set_value(paddle.uniform(p.shape, min=0.5, max=1.5).astype(p.dtype))
    return hf, pd


def _logits(hf, pd):
    import paddle
    import torch

    ids = np.random.RandomState(0).randint(0, 64, (2, 10))
    with torch.no_grad():
        a = hf.float()(torch.from_numpy(ids)).logits.numpy()
    out = pd.to(dtype="float32")(paddle.to_tensor(ids))
    b = (out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out).numpy()
    return float(np.abs(a - b).max() / np.abs(a).max())


@pytest.mark.classic_stack  # PaddleNLP 2.8.1 Llama
@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=pytest.mark.slow)])
@pytest.mark.parametrize("to", ["paddle", "torch"])
def test_llama_converts_both_ways_with_same_logits(to, dtype):
    hf, pd = _pair(dtype)
    if to == "paddle":
        report = xfreeze.load_matched(pd, hf.state_dict())
        source, target = hf.state_dict(), pd.state_dict()
        name = {k: k.replace("model.", "llama.", 1) for k in source}
    else:
        report = xfreeze.load_matched(hf, pd.state_dict())
        source, target = pd.state_dict(), hf.state_dict()
        name = {k: k.replace("llama.", "model.", 1) for k in source}
    assert len(report.loaded) == len(source) == 21 and not report.missing and not report.unexpected
    for key, value in source.items():  # bit for bit, transposed where Linear (every 2-D weight but the embedding)
        a, b = to_raw(value).bits, to_raw(target[name[key]]).bits
        assert a.dtype == b.dtype and np.array_equal(a.T if a.ndim == 2 and "embed" not in key else a, b), key
    assert _logits(hf, pd) <= 1e-5


def test_llama_key_names_tell_the_framework():
    assert guess_framework(["model.layers.0.self_attn.q_proj.weight", "lm_head.weight"]) == "torch"
    assert guess_framework(["llama.layers.0.self_attn.q_proj.weight", "lm_head.weight"]) == "paddle"


def test_llama_state_without_a_model_converts_by_names():
    import torch
    import transformers as T

    hf = T.LlamaForCausalLM(T.LlamaConfig(**CONFIG))
    out = xfreeze.convert({k: v for k, v in hf.state_dict().items()}, to="paddle")
    assert out.arch == "llama" and "llama.layers.1.mlp.down_proj.weight" in out
    assert tuple(out["llama.layers.0.self_attn.k_proj.weight"].shape) == (32, 16)  # [in, out]
    assert tuple(out["llama.embed_tokens.weight"].shape) == (64, 32)  # embeddings never transposed
    assert torch.equal(torch.from_numpy(out["lm_head.weight"].numpy()).T, hf.state_dict()["lm_head.weight"])

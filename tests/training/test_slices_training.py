"""Training part of a tensor (issue 21): frozen rows stay bit for bit, trained rows train as if only they existed,
torch and Paddle agree; gradient clipping, accumulation, bf16, EMA and staged schedules that name rows.

The reference for "as if only those rows existed" is framework-neutral: the same model with two copies of each
tensor, the frozen copy and a fully trainable one, mixed by 0/1 masks (the trainable copy's other rows get exactly
zero gradient and are never read, whatever weight decay does to them).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import xfreeze
from harness import BACKENDS, TOLERANCE, kit, vocab_model
from xfreeze.core.tensors import to_raw

V, D, STEPS = 10, 4, 4


class Reference:
    """The model where only the chosen rows train: frozen and trainable copies mixed by masks."""

    def __init__(self, fw, state: dict, embed_rows, head_rows, dtype: str):
        self.fw, self.dtype = fw, dtype
        self.old, self.new = vocab_model(fw, V, D), vocab_model(fw, V, D)
        for m in (self.old, self.new):
            fw.cast(m, dtype)
            fw.load(m, state)
        xfreeze.freeze(self.old, "*")
        self.embed_rows, self.col_mask = set(embed_rows), np.isin(np.arange(V), head_rows)

    def __call__(self, x: np.ndarray):
        fw, dtype = self.fw, self.dtype
        tok = fw.tensor(np.isin(x, list(self.embed_rows)).astype(dtype)[:, None])
        col = fw.tensor(self.col_mask.astype(dtype)[None, :])
        ids = fw.tensor(x)
        e = self.old.embed(ids) * (1 - tok) + self.new.embed(ids) * tok
        return self.old.head(e) * (1 - col) + self.new.head(e) * col


def neutral(fw, model) -> dict:
    out = {k: fw.numpy(v).astype("float64") for k, v in model.state_dict().items()}
    if fw.linear_weight_axes == ("in", "out"):
        out["head.weight"] = out["head.weight"].T.copy()
    return out


def start_state(seed: int, dtype: str) -> dict:
    rng = np.random.default_rng(seed)
    shapes = {"embed.weight": (V, D), "head.weight": (V, D), "head.bias": (V,)}
    return {k: rng.normal(0, 0.5, s).astype(dtype) for k, s in shapes.items()}


def run(fw, sc, dtype="float64"):
    """Train the split model and its reference in lock-step; returns (split model, reference, start state)."""
    state = start_state(sc["seed"], dtype)
    model = vocab_model(fw, V, D)
    fw.cast(model, dtype)
    fw.load(model, state)
    embed, head = sc["embed_rows"], sc["head_rows"]
    xfreeze.freeze(model, "*", f"!embed.weight[{','.join(map(str, embed))}]", f"!head[{','.join(map(str, head))}]")
    ref = Reference(fw, state, embed, head, dtype)
    name, lr, kwargs = sc["opt"]
    opts = [xfreeze.optimizer(m, name, lr=lr, **kwargs) for m in (model, ref.new)]
    rng = np.random.default_rng(sc["seed"] + 1)
    for _ in range(STEPS):
        for _ in range(sc["accumulate"]):
            x = rng.integers(0, V, 6)
            for out in (model(fw.tensor(x)), ref(x)):
                out.square().mean().backward()
        if sc["clip"]:
            for m in (model, ref.new):
                fw.nn.utils.clip_grad_norm_([p for p in m.parameters() if fw.is_trainable(p)], sc["clip"])
        for opt in opts:
            opt.step()
            fw.clear_grad(opt)
    return model, ref, state


@st.composite
def scenarios(draw):
    name = draw(st.sampled_from(["sgd", "adam", "adamw"]))
    kwargs = {"weight_decay": draw(st.sampled_from([0.0, 2.0**-3]))}
    if name == "sgd":
        kwargs["momentum"] = draw(st.sampled_from([0.0, 0.875]))
    rows = st.lists(st.integers(0, V - 1), min_size=1, max_size=V - 1, unique=True).map(sorted)
    return dict(
        opt=(name, 2.0**-4, kwargs),
        embed_rows=draw(rows),
        head_rows=draw(rows),
        accumulate=draw(st.sampled_from([1, 2])),
        clip=draw(st.sampled_from([None, 0.25])),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=12)
@given(sc=scenarios())
def test_frozen_rows_fixed_trained_rows_as_if_alone_and_frameworks_agree(sc):
    finals = []
    for name in BACKENDS:
        fw = kit(name)
        model, ref, state = run(fw, sc)
        got, want = neutral(fw, model), neutral(fw, ref.new)
        frozen_embed = [r for r in range(V) if r not in sc["embed_rows"]]
        frozen_head = [r for r in range(V) if r not in sc["head_rows"]]
        assert np.array_equal(got["embed.weight"][frozen_embed], state["embed.weight"][frozen_embed])
        assert np.array_equal(got["head.weight"][frozen_head], state["head.weight"][frozen_head])
        assert np.array_equal(got["head.bias"][frozen_head], state["head.bias"][frozen_head])
        for key, rows in (("embed.weight", sc["embed_rows"]), ("head.weight", sc["head_rows"])):
            np.testing.assert_allclose(got[key][rows], want[key][rows], rtol=0, atol=1e-12)
        finals.append(got)
    for other in finals[1:]:
        for key in finals[0]:
            np.testing.assert_allclose(other[key], finals[0][key], rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_low_precision_keeps_frozen_rows_bitwise(fw, dtype):
    if dtype not in fw.cpu_train_dtypes:
        pytest.skip(f"{fw.name}'s CPU optimizers do not step {dtype} parameters")
    model = vocab_model(fw, V, D)
    fw.cast(model, dtype)
    before = bits(model)
    xfreeze.freeze(model, "*", "!embed.weight[7:]")
    opt = xfreeze.optimizer(model, "adamw", lr=0.1, weight_decay=0.5)
    for _ in range(2):
        # the embedding, and a product and a sum: Paddle 3.3's CPU has no bfloat16 matmul, square or mean
        out = model.embed(fw.tensor(np.array([1, 7, 8, 9], dtype=np.int64)))
        (out * out).sum().backward()
        opt.step()
        fw.clear_grad(opt)
    after = bits(model)
    assert np.array_equal(after["embed.weight"][:7], before["embed.weight"][:7])
    assert not np.array_equal(after["embed.weight"][7:], before["embed.weight"][7:])


def bits(model) -> dict:
    """The exact bits of the state dict (bf16 as its uint16 carrier)."""
    return {k: to_raw(v, k).bits.copy() for k, v in model.state_dict().items()}


def test_ema_averages_the_rows_and_never_the_frozen_rows(fw):
    model = vocab_model(fw, V, D)
    start = neutral(fw, model)
    xfreeze.freeze(model, "*", "!embed.weight[8:]")
    ema = xfreeze.EMA(model, decay=0.5)
    opt = xfreeze.optimizer(model, "sgd", lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        model(fw.tensor(np.array([8, 9, 1], dtype=np.int64))).square().mean().backward()
        opt.step()
        fw.clear_grad(opt)
        ema.update()
    trained = neutral(fw, model)
    ema.copy_to(model)
    averaged = neutral(fw, model)
    assert np.array_equal(averaged["embed.weight"][:8], start["embed.weight"][:8])
    assert not np.array_equal(averaged["embed.weight"][8:], trained["embed.weight"][8:])
    assert ema.held_bytes == 2 * D * 4  # the rows only: the whole tensor is the model's own


def test_staged_unfreeze_stages_may_name_rows(fw):
    model = vocab_model(fw, V, D)
    start = neutral(fw, model)
    stages = [xfreeze.Stage(0, freeze=["*", "!head"]), xfreeze.Stage(2, unfreeze=["embed.weight[8:]"], lr=0.25)]
    xfreeze.freeze(model, *stages[0].freeze)
    opt = xfreeze.optimizer(model, "adamw", lr=0.1, weight_decay=0.5)
    staged = xfreeze.StagedUnfreeze(model, opt, stages, unit="step")
    for step in range(4):
        staged.step(step)
        model(fw.tensor(np.array([8, 9, 1], dtype=np.int64))).square().mean().backward()
        opt.step()
        fw.clear_grad(opt)
    end = neutral(fw, model)
    assert np.array_equal(end["embed.weight"][:8], start["embed.weight"][:8])
    assert not np.array_equal(end["embed.weight"][8:], start["embed.weight"][8:])
    assert xfreeze.check(model, opt).ok
    table = xfreeze.param_table(model, opt)
    assert [(r.name, r.lr) for r in table.rows if r.name.startswith("embed")] == [
        ("embed.weight", None),
        ("embed.weight[8:10]", 0.25),
    ]


@pytest.mark.current_stack
def test_experts_6_and_7_of_a_fused_moe_train_and_the_rest_stay_bitwise():
    """transformers 5 fuses an MoE layer's experts into 3-D tensors: train experts 6-7 (LlamaFactory #3049)."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=8,
        num_experts_per_tok=4,
        max_position_embeddings=32,
    )
    model = MixtralForCausalLM(config)
    xfreeze.freeze(model, "*")
    report = xfreeze.unfreeze(model, "model.layers.*.mlp.experts.*_proj[6:8]")
    assert len(report.changed) == 4 and report.counts.trainable == 2 * 2 * (16 * 16 + 16 * 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = xfreeze.optimizer(model, "adamw", lr=0.05, weight_decay=0.1)
    ids = torch.randint(0, 32, (4, 12))
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved == {f"model.layers.{i}.mlp.experts.{p}_proj" for i in (0, 1) for p in ("gate_up", "down")}
    for key in moved:
        assert torch.equal(after[key][:6], before[key][:6]) and not torch.equal(after[key][6:], before[key][6:])


def test_mixed_precision_keeps_frozen_rows_bitwise(fw):
    """Autocast (torch: bfloat16 matmuls on the CPU; Paddle's O1 keeps float32 there) over float32 parameters: the
    joined weight is cast inside the autocast region, the frozen rows of the parameter never move."""
    model = vocab_model(fw, V, D)
    before = neutral(fw, model)
    xfreeze.freeze(model, "*", "!embed.weight[8:]", "!head.weight[1,5]")
    opt = xfreeze.optimizer(model, "adamw", lr=0.1, weight_decay=0.5)
    for _ in range(2):
        with fw.autocast():
            out = model(fw.tensor(np.array([1, 8, 9], dtype=np.int64)))
        (out * out).sum().backward()
        opt.step()
        fw.clear_grad(opt)
    after = neutral(fw, model)
    keep = [i for i in range(V) if i not in (1, 5)]
    assert np.array_equal(after["embed.weight"][:8], before["embed.weight"][:8])
    assert np.array_equal(after["head.weight"][keep], before["head.weight"][keep])
    assert not np.array_equal(after["embed.weight"][8:], before["embed.weight"][8:])
    assert not np.array_equal(after["head.weight"][[1, 5]], before["head.weight"][[1, 5]])

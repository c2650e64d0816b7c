"""bf16 and fp16 models in both frameworks: freeze, summary, load_matched both ways, conversion and EMA keep the
dtype bit for bit (numpy is never the go-between)."""

import itertools

import numpy as np
import pytest

import xfreeze
from xfreeze.core import tensors as _tensors
from xfreeze.model.view import view_of
from harness import BACKENDS, Spec, kit

CNN = Spec("cnn", (4, 3))
HALF = ["bfloat16", "float16"]


def build(name, dtype, seed=0):
    fw = kit(name)
    model = fw.build(CNN, "float32")
    rng = np.random.default_rng(seed)
    view = view_of(model)
    adapter = view.adapter
    values = [
        adapter.from_raw(_tensors.Raw(rng.normal(0, 1, adapter.full_shape(p)).astype("float32"), "float32"))
        for p in view.params + view.stat_tensors
    ]
    adapter.load_tensors(view.params + view.stat_tensors, values)
    return fw.cast(model, dtype)


def raw_state(model) -> dict:
    view = view_of(model)
    return {n: _tensors.to_raw(t) for n, t in zip(view.names + view.stat_names, view.params + view.stat_tensors)}


@pytest.mark.parametrize("dtype", HALF)
def test_freeze_and_summary_on_half_models(fw, dtype):
    model = build(fw.name, dtype)
    report = xfreeze.freeze(model, "*", "!8")
    assert report.counts.trainable == 12 and report.counts.trainable_bytes == 24
    s = xfreeze.summary(model, print_table=False)
    assert s.counts.frozen_bytes == 2 * s.counts.frozen
    assert {_tensors.dtype_name(p) for p in view_of(model).params} == {dtype}


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("source, target", list(itertools.permutations(BACKENDS, 2)))
def test_load_matched_across_frameworks_keeps_the_bits(source, target, dtype):
    src, dst = build(source, dtype, seed=1), build(target, dtype, seed=2)
    report = xfreeze.load_matched(dst, src)
    # Paddle keeps BatchNorm statistics in float32 in a half model (torch casts them): those are cast, and reported
    assert len(report.loaded) == 14 and all(".running_" in k or "._" in k for k in report.cast)
    a, b = raw_state(src), raw_state(dst)
    transposed = kit(source).linear_weight_axes != kit(target).linear_weight_axes  # Linear layouts differ
    for key in [n for n in a if "running" not in n]:
        expected = a[key].bits.T if key == "8.weight" and transposed else a[key].bits
        assert b[key].dtype == dtype and np.array_equal(np.ascontiguousarray(expected), b[key].bits), key


@pytest.mark.parametrize("dtype", HALF)
def test_convert_round_trip_is_bitwise(dtype):
    model = build("torch", dtype)
    state = {k: v for k, v in model.state_dict().items()}
    back = xfreeze.convert(xfreeze.convert(state, to="paddle"), to="torch")
    import torch

    for key, value in back.items():
        assert value.dtype == getattr(torch, dtype) and torch.equal(
            value.view(torch.int16), state[key].view(torch.int16)
        )


@pytest.mark.parametrize("dtype", HALF)
def test_ema_on_half_models_never_moves_frozen_weights(fw, dtype):
    model = build(fw.name, dtype)
    xfreeze.freeze(model, "*", "!8")
    ema = xfreeze.EMA(model, decay=0.999)
    view = view_of(model)
    head = view.params[view.index["8.weight"]]
    adapter = view.adapter
    for step in range(5):
        adapter.load_tensors(
            [head],
            [
                adapter.cast(
                    adapter.from_raw(_tensors.Raw(np.full(adapter.full_shape(head), step + 1.0, "float32"), "float32")),
                    dtype,
                )
            ],
        )
        ema.update()
    shadow = {k: _tensors.to_raw(v) for k, v in ema.shadow.items()}
    live = raw_state(model)
    for key in live:
        if key.startswith("8."):
            continue
        assert shadow[key].dtype == live[key].dtype and np.array_equal(shadow[key].bits, live[key].bits), key
        assert live[key].dtype == dtype or "running" in key  # Paddle keeps half models' BN statistics in float32
    assert not np.array_equal(shadow["8.weight"].bits, live["8.weight"].bits)


def test_bf16_torch_training_keeps_frozen_tensors_bitwise():
    import torch

    model = build("torch", "bfloat16")
    xfreeze.freeze(model, "*", "!8")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = xfreeze.optimizer(model, "adamw", lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(3):
        loss = model(torch.randn(4, 3, 5, 5, dtype=torch.bfloat16)).float().square().mean()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("8."))
    assert not torch.equal(before["8.weight"], after["8.weight"])

"""Deltas of split tensors (issue 21): only the trainable rows are saved, the frozen rows fingerprinted and checked,
across frameworks (a Paddle Linear's rows are columns)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open

import xfreeze
from harness import kit, vocab_model
from statehash import state_hash

V, D = 12, 4
TOKENS = np.array([1, 3, 9, 10, 11], dtype=np.int64)


def neutral(fw, model) -> dict:
    """The state dict in the neutral layout (Linear weights [out, in])."""
    out = {k: fw.numpy(v).copy() for k, v in model.state_dict().items()}
    if fw.linear_weight_axes == ("in", "out"):
        out["head.weight"] = out["head.weight"].T.copy()
    return out


def build(fw, state: dict):
    model = vocab_model(fw, V, D)
    fw.load(model, {k: v.astype("float32") for k, v in state.items()})
    return model


def base_state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    shapes = {"embed.weight": (V, D), "head.weight": (V, D), "head.bias": (V,)}
    return {k: rng.normal(size=shape) for k, shape in shapes.items()}


def trained(fw, state: dict):
    model = build(fw, state)
    xfreeze.freeze(model, "*", "!embed.weight[9:]", "!head[1,5]")
    opt = xfreeze.optimizer(model, "adamw", lr=0.1, weight_decay=0.25)
    for _ in range(2):
        model(fw.tensor(TOKENS)).square().mean().backward()
        opt.step()
        fw.clear_grad(opt)
    return model


def test_a_delta_holds_only_the_trainable_rows(fw, tmp_path):
    model = trained(fw, base_state())
    path = xfreeze.save_delta(model, tmp_path / "d.safetensors")
    with safe_open(str(path), "np") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        meta = f.metadata()
    assert shapes == {"embed.weight": (3, D), "head.weight": fw.linear_weight_shape(D, 2), "head.bias": (2,)}
    assert meta["xfreeze_delta"] == "2" and "embed.weight" in meta["slices"]


def test_load_delta_splits_the_base_the_same_way(fw, tmp_path):
    model = trained(fw, base_state())
    path = xfreeze.save_delta(model, tmp_path / "d.safetensors")
    base = build(fw, base_state())
    assert xfreeze.verify_frozen(base, path).ok
    report = xfreeze.load_delta(base, path)
    assert report.verified == 3
    want, got = neutral(fw, model), neutral(fw, base)
    assert all(np.array_equal(want[k], got[k]) for k in want)
    assert fw.trainable_names(base) == fw.trainable_names(model)


def test_a_moved_frozen_row_is_caught(fw, tmp_path):
    model = trained(fw, base_state())
    path = xfreeze.save_delta(model, tmp_path / "d.safetensors")
    state = base_state()
    state["embed.weight"][2, 0] += 1.0  # a frozen row of a split tensor
    base = build(fw, state)
    assert xfreeze.verify_frozen(base, path).drifted == ["embed.weight"]
    before = state_hash(base)
    with pytest.raises(xfreeze.XFreezeError, match="does not fit this base"):
        xfreeze.load_delta(base, path)
    assert state_hash(base) == before


def test_frozen_fingerprint_of_a_split_model_survives_training_of_its_rows(fw):
    model = trained(fw, base_state())
    fingerprint = xfreeze.frozen_fingerprint(model)
    opt = xfreeze.optimizer(model, "sgd", lr=1.0)
    model(fw.tensor(TOKENS)).square().mean().backward()
    opt.step()
    assert xfreeze.verify_frozen(model, fingerprint).ok


@pytest.mark.parametrize("source, target", [("torch", "paddle"), ("paddle", "torch")])
def test_a_split_delta_converts_between_frameworks(source, target, tmp_path):
    src, dst = kit(source), kit(target)
    model = trained(src, base_state())
    path = xfreeze.save_delta(model, tmp_path / "d.safetensors")
    base = build(dst, base_state())
    assert xfreeze.verify_frozen(base, path).ok
    xfreeze.load_delta(base, path)
    want, got = neutral(src, model), neutral(dst, base)
    assert all(np.array_equal(want[k], got[k]) for k in want)
    assert dst.trainable_names(base) == ["embed.weight[9:12]", "head.weight[1,5]", "head.bias[1,5]"]

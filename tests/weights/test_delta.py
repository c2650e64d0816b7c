"""Delta checkpoints: only what trains is saved, with a fingerprint of the frozen base; loading checks the base
first, applies the freeze plan, and works across frameworks."""

import numpy as np
import pytest

import xfreeze
from xfreeze import XFreezeError
from xfreeze.core.tensors import same_bits
from harness import Spec, kit, random_state
from statehash import state_hash

CNN = Spec("cnn", (4, 3))


def head_name(fw):
    return CNN.module_names()[-1]


def test_delta_holds_only_trainable_and_live_tensors(fw, tmp_path):
    m = fw.build(CNN)
    fw.load(m, random_state(CNN, "float32", 0))
    head = head_name(fw)
    xfreeze.freeze(m, "*", f"!{head}")
    path = xfreeze.save_delta(m, tmp_path / "d.safetensors")
    delta = xfreeze.load_checkpoint(path)
    assert {k for k in delta if not k.endswith("num_batches_tracked")} == {f"{head}.weight", f"{head}.bias"}
    assert delta.metadata["xfreeze_delta"] == "1"
    assert xfreeze.verify_frozen(m, path).ok


def test_load_delta_restores_weights_and_freeze_plan(fw, tmp_path):
    head = head_name(fw)
    m = fw.build(CNN)
    fw.load(m, random_state(CNN, "float32", 0))
    xfreeze.freeze(m, "*", f"!{head}")
    fresh = fw.build(CNN)
    fw.load(fresh, random_state(CNN, "float32", 0))  # same base, nothing frozen
    path = xfreeze.save_delta(m, tmp_path / "d.safetensors")
    report = xfreeze.load_delta(fresh, path)
    assert f"{head}.weight" in report.loaded and report.trainable == [f"{head}.weight", f"{head}.bias"]
    assert sorted(xfreeze.select(fresh, "*")) == sorted(xfreeze.select(m, "*"))
    trainable = {n for n in xfreeze.select(fresh, "*") if _trainable(fresh, n)}
    assert trainable == {f"{head}.weight", f"{head}.bias"}
    for (k, a), (_, b) in zip(sorted(m.state_dict().items()), sorted(fresh.state_dict().items())):
        assert same_bits(a, b), k


def _trainable(m, name):
    p = dict(m.named_parameters())[name]
    return p.requires_grad if hasattr(p, "requires_grad") else not p.stop_gradient


def test_a_different_base_is_refused_before_anything_changes(fw, tmp_path):
    head = head_name(fw)
    m = fw.build(CNN)
    fw.load(m, random_state(CNN, "float32", 0))
    xfreeze.freeze(m, "*", f"!{head}")
    path = xfreeze.save_delta(m, tmp_path / "d.safetensors")
    other = fw.build(CNN)
    fw.load(other, random_state(CNN, "float32", 1))
    before = state_hash(other)
    with pytest.raises(XFreezeError, match=r"does not fit this base: .*drifted \d+: \['0.weight'"):
        xfreeze.load_delta(other, path)
    assert state_hash(other) == before
    check = xfreeze.verify_frozen(other, path)
    assert not check.ok and check.drifted[0] == "0.weight"


def test_verify_frozen_finds_drift_after_training(fw, tmp_path):
    head = head_name(fw)
    m = fw.build(CNN)
    fw.load(m, random_state(CNN, "float32", 0))
    xfreeze.freeze(m, "*", f"!{head}")
    fp = xfreeze.frozen_fingerprint(m)
    assert xfreeze.verify_frozen(m, fp).ok
    state = random_state(CNN, "float32", 0)
    state["0.weight"] = state["0.weight"] + 1e-3  # a frozen tensor moved
    fw.load(m, state)
    check = xfreeze.verify_frozen(m, fp)
    assert check.drifted == ["0.weight"] and not check.missing


def test_a_torch_delta_loads_onto_a_paddle_base_and_back(tmp_path):
    t, p = kit("torch"), kit("paddle")
    head = CNN.module_names()[-1]
    tm, pm = t.build(CNN), p.build(CNN)
    t.load(tm, random_state(CNN, "float32", 0))
    p.load(pm, random_state(CNN, "float32", 0))
    xfreeze.freeze(tm, "*", f"!{head}")
    t.load(tm, {**random_state(CNN, "float32", 0), f"{head}.weight": random_state(CNN, "float32", 5)[f"{head}.weight"]})
    path = xfreeze.save_delta(tm, tmp_path / "torch.safetensors")
    assert xfreeze.verify_frozen(pm, path).ok
    report = xfreeze.load_delta(pm, path)
    assert report.framework == "torch" and set(report.trainable) == {f"{head}.weight", f"{head}.bias"}
    assert np.array_equal(pm.state_dict()[f"{head}.weight"].numpy().T, tm.state_dict()[f"{head}.weight"].numpy())
    back = xfreeze.save_delta(pm, tmp_path / "paddle.safetensors")
    tm2 = t.build(CNN)
    t.load(tm2, random_state(CNN, "float32", 0))
    xfreeze.load_delta(tm2, back)
    assert all(same_bits(a, b) for a, b in zip(tm.state_dict().values(), tm2.state_dict().values()))


def test_bf16_delta_bit_for_bit(tmp_path):
    t = kit("torch")
    m = t.build(CNN).to(t.t.bfloat16)
    xfreeze.freeze(m, "*", f"!{CNN.module_names()[-1]}")
    path = xfreeze.save_delta(m, tmp_path / "d.safetensors")
    other = t.build(CNN).to(t.t.bfloat16)
    other.load_state_dict(m.state_dict())
    xfreeze.load_delta(other, path)
    assert all(same_bits(a, b) for a, b in zip(m.state_dict().values(), other.state_dict().values()))


def test_not_a_delta(fw, tmp_path):
    path = xfreeze.save_checkpoint({"w": np.ones(2)}, tmp_path / "plain.safetensors")
    m = fw.build(CNN)
    before = state_hash(m)
    with pytest.raises(XFreezeError, match="is not an xfreeze delta"):
        xfreeze.load_delta(m, path)
    with pytest.raises(XFreezeError, match="a fingerprint is the dict"):
        xfreeze.verify_frozen(m, {"x": 1})
    assert state_hash(m) == before


def test_live_norm_statistics_travel_and_the_norm_plan_is_applied(fw, tmp_path):
    from xfreeze.core.dispatch import adapter_for

    head = head_name(fw)
    m = fw.build(CNN)
    fw.load(m, random_state(CNN, "float32", 0))
    xfreeze.freeze(m, "*", f"!{head}", norm="train")  # norm layers stay trainable: their statistics are live
    path = xfreeze.save_delta(m, tmp_path / "d.safetensors")
    delta = xfreeze.load_checkpoint(path)
    stats = [k for k in delta if k.startswith("1.") and not k.endswith(("weight", "bias", "num_batches_tracked"))]
    assert len(stats) == 2  # running mean and variance of the first norm layer, in the framework's own names
    fresh = fw.build(CNN)
    fw.load(fresh, random_state(CNN, "float32", 0))
    xfreeze.freeze(fresh, "*")  # every norm locked: the plan must release them
    adapter = adapter_for(fresh)
    modules = dict(fw.named_modules(fresh))
    assert adapter.is_norm_locked(modules["1"])
    report = xfreeze.load_delta(fresh, path)
    assert not adapter.is_norm_locked(modules["1"]) and not report.locked_norms
    assert "1.weight" in report.trainable
    assert all(same_bits(a, b) for a, b in zip(m.state_dict().values(), fresh.state_dict().values()))


def test_fingerprint_hashed_on_threads_is_the_same_in_the_same_order(fw, monkeypatch):
    from xfreeze.weights import delta as _delta

    m = fw.build(CNN)
    fw.load(m, random_state(CNN, "float32", 1))
    xfreeze.freeze(m, "*", f"!{head_name(fw)}")
    one = xfreeze.frozen_fingerprint(m)
    monkeypatch.setattr(_delta, "_PER_THREAD", 1)  # every tensor counts as large: the thread pool runs
    many = xfreeze.frozen_fingerprint(m)
    assert list(many["tensors"].items()) == list(one["tensors"].items()) and len(one["tensors"]) > 2
    fw.load(m, random_state(CNN, "float32", 2))  # every frozen tensor drifts: all are named, in model order
    check = xfreeze.verify_frozen(m, one)
    assert check.drifted == list(one["tensors"])

"""Validate, then write: bad options and bad states are clear errors at the call, and change nothing."""

import copy

import numpy as np
import pytest

import xfreeze
from xfreeze import EMA, XFreezeError
from xfreeze.model.view import view_of
from harness import Spec, random_state

CNN = Spec("cnn", (4, 3))


def snapshot(model):
    view = view_of(model)
    tensors = {
        n: np.array(view.adapter.to_raw(t).bits, copy=True)
        for n, t in zip(view.names + view.stat_names, view.params + view.stat_tensors)
    }
    return tensors, view.trainable().tolist(), [view.adapter.is_norm_locked(m) for m in view.modules]


def assert_unchanged(model, before):
    after = snapshot(model)
    assert after[1:] == before[1:]
    assert all(np.array_equal(before[0][k], after[0][k]) for k in before[0])


def model_of(fw, seed=0):
    model = fw.build(CNN)
    fw.load(model, random_state(CNN, "float32", seed))
    return model


def test_an_integer_parameter_is_never_made_trainable():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model[0].register_parameter("codes", torch.nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False))
    xfreeze.freeze(model, "*")
    report = xfreeze.unfreeze(model, "*")
    assert report.changed == ["0.weight", "0.bias"] and report.not_trainable == ["0.codes (int64)"]
    assert "not floating point" in str(report)
    xfreeze.freeze(model, "*")
    before = snapshot(model)
    with pytest.raises(XFreezeError, match=r"cannot train .*0\.codes \(int64\).*nothing was changed"):
        xfreeze.unfreeze(model, "0.codes")
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(skip=5), r"skip must be a pattern string or a list of them. Received: skip=5"),
        (dict(rename={1: "x"}), r"rename must be a \{str prefix: str prefix\} dict"),
        (dict(strict="yes"), r"strict must be True or False. Received: strict='yes'"),
        (dict(allow_empty=1), r"allow_empty must be True or False"),
        (dict(framework="jax"), r"Expected one of \('torch', 'paddle'\). Received: framework='jax'"),
    ],
)
def test_load_matched_options_are_checked_first(fw, kwargs, message):
    model = model_of(fw)
    before = snapshot(model)
    with pytest.raises(XFreezeError, match=message):
        xfreeze.load_matched(model, model_of(fw, seed=1), **kwargs)
    assert_unchanged(model, before)


@pytest.mark.parametrize("decay", [7.0, -0.5, 0.0, 1.0, float("nan"), "0.9", True])
def test_ema_decay_is_checked(fw, decay):
    with pytest.raises(XFreezeError, match="decay must be a number in"):
        EMA(model_of(fw), decay=decay)


def test_ema_load_state_dict_validates_everything_before_writing(fw):
    model = model_of(fw)
    ema = EMA(model, decay=0.9)
    good = ema.state_dict()
    before = {k: np.array(view_of(model).adapter.to_raw(v).bits, copy=True) for k, v in ema.shadow.items()}
    wrong_last = copy.copy(good)
    wrong_last["shadow"] = dict(good["shadow"])
    last = list(wrong_last["shadow"])[-1]
    wrong_last["shadow"][last] = view_of(model).adapter.clone(wrong_last["shadow"]["0.weight"])
    missing = dict(good, shadow={k: v for k, v in good["shadow"].items() if k != "8.bias"})
    cases = [
        (wrong_last, "has shape"),
        (missing, r"keys differ.*8\.bias"),
        (dict(good, decay=7.0), "decay"),
        (dict(good, num_updates=-1), "num_updates must be an integer >= 0"),
        (dict(good, warmup="yes"), "warmup must be a bool"),
        (dict(good, version=99), "version 99"),
        ({"decay": 0.9}, "expects the dict"),
    ]
    for state, message in cases:
        with pytest.raises(XFreezeError, match=message):
            ema.load_state_dict(state)
        after = {k: view_of(model).adapter.to_raw(v).bits for k, v in ema.shadow.items()}
        assert all(np.array_equal(before[k], after[k]) for k in before) and ema.num_updates == 0
    ema.load_state_dict(good)


def test_ema_copy_to_refuses_other_objects_and_wider_heads(fw):
    model = model_of(fw)
    ema = EMA(model, decay=0.9)
    with pytest.raises(XFreezeError, match=r"EMA.copy_to\(model\): str is not a supported model type"):
        ema.copy_to("x")
    other = model_of(fw, seed=3)
    xfreeze.replace_head(other, 7, head="8")
    before = snapshot(other)
    with pytest.raises(XFreezeError, match=r"'8.weight' has shape .* nothing was written"):
        ema.copy_to(other)
    assert_unchanged(other, before)


def test_ema_follows_tensors_swapped_after_it_was_built(fw):
    """What FSDP2's fully_shard does to every parameter, a user does here to one layer: the EMA follows the new
    tensors (same names and shapes) instead of averaging a tensor that no longer trains."""
    model = model_of(fw)
    ema = EMA(model, decay=0.5)
    model[8] = model_of(fw, seed=5)[8]  # a new head of the same shape
    ema.update()
    new = view_of(model)
    adapter = new.adapter
    expected = adapter.to_raw(new.params[new.index["8.weight"]]).bits
    before = adapter.to_raw(ema.shadow["8.weight"]).bits
    assert not np.array_equal(before, expected)
    for _ in range(30):
        ema.update()
    assert np.allclose(adapter.to_raw(ema.shadow["8.weight"]).bits, expected, atol=1e-6)


def test_ema_refuses_a_model_whose_structure_changed(fw):
    model = model_of(fw)
    ema = EMA(model, decay=0.5)
    model.extra = fw.build(Spec("mlp", (3,), classes=7))[0]  # a new layer with parameters
    with pytest.raises(XFreezeError, match="changed since the EMA was built"):
        ema.update()

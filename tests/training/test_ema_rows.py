"""An EMA follows row splits (issue 21 with issue 20): built before ``unfreeze(model, "embed.weight[8:]")`` it gives the
rows parameter a shadow at the boundary, keeps the frozen rest the model's own tensor, and joins back.

The references are other EMAs: one built after the split (the rows a parameter of their own from the start), and one
of a model whose whole tensor trains on inputs that only reach the chosen rows under plain SGD (so exactly those rows
move, as in the split model, with an average for the whole tensor all along).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import xfreeze
from harness import vocab_model
from statehash import state_hash
from xfreeze.core.errors import XFreezeError
from xfreeze.core.tensors import to_raw

V, D = 10, 4
TOKENS = np.array([8, 9, 8, 9, 9], dtype=np.int64)  # only rows 8 and 9 of the embedding are read


def pair(fw, n: int = 2) -> list:
    """``n`` vocabulary models with the same weights."""
    models = [vocab_model(fw, V, D) for _ in range(n)]
    state = fw.state(models[0])
    for m in models[1:]:
        fw.load(m, state)
    return models


def train(fw, model, ema, steps: int) -> None:
    """Plain SGD (no momentum, no decay: untouched rows stay bit for bit), the EMA updated after each step."""
    opt = xfreeze.optimizer(model, "sgd", lr=0.5)
    for _ in range(steps):
        model(fw.tensor(TOKENS)).square().mean().backward()
        opt.step()
        fw.clear_grad(opt)
        ema.update()


def bits(state: dict) -> dict:
    return {k: to_raw(v, k).bits.copy() for k, v in state.items()}


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def shadow_bits(ema) -> dict:
    return bits(ema.state_dict()["shadow"])


def model_bits(model) -> dict:
    """The model's state dict (a split tensor's trained rows written into it; the rows' key left out)."""
    return bits(model.state_dict())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_ema_built_before_a_split_follows_it_like_one_built_after(fw):
    before, after = pair(fw)
    for m in (before, after):
        xfreeze.freeze(m, "*")
    ema_before = xfreeze.EMA(before, decay=0.5)
    xfreeze.unfreeze(before, "embed.weight[8:]")
    ema_before.refresh()  # the boundary: the rows' shadow starts from their value now
    xfreeze.unfreeze(after, "embed.weight[8:]")
    ema_after = xfreeze.EMA(after, decay=0.5)
    for m, e in ((before, ema_before), (after, ema_after)):
        train(fw, m, e, 3)
    assert ema_before.shadow["embed.weight"] is before.embed.weight  # the frozen rest: the model's own tensor
    assert ema_before.held_bytes == ema_after.held_bytes == 2 * D * 4  # the two rows only
    assert_same(shadow_bits(ema_before), shadow_bits(ema_after))
    for m, e in ((before, ema_before), (after, ema_after)):
        e.copy_to(m)
    assert_same(model_bits(before), model_bits(after))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_trainable_tensor_split_keeps_the_average_of_its_rows(fw):
    """All of ``embed`` trains, then ``freeze(embed.weight[:8])`` splits it: rows 8 and 9 keep their average; the
    reference's whole tensor trains all along, but only rows 8 and 9 move, so its average is the same."""
    split, whole = pair(fw)
    emas = [xfreeze.EMA(m, decay=0.5) for m in (split, whole)]
    for m, e in zip((split, whole), emas):
        train(fw, m, e, 2)
    xfreeze.freeze(split, "embed.weight[:8]")
    emas[0].refresh()
    for m, e in zip((split, whole), emas):
        train(fw, m, e, 2)
    assert emas[0].held_bytes == emas[1].held_bytes - 8 * D * 4  # the frozen rows hold no copy any more
    got, want = shadow_bits(emas[0]), shadow_bits(emas[1])
    assert np.array_equal(got.pop("embed.weight[8:10]"), want["embed.weight"][8:])
    assert_same(got, want)  # the whole entry: the frozen rows (never moved) and the averaged rows


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_joining_back_into_a_trainable_whole_keeps_the_rows_average(fw):
    split, whole = pair(fw)
    xfreeze.freeze(split, "embed.weight[:8]")  # rows 8, 9 train; the head trains whole
    emas = [xfreeze.EMA(m, decay=0.5) for m in (split, whole)]
    for m, e in zip((split, whole), emas):
        train(fw, m, e, 2)
    xfreeze.unfreeze(split, "embed")  # joined: the whole tensor trains
    emas[0].refresh()
    assert "embed.weight[8:10]" not in emas[0].shadow
    for m, e in zip((split, whole), emas):
        train(fw, m, e, 2)
    assert_same(shadow_bits(emas[0]), shadow_bits(emas[1]))
    assert emas[0].held_bytes == emas[1].held_bytes


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_freezing_the_rows_again_drops_their_average(fw):
    model = vocab_model(fw, V, D)
    xfreeze.freeze(model, "embed.weight[:8]")
    ema = xfreeze.EMA(model, decay=0.5)
    train(fw, model, ema, 2)
    xfreeze.freeze(model, "embed")  # joined, frozen whole
    trained = model_bits(model)
    ema.update()
    assert ema.shadow["embed.weight"] is model.embed.weight  # frozen: the model's own tensor again
    assert ema.held_bytes == (V * D + V) * 4  # the head only
    state = shadow_bits(ema)
    assert "embed.weight[8:10]" not in state
    assert np.array_equal(state["embed.weight"], trained["embed.weight"])  # the trained rows, not their average


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_other_rows_chosen_keep_the_average_of_the_rows_that_stay(fw):
    model = vocab_model(fw, V, D)
    xfreeze.freeze(model, "*", "!embed.weight[8:]")
    ema = xfreeze.EMA(model, decay=0.5)
    train(fw, model, ema, 2)
    averaged = shadow_bits(ema)["embed.weight[8:10]"]
    xfreeze.unfreeze(model, "embed.weight[6:8]")  # now rows 6 to 9 train
    ema.refresh()
    now = shadow_bits(ema)["embed.weight[6:10]"]
    assert np.array_equal(now[2:], averaged)  # rows 8, 9: their average goes on
    assert np.array_equal(now[:2], model_bits(model)["embed.weight"][6:8])  # rows 6, 7: their value now
    assert ema.held_bytes == 4 * D * 4


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_state_dict_holds_the_whole_average_and_resumes_bitwise(fw):
    model, resumed = pair(fw)
    xfreeze.freeze(model, "*")
    ema = xfreeze.EMA(model, decay=0.5)
    xfreeze.unfreeze(model, "embed.weight[8:]")
    train(fw, model, ema, 2)
    state = ema.state_dict()
    saved = bits(state["shadow"])
    frozen = model_bits(model)["embed.weight"]
    assert np.array_equal(saved["embed.weight"][:8], frozen[:8])
    assert np.array_equal(saved["embed.weight"][8:], saved["embed.weight[8:10]"])  # the average, not the model's
    assert not np.array_equal(saved["embed.weight[8:10]"], frozen[8:])
    xfreeze.freeze(resumed, "*")
    resumed_ema = xfreeze.EMA(resumed, decay=0.5)  # built before the split, loaded after it
    xfreeze.unfreeze(resumed, "embed.weight[8:]")
    fw.load(resumed, fw.state(model))  # the checkpoint's weights, split the same way
    resumed_ema.load_state_dict(state)
    for m, e in ((model, ema), (resumed, resumed_ema)):
        train(fw, m, e, 2)
    assert_same(shadow_bits(ema), shadow_bits(resumed_ema))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_state_saved_before_the_split_loads_after_it(fw):
    """Saved while the whole tensor trained: the split's rows take their rows of the whole entry; a state with a
    rows entry loads into an EMA whose model is not split (that entry is not needed)."""
    model, other = pair(fw)
    ema = xfreeze.EMA(model, decay=0.5)
    train(fw, model, ema, 2)
    state = ema.state_dict()
    xfreeze.freeze(model, "embed.weight[:8]")
    ema.load_state_dict(state)
    assert np.array_equal(shadow_bits(ema)["embed.weight[8:10]"], bits(state["shadow"])["embed.weight"][8:])
    split_state = ema.state_dict()
    other_ema = xfreeze.EMA(other, decay=0.5)  # whole tensors train
    other_ema.load_state_dict(split_state)
    assert np.array_equal(shadow_bits(other_ema)["embed.weight"], bits(split_state["shadow"])["embed.weight"])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_copy_to_a_model_split_otherwise_or_not_at_all_writes_the_same_weights(fw):
    model, plain, same, shifted = pair(fw, 4)
    xfreeze.freeze(model, "*")
    ema = xfreeze.EMA(model, decay=0.5)
    xfreeze.unfreeze(model, "embed.weight[8:]")
    train(fw, model, ema, 2)
    xfreeze.freeze(same, "*", "!embed.weight[8:]")
    xfreeze.freeze(shifted, "*", "!embed.weight[5:9]")
    for target in (plain, same, shifted):
        ema.copy_to(target)
    ema.copy_to()  # into the tracked model too
    want = shadow_bits(ema)
    want.pop("embed.weight[8:10]")
    for target in (model, same, shifted):  # read directly first: a state dict writes a split's rows in itself
        assert np.array_equal(to_raw(target.embed.weight).bits, want["embed.weight"])
    for target in (model, plain, same, shifted):
        assert_same(model_bits(target), want)
    got = bits({n: p for n, p in shifted.named_parameters() if n.startswith("embed.weight[")})
    assert np.array_equal(got["embed.weight[5:9]"], want["embed.weight"][5:9])  # its rows took the average


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_new_tensor_that_is_no_split_is_refused_naming_it(fw):
    model = vocab_model(fw, V, D)
    ema = xfreeze.EMA(model, decay=0.5)
    before = shadow_bits(ema)
    model.extra = fw.new_parameter(model, [3])
    with pytest.raises(XFreezeError, match=r"extra \(new\).*xfreeze\.EMA\(model\)"):
        ema.update()
    assert ema.num_updates == 0
    assert_same(shadow_bits_of_names(ema, before), before)


def shadow_bits_of_names(ema, like: dict) -> dict:
    return bits({k: ema.shadow[k] for k in like})


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_load_refuses_keys_that_are_no_rows_of_the_model_and_changes_nothing(fw):
    model = vocab_model(fw, V, D)
    xfreeze.freeze(model, "embed.weight[:8]")
    ema = xfreeze.EMA(model, decay=0.5)
    train(fw, model, ema, 1)
    state = copy.deepcopy(ema.state_dict())
    before, model_before = shadow_bits(ema), state_hash(model)
    del state["shadow"]["embed.weight"]  # the rows entry alone: the whole tensor's is missing
    state["shadow"]["nope.weight[0:2]"] = state["shadow"]["head.bias"]  # rows of no tensor of the model
    with pytest.raises(XFreezeError, match=r"keys differ.*embed\.weight.*nope"):
        ema.load_state_dict(state)
    assert_same(shadow_bits(ema), before)
    assert state_hash(model) == model_before

"""Part of a tensor trains (issue 21): patterns ending in [rows], splits, counts, joins, and refusals."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import xfreeze
from harness import kit, vocab_model
from statehash import state_hash
from xfreeze.model.slices import canonical, parse_rows, split_index

V, D = 12, 4


def tiny(fw):
    return vocab_model(fw, V, D)


def tied_embedding(fw):
    """Two embeddings sharing one weight (a tied pair whose layouts agree in every framework)."""

    class Tied(fw.Module):
        def __init__(self):
            super().__init__()
            self.a = fw.nn.Embedding(V, D)
            self.b = fw.nn.Embedding(V, D)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.a(x) + self.b(x)

    return Tied()


def whole(fw, model, name):
    """The tensor of ``name`` as the state dict gives it, in the neutral layout (rows first)."""
    value = fw.numpy(model.state_dict()[name]).copy()
    axes = dict(zip(fw.linear_weight_axes, (0, 1)))
    return value.T.copy() if name == "head.weight" and axes["out"] == 1 else value


def loss_step(fw, model, opt, tokens=(1, 3, 7, 10, 11)):
    out = model(fw.tensor(np.array(tokens, dtype=np.int64)))
    out.square().mean().backward()
    opt.step()
    fw.clear_grad(opt)


@pytest.mark.parametrize(
    "text, base, rows",
    [
        ("w[3:]", "w", list(range(3, 12))),
        ("a.b[1,5,9]", "a.b", [1, 5, 9]),
        ("x.*.gate_up_proj[6:8]", "x.*.gate_up_proj", [6, 7]),
        ("w[-2:]", "w", [10, 11]),
        ("w[0:6:2, 11]", "w", [0, 2, 4, 11]),
    ],
)
def test_index_patterns_parse_and_resolve(text, base, rows):
    got_base, index = split_index(text)
    assert got_base == base
    assert index.resolve(12, text, "w").tolist() == rows


@pytest.mark.parametrize("text", ["layer[1-3]", "w[]", "w[a]", "[0]", "w[1.5]", "layers.[01]"])
def test_brackets_that_are_not_indices_stay_globs(text):
    assert split_index(text)[1] is None


def test_canonical_names_round_trip():
    rows = np.array([0, 1, 2, 5, 9, 10])
    assert canonical(rows) == "0:3,5,9:11"
    assert parse_rows(canonical(rows)).tolist() == rows.tolist()


def test_unfreeze_rows_splits_the_tensor(fw):
    model = tiny(fw)
    xfreeze.freeze(model, "*")
    report = xfreeze.unfreeze(model, "embed.weight[8:]", "head.weight[1,5]")
    assert report.changed == ["embed.weight[8:12]", "head.weight[1,5]"]
    assert report.counts.trainable == 4 * D + 2 * D
    assert report.counts.total == 2 * V * D + V
    assert sorted(model.state_dict()) == ["embed.weight", "head.bias", "head.weight"]  # the rows' keys stay hidden
    assert fw.trainable_names(model) == ["embed.weight[8:12]", "head.weight[1,5]"]


def test_frozen_rows_bitwise_and_trained_rows_move(fw):
    model = tiny(fw)
    before = {k: whole(fw, model, k) for k in ("embed.weight", "head.weight")}
    xfreeze.freeze(model, "*", "!embed.weight[8:]", "!head.weight[1,5]")
    opt = xfreeze.optimizer(model, "adamw", lr=0.1, weight_decay=0.5)
    for _ in range(3):
        loss_step(fw, model, opt)
    emb, head = whole(fw, model, "embed.weight"), whole(fw, model, "head.weight")
    assert np.array_equal(emb[:8], before["embed.weight"][:8])
    assert not np.array_equal(emb[8:], before["embed.weight"][8:])
    keep = [i for i in range(V) if i not in (1, 5)]
    assert np.array_equal(head[keep], before["head.weight"][keep])
    assert not np.array_equal(head[[1, 5]], before["head.weight"][[1, 5]])


def test_a_linear_s_rows_are_its_output_features(fw):
    """Paddle stores a Linear weight [in, out]: its rows (output features) are columns there."""
    model = tiny(fw)
    xfreeze.freeze(model, "*")
    xfreeze.unfreeze(model, "head[10:]")  # the module: its weight's rows and its bias's entries
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["head.weight[10:12]"] == fw.linear_weight_shape(D, 2)
    assert shapes["head.bias[10:12]"] == (2,)


def test_whole_unfreeze_joins_back_bitwise(fw):
    model = tiny(fw)
    xfreeze.freeze(model, "*")
    xfreeze.unfreeze(model, "embed.weight[2:5]")
    opt = xfreeze.optimizer(model, "sgd", lr=0.5, momentum=0.9)
    loss_step(fw, model, opt, tokens=(2, 3, 4))
    trained = whole(fw, model, "embed.weight")
    report = xfreeze.unfreeze(model, "embed.weight")
    assert report.changed == ["embed.weight[0:2,5:12]"]
    assert [n for n, _ in model.named_parameters()] == ["embed.weight", "head.weight", "head.bias"]
    assert np.array_equal(fw.numpy(model.embed.weight), trained)
    assert fw.trainable_names(model) == ["embed.weight"]


def test_freeze_rows_of_a_trainable_tensor_and_more_rows_later(fw):
    model = tiny(fw)
    xfreeze.freeze(model, "head")
    xfreeze.freeze(model, "embed.weight[0:10]")
    assert fw.trainable_names(model) == ["embed.weight[10:12]"]
    xfreeze.unfreeze(model, "embed.weight[4]")
    assert fw.trainable_names(model) == ["embed.weight[4,10:12]"]
    xfreeze.freeze(model, "embed")
    assert fw.trainable_names(model) == []
    assert [n for n, _ in model.named_parameters()] == ["embed.weight", "head.weight", "head.bias"]


def test_tied_weight_shares_one_rows_parameter(fw):
    model = tied_embedding(fw)
    xfreeze.freeze(model, "*")
    xfreeze.unfreeze(model, "b.weight[9:]")  # the twin's name: the one tensor is split under both names
    assert model.a._parameters["weight[9:12]"] is model.b._parameters["weight[9:12]"]
    assert xfreeze.summary(model, print_table=False).counts.trainable == 3 * D


def test_summary_and_select_count_partial_tensors(fw):
    model = tiny(fw)
    xfreeze.freeze(model, "*", "!embed.weight[8:]")
    summary = xfreeze.summary(model, print_table=False)
    row = next(r for r in summary.rows if r.name == "embed")
    assert (row.parameters, row.trainable) == (V * D, 4 * D)
    assert summary.counts.total == 2 * V * D + V
    assert "embed.weight[8:12]" in xfreeze.select(model, "*.weight")  # the rows follow their tensor's patterns


def test_copies_keep_the_split(fw):
    model = tiny(fw)
    xfreeze.freeze(model, "*", "!embed.weight[8:]")
    twin = copy.deepcopy(model)
    opt = xfreeze.optimizer(twin, "sgd", lr=1.0)
    loss_step(fw, twin, opt, tokens=(9,))
    assert np.array_equal(whole(fw, model, "embed.weight")[:8], whole(fw, twin, "embed.weight")[:8])
    assert not np.array_equal(whole(fw, model, "embed.weight")[9], whole(fw, twin, "embed.weight")[9])


@pytest.mark.parametrize(
    "patterns, match",
    [
        (["embed.weight[12]"], "outside embed.weight, whose first dimension has 12 rows"),
        (["embed.weight[3:40]"], "outside"),
        (["embed.weight[0:5]", "embed.weight[4:8]"], "overlap on embed.weight"),
        (["embed.weight[1,1]"], "more than once"),
        (["nothing.weight[0:2]"], "matched no parameters"),
        (["embed.weight[5:5]"], "selects no rows"),
    ],
)
def test_bad_rows_refused_and_nothing_changes(fw, patterns, match):
    model = tiny(fw)
    xfreeze.freeze(model, "*")
    before = state_hash(model)
    with pytest.raises(xfreeze.XFreezeError, match=match):
        xfreeze.unfreeze(model, *patterns)
    assert state_hash(model) == before


def test_tied_twin_given_other_rows_refused(fw):
    model = tied_embedding(fw)
    xfreeze.freeze(model, "*")
    before = state_hash(model)
    with pytest.raises(xfreeze.XFreezeError, match="tied tensor"):
        xfreeze.unfreeze(model, "a.weight[9:]", "b.weight[8:]")
    assert state_hash(model) == before


def test_a_0d_tensor_has_no_rows(fw):
    model = tiny(fw)
    model.scale = fw.new_parameter(model, [])
    before = state_hash(model)
    with pytest.raises(xfreeze.XFreezeError, match="0-d tensor"):
        xfreeze.freeze(model, "scale[0]")
    assert state_hash(model) == before


def test_an_engine_that_owns_the_parameters_is_refused_up_front(fw):
    class DeepSpeedEngine(fw.Module):  # by class name, as xfreeze tells DeepSpeed's engine
        def __init__(self, module):
            super().__init__()
            self.module = module

    engine = DeepSpeedEngine(tiny(fw))
    before = state_hash(engine)
    with pytest.raises(xfreeze.XFreezeError, match="not supported under DeepSpeedEngine"):
        xfreeze.freeze(engine, "module.embed.weight[0:8]")
    assert state_hash(engine) == before


def test_torch_load_state_dict_refreshes_the_rows():
    """torch's load_state_dict runs the split's hooks (Paddle's set_state_dict runs none: docs/guide/slices.md)."""
    fw = kit("torch")
    model, source = tiny(fw), tiny(fw)
    xfreeze.freeze(model, "*", "!embed.weight[8:]")
    model.load_state_dict(source.state_dict())  # strict: the rows' own key is not asked for
    assert np.array_equal(whole(fw, model, "embed.weight"), whole(fw, source, "embed.weight"))
    out = model.embed(fw.tensor(np.array([9], dtype=np.int64)))
    assert np.array_equal(fw.numpy(out)[0], whole(fw, source, "embed.weight")[9])


def test_load_matched_into_a_split_tensor_refreshes_its_rows(fw):
    """xfreeze's own load (both frameworks): the rows take what was loaded, so the next forward does not write the
    old rows back over it."""
    model, source = tiny(fw), tiny(fw)
    xfreeze.freeze(model, "*", "!embed.weight[8:]")
    xfreeze.load_matched(model, source)
    expected = whole(fw, source, "embed.weight")
    out = model.embed(fw.tensor(np.array([9, 2], dtype=np.int64)))
    assert np.array_equal(fw.numpy(out), expected[[9, 2]])
    assert np.array_equal(whole(fw, model, "embed.weight"), expected)
    assert fw.trainable_names(model) == ["embed.weight[8:12]"]


def test_a_re_pattern_s_brackets_are_its_own_classes(fw):
    """``re:...[01]`` is a regex class, never rows (the ERNIE example selects layers 0 and 1 so)."""
    model = fw.nn.Sequential(fw.linear(2, 2), fw.linear(2, 2), fw.linear(2, 2))
    report = xfreeze.freeze(model, "re:[01]")
    assert report.changed == ["0.weight", "0.bias", "1.weight", "1.bias"]

"""Delta checkpoints: only what trains is saved, with a fingerprint of the frozen base; loading checks the base
first, applies the freeze plan, and works across frameworks."""

import json
import re

import numpy as np
import pytest

import xfreeze
from xfreeze import XFreezeError
from xfreeze.core.tensors import same_bits, to_numpy
import hostile_files
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
    from xfreeze.core import hashing

    m = fw.build(CNN)
    fw.load(m, random_state(CNN, "float32", 1))
    xfreeze.freeze(m, "*", f"!{head_name(fw)}")
    one = xfreeze.frozen_fingerprint(m)
    monkeypatch.setattr(hashing, "PER_THREAD", 1)  # every tensor counts as large: the thread pool runs
    many = xfreeze.frozen_fingerprint(m)
    assert list(many["tensors"].items()) == list(one["tensors"].items()) and len(one["tensors"]) > 2
    fw.load(m, random_state(CNN, "float32", 2))  # every frozen tensor drifts: all are named, in model order
    check = xfreeze.verify_frozen(m, one)
    assert check.drifted == list(one["tensors"])


# --- issue 18: the file cannot change what it says is frozen; every refusal changes nothing ----------------------
def _trained(fw, tmp_path):
    """A CNN (seed 0) with its head trained away from the base, everything else frozen; its delta's path."""
    head = head_name(fw)
    m = fw.build(CNN)
    fw.load(m, random_state(CNN, "float32", 0))
    xfreeze.freeze(m, "*", f"!{head}")
    fw.load(m, {**random_state(CNN, "float32", 0), f"{head}.weight": random_state(CNN, "float32", 7)[f"{head}.weight"]})
    return m, xfreeze.save_delta(m, tmp_path / "d.safetensors")


def _base(fw):
    """The delta's base (seed 0), nothing frozen: a refused load that froze anything would show in its hash."""
    m = fw.build(CNN)
    fw.load(m, random_state(CNN, "float32", 0))
    return m


def _edited(tmp_path, path, **changes):
    out = tmp_path / "edited.safetensors"
    hostile_files.rewrite_safetensors(path, out, **changes)
    return out


def _refused(fw, path, match, **options):
    base = _base(fw)
    before, data = state_hash(base), path.read_bytes()
    with pytest.raises(XFreezeError, match=match):
        xfreeze.load_delta(base, path, **options)
    assert state_hash(base) == before and path.read_bytes() == data
    return base


def _meta(path, field):
    return json.loads(xfreeze.load_checkpoint(path).metadata[field])


def test_a_changed_frozen_weight_in_the_file_is_refused(fw, tmp_path):
    m, path = _trained(fw, tmp_path)
    full = xfreeze.load_checkpoint(xfreeze.save_checkpoint(m, tmp_path / "full.safetensors"))
    edited = _edited(tmp_path, path, tensors={"0.weight": to_numpy(full["0.weight"]) + 1})
    _refused(fw, edited, r"carries 1 tensors that its own plan freezes or locks: \['0\.weight'\]")
    check = xfreeze.verify_frozen(m, edited)
    assert check.ok  # the model itself did not drift: the file is what is wrong, and load_delta says so


def test_a_changed_locked_norm_statistic_in_the_file_is_refused(fw, tmp_path):
    m, path = _trained(fw, tmp_path)
    stat = _meta(path, "locked_norms")[0]  # the first statistic of a locked norm layer, in the framework's name
    edited = _edited(tmp_path, path, tensors={stat: np.full(4, 9.0, "float32")})
    _refused(fw, edited, rf"carries 1 tensors .*\['{re.escape(stat)}'\]")


def test_a_plan_that_trains_a_buffer_is_refused_before_anything_is_frozen(fw, tmp_path):
    _, path = _trained(fw, tmp_path)
    stat = _meta(path, "locked_norms")[0]
    edited = _edited(tmp_path, path, metadata={"trainable": json.dumps([*_meta(path, "trainable"), stat])})
    _refused(fw, edited, rf"plans to train '{re.escape(stat)}', which is a norm statistic of this model")


def test_a_plan_naming_what_the_model_lacks_is_refused(fw, tmp_path):
    _, path = _trained(fw, tmp_path)
    trainable = json.dumps([*_meta(path, "trainable"), "9.weight"])
    edited = _edited(tmp_path, path, metadata={"trainable": trainable})
    _refused(fw, edited, r"names '9\.weight', which this model lacks")


def test_a_plan_that_locks_what_is_not_a_norm_is_refused(fw, tmp_path):
    _, path = _trained(fw, tmp_path)
    _refused(
        fw,
        _edited(tmp_path, path, metadata={"locked_norms": json.dumps(["0.weight"])}),
        r"plans to lock the norm layer of '0\.weight', which is not a norm statistic",
    )


@pytest.mark.parametrize(
    "value, dtype",
    [(np.full(3, 1 + 5j, "complex64"), "complex64"), (np.arange(3), "int64"), (np.ones(3, bool), "bool")],
)
def test_casts_that_change_values_are_refused(fw, tmp_path, value, dtype):
    _, path = _trained(fw, tmp_path)
    bias = f"{head_name(fw)}.bias"
    _refused(fw, _edited(tmp_path, path, tensors={bias: value}), rf"{re.escape(bias)} {dtype} -> float32")


def test_an_exact_widening_is_made_and_reported(fw, tmp_path):
    _, path = _trained(fw, tmp_path)
    bias = f"{head_name(fw)}.bias"
    half = np.array([0.5, -2.0, 1024.0], "float16")
    base = _base(fw)
    report = xfreeze.load_delta(base, _edited(tmp_path, path, tensors={bias: half}))
    assert report.cast == {bias: ("float16", "float32")}
    assert np.array_equal(fw.numpy(dict(base.named_parameters())[bias]), half.astype("float32"))
    assert "dtype cast" in str(report) and f"{bias} float16->float32" in str(report)


def test_a_trainable_tensor_missing_from_the_file_is_refused_unless_allowed(fw, tmp_path):
    m, path = _trained(fw, tmp_path)
    weight = f"{head_name(fw)}.weight"
    edited = _edited(tmp_path, path, drop=[weight])
    _refused(fw, edited, rf"lacks 1 of the 2 tensors its plan trains: \['{re.escape(weight)}'\].*allow_missing=True")
    base = _base(fw)
    kept = fw.numpy(dict(base.named_parameters())[weight]).copy()
    report = xfreeze.load_delta(base, edited, allow_missing=True)
    assert report.missing == [weight] and weight not in report.loaded
    assert np.array_equal(fw.numpy(dict(base.named_parameters())[weight]), kept)  # the base's value, as reported
    assert fw.trainable_names(base) == fw.trainable_names(m)  # the plan is applied all the same


@pytest.mark.parametrize(
    "field, text, match",
    [
        ("trainable", '{"a": 1}', r"field 'trainable' must be a JSON list of tensor names; it holds a JSON object"),
        ("trainable", "[1, 2]", r"field 'trainable' must list tensor names .*1 \(JSON int\)"),
        ("trainable", '["x", "x"]', r"field 'trainable' names \['x'\] more than once"),
        ("locked_norms", '"1"', r"field 'locked_norms' must be a JSON list .*it holds a string"),
        ("fingerprint", "[1, 2]", r"field 'fingerprint' must be a map .*it holds a JSON list"),
        ("fingerprint", '{"0.weight": 5}', r"field 'fingerprint': the entries for \['0\.weight'\] are not sha256"),
        ("fingerprint", "{not json", r"field 'fingerprint' is not valid JSON"),
        ("trainable", None, r"field 'trainable' is missing"),
        ("framework", "jax", r"field 'framework' is 'jax': expected one of"),
        ("trainable", "[" * 100_000 + "]" * 100_000, r"field 'trainable' nests 100,000 levels deep"),
        ("fingerprint", '{"a": ' * 100_000 + "1" + "}" * 100_000, r"field 'fingerprint' nests 100,000 levels deep"),
    ],
)
def test_damaged_metadata_is_a_clear_error_naming_the_file_and_the_field(fw, tmp_path, field, text, match):
    m, path = _trained(fw, tmp_path)
    edited = _edited(tmp_path, path, metadata={field: text})
    _refused(fw, edited, rf"delta '{re.escape(str(edited))}' metadata {match}")
    before = state_hash(m)
    with pytest.raises(XFreezeError, match=match):
        xfreeze.verify_frozen(m, edited)
    assert state_hash(m) == before


def test_nesting_is_measured_outside_strings_without_parsing():
    from xfreeze.weights.delta_file import nesting_depth

    assert nesting_depth('["[[[[", "a\\"[[{", "\\\\"]') == 1
    assert nesting_depth('{"a": [[1], {"b": "]]]]"}]}') == 3
    assert nesting_depth("") == 0 and nesting_depth("[" * 50_000) == 50_000


def test_an_emptied_or_partial_fingerprint_is_refused_with_the_count(fw, tmp_path):
    m, path = _trained(fw, tmp_path)
    fingerprint = _meta(path, "fingerprint")
    frozen = len(fingerprint)
    assert frozen == 12  # two convs and two norms: weights, biases, locked statistics
    _refused(
        fw,
        _edited(tmp_path, path, metadata={"fingerprint": "{}"}),
        rf"fingerprint covers 0 of the {frozen} tensors its plan leaves frozen on this base; {frozen} have no hash",
    )
    partial = dict(list(fingerprint.items())[1:])
    edited = _edited(tmp_path, path, metadata={"fingerprint": json.dumps(partial)})
    _refused(fw, edited, rf"covers {frozen - 1} of the {frozen} tensors .*1 have no hash: \['0\.weight'\]")
    check = xfreeze.verify_frozen(m, edited)
    assert not check.ok and check.uncovered == ["0.weight"] and not check.drifted


def test_a_fingerprint_of_a_tensor_the_plan_trains_is_refused(fw, tmp_path):
    _, path = _trained(fw, tmp_path)
    weight = f"{head_name(fw)}.weight"
    fingerprint = {**_meta(path, "fingerprint"), weight: "0" * 64}
    _refused(
        fw,
        _edited(tmp_path, path, metadata={"fingerprint": json.dumps(fingerprint)}),
        rf"hashes 1 tensors its plan does not freeze: \['{re.escape(weight)}'\]",
    )


def test_bad_arguments_are_refused(fw, tmp_path):
    _, path = _trained(fw, tmp_path)
    base = _base(fw)
    before = state_hash(base)
    with pytest.raises(XFreezeError, match=r"path must be a delta file path .*Received: path=3"):
        xfreeze.load_delta(base, 3)
    with pytest.raises(XFreezeError, match=r"allow_missing must be True or False. Received: allow_missing='yes'"):
        xfreeze.load_delta(base, path, allow_missing="yes")
    assert state_hash(base) == before


def test_the_delta_report_prints_as_a_table(fw, tmp_path):
    _, path = _trained(fw, tmp_path)
    report = xfreeze.load_delta(_base(fw), path)
    text = str(report)
    assert repr(report) == text and text.startswith(f"xfreeze.load_delta: Sequential ({fw.name})")
    rows = {cells[0]: cells[1:] for cells in (_cells(line) for line in text.splitlines()) if cells}
    head = head_name(fw)
    assert rows["loaded"][0] == str(len(report.loaded)) and f"{head}.weight" in rows["trainable"][1]
    assert rows["locked norms"] == ["2", "1, 4"] and rows["frozen, hash verified"][0] == "12"
    assert text.splitlines()[-1] == f"a {fw.name} delta (its tensor names are {fw.name}'s)"


def _cells(line: str) -> list:
    return [c.strip() for c in line.strip("│ ").split("│")] if line.startswith("│") else []


def test_a_tied_frozen_weight_is_saved_once_and_its_second_name_cannot_carry_it(fw, tmp_path):
    m = fw.nn.Sequential(fw.linear(4, 4), fw.linear(4, 4), fw.linear(4, 2))
    m[1].weight = m[0].weight  # one tensor under two names: 0.weight and 1.weight
    xfreeze.freeze(m, "0")
    path = xfreeze.save_delta(m, tmp_path / "d.safetensors")
    assert sorted(xfreeze.load_checkpoint(path)) == ["1.bias", "2.bias", "2.weight"]
    assert sorted(_meta(path, "fingerprint")) == ["0.bias", "0.weight"]
    edited = _edited(tmp_path, path, tensors={"1.weight": np.zeros((4, 4), "float32")})
    before, data = state_hash(m), edited.read_bytes()
    with pytest.raises(XFreezeError, match=r"carries 1 tensors that its own plan freezes or locks: \['1\.weight'\]"):
        xfreeze.load_delta(m, edited)
    assert state_hash(m) == before and edited.read_bytes() == data
    assert xfreeze.load_delta(m, path).loaded == ["1.bias", "2.weight", "2.bias"]


def test_a_torch_delta_carrying_a_frozen_weight_is_refused_on_a_paddle_base(tmp_path):
    t, p = kit("torch"), kit("paddle")
    _, path = _trained(t, tmp_path)
    edited = _edited(tmp_path, path, tensors={"0.weight": np.zeros((4, 3, 3, 3), "float32")})
    base = _base(p)
    before = state_hash(base)
    with pytest.raises(XFreezeError, match=r"carries 1 tensors that its own plan freezes or locks: \['0\.weight'\]"):
        xfreeze.load_delta(base, edited)
    assert state_hash(base) == before
    assert xfreeze.load_delta(base, path).framework == "torch"  # the unedited delta loads

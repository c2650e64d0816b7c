"""load_matched: shape-matched loading with a full report, prefixes, rename, skip, strict, dtype casts, errors."""

import warnings

import numpy as np
import pytest

import xfreeze
from xfreeze import XFreezeError
from xfreeze.model import provenance
from harness import Spec, random_state
from statehash import state_hash

CNN = Spec("cnn", (4, 3))  # 0 conv, 1 bn, 3 conv, 4 bn, 8 linear (3 classes)
CNN10 = Spec("cnn", (4, 3), classes=10)


def built(fw, spec=CNN, seed=0, dtype="float32"):
    m = fw.build(spec, dtype)
    fw.load(m, random_state(spec, dtype, seed))
    return m


def state(fw, m):
    from xfreeze.core.dispatch import adapter_for

    return adapter_for(m).state_tensors(m)


def test_head_of_another_size_is_reported_and_the_rest_loads(fw):
    source, target = built(fw, CNN10, seed=1), built(fw, CNN, seed=2)
    report = xfreeze.load_matched(target, state(fw, source))
    assert report.mismatched == {
        "8.weight": (fw.linear_weight_shape(3, 3), fw.linear_weight_shape(3, 10)),
        "8.bias": ((3,), (10,)),
    }
    stat = "1." + fw.stat_names["running_mean"]
    assert "0.weight" in report.loaded and stat in report.loaded
    assert np.array_equal(fw.state(target)["0.weight"], fw.state(source)["0.weight"])
    assert not np.array_equal(fw.state(target)["8.bias"], fw.state(source)["8.bias"][:3])
    assert "shape mismatch" in str(report)


@pytest.mark.parametrize("prefix", ["module.", "_layers."])
def test_data_parallel_prefixes_are_removed(fw, prefix):
    source, target = built(fw, seed=1), built(fw, seed=2)
    report = xfreeze.load_matched(target, {prefix + k: v for k, v in state(fw, source).items()})
    assert not report.missing and not report.unexpected
    assert report.renamed[prefix + "0.weight"] == "0.weight"


def test_rename_by_prefix_map_and_function(fw):
    source, target = built(fw, seed=1), built(fw, seed=2)
    wrapped = {"backbone.body." + k: v for k, v in state(fw, source).items()}
    assert not xfreeze.load_matched(target, wrapped, rename={"backbone.body.": ""}).unexpected
    report = xfreeze.load_matched(
        target,
        wrapped,
        rename=lambda k: k.replace("backbone.body.", "") if not k.endswith("bias") else None,
        allow_partial=True,
    )
    assert all(k.endswith("bias") for k in report.missing)


def test_skip_keeps_chosen_keys(fw):
    source, target = built(fw, seed=1), built(fw, seed=2)
    before = fw.state(target)
    report = xfreeze.load_matched(target, state(fw, source), skip=["8", "type:norm"])
    assert "8.weight" in report.skipped and any(k.startswith("1.") for k in report.skipped)
    after = fw.state(target)
    assert np.array_equal(before["8.weight"], after["8.weight"])
    assert np.array_equal(before["1.running_mean"], after["1.running_mean"])
    assert np.array_equal(after["0.weight"], fw.state(source)["0.weight"])


def test_dtype_is_cast_and_reported(fw):
    source, target = built(fw, seed=1, dtype="float64"), built(fw, seed=2)
    report = xfreeze.load_matched(target, state(fw, source))
    assert report.cast["0.weight"] == ("float64", "float32")
    assert fw.state(target)["0.weight"].dtype == np.float32


def test_source_may_be_a_model_a_path_or_numpy(fw, tmp_path):
    source = built(fw, seed=1)
    for src in (
        source,
        xfreeze.save_checkpoint(source, tmp_path / "w.safetensors"),
        {k: np.asarray(v) for k, v in xfreeze.load_checkpoint(tmp_path / "w.safetensors").items()},
    ):
        target = built(fw, seed=2)
        xfreeze.load_matched(target, src)
        assert np.array_equal(fw.state(target)["8.weight"], fw.state(source)["8.weight"])


def test_strict_raises_with_the_report_and_changes_nothing(fw):
    source, target = built(fw, CNN10, seed=1), built(fw, seed=2)
    before = fw.state(target)
    with pytest.raises(XFreezeError, match=r"(?s)strict load .* nothing was loaded.*shape mismatch"):
        xfreeze.load_matched(target, state(fw, source), strict=True)
    assert all(np.array_equal(v, fw.state(target)[k]) for k, v in before.items())


def test_an_unrelated_model_is_an_error(fw):
    unrelated = fw.build(Spec("mlp", (7, 9)))
    target = built(fw)
    before = fw.state(target)
    with pytest.raises(XFreezeError, match=r"loaded 0 of \d+ keys into Sequential .* another model"):
        xfreeze.load_matched(target, unrelated)
    assert all(np.array_equal(v, fw.state(target)[k]) for k, v in before.items())
    assert xfreeze.load_matched(target, unrelated, allow_empty=True).loaded == []


def test_conflicting_rename_rules(fw):
    source, target = built(fw, seed=1), built(fw, seed=2)
    wrapped = {"backbone.body." + k: v for k, v in state(fw, source).items()}
    before = fw.state(target)
    with pytest.raises(XFreezeError, match=r"conflicting rename rules: 'backbone.' and 'backbone.body.'"):
        xfreeze.load_matched(target, wrapped, rename={"backbone.": "", "backbone.body.": ""})
    with pytest.raises(XFreezeError, match=r"rename rules map 2 source keys to '0.weight'"):
        weight = state(fw, source)["0.weight"]
        xfreeze.load_matched(target, {"a.0.weight": weight, "b.0.weight": weight}, rename=lambda k: k[2:])
    assert all(np.array_equal(v, fw.state(target)[k]) for k, v in before.items())


@pytest.mark.parametrize(
    "source, message",
    [
        ({"0.weight": "not a tensor"}, r"values that are not tensors: '0.weight' \(str\)"),
        ({"0.weight": None, "lr": 0.1}, r"values that are not tensors"),
        (42, r"source must be a checkpoint path, a state dict or a model; received int"),
    ],
)
def test_bad_sources(fw, source, message):
    target = built(fw)
    with pytest.raises(XFreezeError, match=message):
        xfreeze.load_matched(target, source)


def test_skip_pattern_matching_nothing(fw):
    with pytest.raises(XFreezeError, match=r"Pattern 'fcc' matched no parameters"):
        xfreeze.load_matched(built(fw), state(fw, built(fw, seed=1)), skip=["fcc"])


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "runs code"])
def test_bad_files_leave_the_model_unchanged(fw, tmp_path, case):
    import os
    import pickle

    target = built(fw)
    before = fw.state(target)
    path = tmp_path / "w.pdparams"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        xfreeze.save_checkpoint(built(fw, seed=1), path)
        path.write_bytes(path.read_bytes()[:200])
    elif case == "runs code":

        class Evil:
            def __reduce__(self):
                return os.system, (f"touch {tmp_path / 'pwned'}",)

        path.write_bytes(pickle.dumps({"0.weight": Evil()}))
    with pytest.raises(XFreezeError, match="w.pdparams"):
        xfreeze.load_matched(target, path)
    assert all(np.array_equal(v, fw.state(target)[k]) for k, v in before.items())
    assert not (tmp_path / "pwned").exists()


# --- the partial-load policy (issue 18, item 3) ---------------------------------------------------------------------


def test_under_half_placed_is_an_error_naming_the_counts(fw):
    source, target = built(fw, seed=1), built(fw, seed=2)
    subset = {k: v for k, v in state(fw, source).items() if k.startswith(("0.", "8."))}
    before = state_hash(target)
    with pytest.raises(
        XFreezeError,
        match=r"load_matched placed 4 of \d+ keys of Sequential \(\w+\) \(fewer than half\); nothing was changed\. "
        r"Loaded 4, adapted 0, shape-mismatched 0, missing \d+\. Pass allow_partial=True",
    ):
        xfreeze.load_matched(target, subset)
    assert state_hash(target) == before
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="load_matched")  # allow_partial: no warning either
        report = xfreeze.load_matched(target, subset, allow_partial=True)
    assert len(report.loaded) == 4 and np.array_equal(fw.state(target)["0.weight"], fw.state(source)["0.weight"])


def test_keys_left_outside_the_head_are_a_warning_with_a_hint(fw):
    source, target = built(fw, CNN10, seed=1), built(fw, seed=2)
    partial = {k: v for k, v in state(fw, source).items() if k != "3.bias"}
    with pytest.warns(UserWarning) as caught:
        report = xfreeze.load_matched(target, partial)
    texts = [str(w.message) for w in caught if "load_matched" in str(w.message)]
    assert len(texts) == 1, texts
    assert (
        texts[0].startswith("load_matched did not fill 1 keys of Sequential")
        and "(0 shape-mismatched, 1 missing in the source): 3.bias;" in texts[0]
    )
    assert "\nHINT: " in texts[0] and "allow_partial=True" in texts[0]
    assert "8.weight" not in texts[0]  # the head's mismatch is expected, not warned
    assert report.missing == ["3.bias"] and set(report.mismatched) == {"8.weight", "8.bias"}


def test_a_mismatched_head_alone_is_not_warned(fw):
    source, target = built(fw, CNN10, seed=1), built(fw, seed=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="load_matched")
        report = xfreeze.load_matched(target, state(fw, source))
    assert set(report.mismatched) == {"8.weight", "8.bias"}


def test_the_load_records_what_it_did_not_reach(fw):
    """freeze's warning (item 2) reads this: mismatched and missing keys, never the loaded or adapted ones."""
    source, target = built(fw, CNN10, seed=1), built(fw, seed=2)
    partial = {k: v for k, v in state(fw, source).items() if k != "3.bias"}
    xfreeze.load_matched(target, partial, allow_partial=True)
    targets = state(fw, target)
    assert {k: id(v) for k, v in provenance.untouched(target).items()} == {
        k: id(targets[k]) for k in ("8.weight", "8.bias", "3.bias")
    }
    xfreeze.load_matched(target, state(fw, built(fw, seed=3)))  # a whole load: nothing left untouched
    assert provenance.untouched(target) == {}


@pytest.mark.slow
def test_resnet50_from_a_resnet18_state_is_refused(fw):
    """The issue's run: 98 keys of 320 placed, silently; now an error naming the counts."""
    target, source = fw.zoo.resnet50(), fw.zoo.resnet18()
    before = state_hash(target)
    with pytest.raises(XFreezeError, match=r"placed \d+ of \d+ keys of ResNet .*fewer than half.*shape-mismatched"):
        xfreeze.load_matched(target, state(fw, source))
    assert state_hash(target) == before


# --- sources that cannot be copied (issue 18, bad input) -----------------------------------------------------------


def test_sparse_and_meta_tensors_are_refused_before_any_copy(fw):
    source, target = built(fw, seed=1), built(fw, seed=2)
    before = state_hash(target)
    good = state(fw, source)
    last = [k for k, v in fw.state(source).items() if v.ndim == 2][-1]  # the keys before it would be copied first
    for label, bad in fw.unreadable_tensors(fw.state(source)[last]).items():
        with pytest.raises(XFreezeError, match=rf"holds a (sparse|meta) tensor.* at '{last}'.*Nothing was changed"):
            xfreeze.load_matched(target, {**good, last: bad})
        assert state_hash(target) == before, label


def test_a_state_dict_object_with_a_non_tensor_value_is_refused(fw):
    target = built(fw)
    before = state_hash(target)
    bad = xfreeze.StateDict({**state(fw, built(fw, seed=1)), "8.bias": [0.0, 1.0, 2.0]})
    with pytest.raises(XFreezeError, match=r"values that are not tensors: '8.bias' \(list\)"):
        xfreeze.load_matched(target, bad)
    assert state_hash(target) == before

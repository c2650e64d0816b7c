"""freeze / unfreeze: trainability, dropped gradients, locked norm statistics, reports."""

import copy
import gc
import pickle
import sys
import threading
import warnings
import weakref

import numpy as np
import pytest

import xfreeze
from xfreeze import XFreezeError
from xfreeze.core.dispatch import adapter_for
from harness import OptConfig, Spec, batch, kit, random_state

CNN = Spec("cnn", (4, 3))  # 0 conv, 1 bn, 3 conv, 4 bn, 8 linear


def build(fw, spec=CNN, dtype="float32"):
    model = fw.build(spec, dtype)
    fw.load(model, random_state(spec, dtype, 0))
    return model


def _param(model, name):
    return dict(model.named_parameters())[name]


def train(fw, model, opt, steps, spec=CNN, dtype="float32", seed=0):
    for s in range(steps):
        model.train()
        x, y = batch(spec, dtype, seed + s)
        fw.train_step(model, opt, fw.tensor(x), fw.labels(y))


def test_freeze_sets_the_framework_flag_and_reports(fw):
    model = build(fw)
    report = xfreeze.freeze(model, "*", "!8")
    assert fw.trainable_names(model) == ["8.weight", "8.bias"]
    assert report.changed == xfreeze.select(model, "*", "!8")
    assert report.counts.trainable == 3 * 3 + 3 and report.counts.trainable_tensors == 2
    assert report.counts.frozen == (3 * 3 * 3 * 4 + 4) + 8 + (4 * 9 * 3 + 3) + 6
    assert report.counts.frozen_bytes == 4 * report.counts.frozen
    assert report.norms_locked == ["1", "4"]
    text = str(report)
    assert "xfreeze.freeze: Sequential" in text and "trainable: 12 parameters in 2 tensors" in text


def test_freeze_twice_reports_nothing_changed(fw):
    model = build(fw)
    xfreeze.freeze(model, "0")
    again = xfreeze.freeze(model, "0")
    assert again.changed == [] and again.unchanged == ["0.weight", "0.bias"]


def test_unfreeze_restores_training(fw):
    model = build(fw)
    xfreeze.freeze(model, "*")
    report = xfreeze.unfreeze(model, "3", "4")
    assert report.changed == ["3.weight", "3.bias", "4.weight", "4.bias"]
    assert report.norms_unlocked == ["4"]
    assert fw.trainable_names(model) == ["3.weight", "3.bias", "4.weight", "4.bias"]


def test_freeze_drops_existing_gradients(fw):
    model = build(fw)
    opt = fw.optimizer(OptConfig("sgd"), model)
    train(fw, model, opt, 1)
    assert fw.grad(_param(model, "0.weight")) is not None  # cleared to zero, still there
    xfreeze.freeze(model, "0")
    assert fw.grad(_param(model, "0.weight")) is None


@pytest.mark.parametrize(
    "opt",
    [
        OptConfig("sgd", weight_decay=2**-6),
        OptConfig("adam", weight_decay=2**-6),
        OptConfig("adamw", weight_decay=2**-4),
    ],
)
def test_frozen_mid_training_never_moves_with_momentum_decay_or_adam_state(fw, opt):
    """The measured trap: torch SGD-momentum with zero_grad(set_to_none=False) moves 'frozen' weights."""
    model = build(fw)
    optimizer = fw.optimizer(opt, model)  # built over every parameter, as users do
    train(fw, model, optimizer, 2)
    xfreeze.freeze(model, "0", "1")
    before = fw.state(model)
    train(fw, model, optimizer, 3, seed=10)
    after = fw.state(model)
    for name in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        assert np.array_equal(before[name], after[name]), name
    assert not np.array_equal(before["8.weight"], after["8.weight"]), "the head must still train"


def test_without_xfreeze_torch_moves_frozen_weights():
    """Documents why freeze drops gradients: the same scenario by hand moves frozen weights in torch
    (Paddle's optimizers skip stop_gradient parameters, so only torch has this trap)."""
    fw = kit("torch")
    model = build(fw)
    optimizer = fw.optimizer(OptConfig("sgd", weight_decay=2**-6), model)
    train(fw, model, optimizer, 2)
    model[0].weight.requires_grad_(False)
    before = model[0].weight.detach().clone()
    train(fw, model, optimizer, 1, seed=10)
    assert not np.array_equal(before.numpy(), model[0].weight.detach().numpy())


def test_locked_norm_statistics_survive_model_train(fw):
    model = build(fw)
    xfreeze.freeze(model, "0", "1")
    assert model[1].training is False
    model.train()
    assert model[1].training is True  # the flag flips back ...
    before = fw.state(model)
    opt = fw.optimizer(OptConfig("sgd"), model)
    train(fw, model, opt, 3)
    after = fw.state(model)
    assert np.array_equal(before["1.running_mean"], after["1.running_mean"])  # ... but statistics stay fixed
    assert np.array_equal(before["1.running_var"], after["1.running_var"])
    assert not np.array_equal(before["4.running_mean"], after["4.running_mean"]), "unlocked norms still update"
    assert model[1].training is False and model[4].training is True


def test_locked_norm_normalizes_with_running_statistics(fw):
    model = build(fw)
    xfreeze.freeze(model, "*")
    x, _ = batch(CNN, "float32", 0)
    model.train()
    out_train_mode = fw.numpy(model(fw.tensor(x)))
    model.eval()
    out_eval_mode = fw.numpy(model(fw.tensor(x)))
    assert np.array_equal(out_train_mode, out_eval_mode)


def test_norm_train_keeps_norm_layers_trainable_in_a_frozen_region(fw):
    model = build(fw)
    report = xfreeze.freeze(model, "*", "!8", norm="train")
    assert report.norms_locked == []
    assert fw.trainable_names(model) == ["1.weight", "1.bias", "4.weight", "4.bias", "8.weight", "8.bias"]
    before = fw.state(model)
    train(fw, model, fw.optimizer(OptConfig("sgd"), model), 2)
    after = fw.state(model)
    assert not np.array_equal(before["1.running_mean"], after["1.running_mean"])
    assert np.array_equal(before["0.weight"], after["0.weight"])


def test_norm_train_after_a_default_freeze_releases_the_lock(fw):
    model = build(fw)
    xfreeze.freeze(model, "*")
    report = xfreeze.freeze(model, "*", norm="train")
    assert report.norms_unlocked == ["1", "4"] and report.changed == ["1.weight", "1.bias", "4.weight", "4.bias"]


def test_unfreeze_releases_the_lock_and_restores_the_models_mode(fw):
    model = build(fw)
    model.train()
    xfreeze.freeze(model, "*")
    xfreeze.unfreeze(model, "1")
    assert model[1].training is True
    before = fw.state(model)
    train(fw, model, fw.optimizer(OptConfig("sgd"), model), 1)
    assert not np.array_equal(before["1.running_mean"], fw.state(model)["1.running_mean"])


def test_half_frozen_batchnorm_trains_its_other_parameter(fw):
    """BitFit-style: freeze BN weights, train BN biases. Paddle alone would give neither a gradient."""
    model = build(fw)
    xfreeze.freeze(model, "*.weight")
    before = fw.state(model)
    train(fw, model, fw.optimizer(OptConfig("sgd"), model), 2)
    after = fw.state(model)
    assert np.array_equal(before["1.weight"], after["1.weight"])
    assert not np.array_equal(before["1.bias"], after["1.bias"])
    xfreeze.unfreeze(model, "*")
    assert "forward" not in vars(model[1]), "the stand-in forward is removed once the layer is whole again"


def test_affine_free_batchnorm_is_locked_when_its_region_is_frozen(fw):
    model = fw.nn.Sequential(fw.linear(3, 4), fw.batch_norm(4, affine=False), fw.linear(4, 2))
    assert not {"1.weight", "1.bias"} & {n for n, _ in model.named_parameters()}  # the kit built it affine-free
    report = xfreeze.freeze(model, "0", "1")
    assert report.norms_locked == ["1"]


def test_lock_survives_deepcopy_and_pickle(fw):
    model = build(fw)
    xfreeze.freeze(model, "0", "1")
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert xfreeze.summary(clone, print_table=False).rows[1].norm == "locked"


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda m: xfreeze.freeze(m, "*", norm="frozen"),
            r"Expected one of \('freeze', 'train'\)\. Received: norm='frozen'",
        ),
        (lambda m: xfreeze.freeze(m), "No patterns given"),
        (lambda m: xfreeze.freeze(m, "0", "nope"), "Pattern 'nope' matched no parameters"),
        (
            lambda m: xfreeze.unfreeze(
                m,
                "re:(",
            ),
            "Invalid regular expression",
        ),
    ],
)
def test_errors_leave_the_model_untouched(fw, call, message):
    model = build(fw)
    xfreeze.freeze(model, "3")
    before_trainable, before_summary = fw.trainable_names(model), str(xfreeze.summary(model, print_table=False))
    with pytest.raises(XFreezeError, match=message):
        call(model)
    assert fw.trainable_names(model) == before_trainable
    assert str(xfreeze.summary(model, print_table=False)) == before_summary


def test_non_model_objects_are_refused():
    with pytest.raises(
        XFreezeError,
        match=r"list is not a supported model type \(expected torch.nn.Module or "
        r"paddle.nn.Layer\)",
    ):
        xfreeze.freeze([1, 2], "*")


def test_data_parallel_wrappers_are_seen_through():
    """DataParallel / DDP name everything "module.*"; xfreeze works on the wrapped model's own names."""
    fw = kit("torch")
    inner = build(fw)
    wrapped = fw.t.nn.DataParallel(inner)  # on a CPU-only machine it only wraps
    assert xfreeze.select(wrapped, "8") == ["8.weight", "8.bias"]
    xfreeze.freeze(wrapped, "*", "!8")
    assert not inner[0].weight.requires_grad and inner[8].weight.requires_grad
    assert xfreeze.replace_head(wrapped, 5, head="8") is inner[8]
    report = xfreeze.load_matched(wrapped, {"module." + k: v for k, v in build(fw).state_dict().items()}, skip=["8"])
    assert not report.missing and not report.unexpected


# --- a tensor that no load reached, then frozen (issue 18, item 2) --------------------------------------------------
def _partial_load(fw, model, source_spec=CNN, drop=(), reshape=()):
    """load_matched from a source where ``reshape`` keys have a shape nothing can adapt and ``drop`` keys are absent."""
    source_model = build(fw, source_spec)
    source = {k: fw.numpy(v) for k, v in adapter_for(source_model).state_tensors(source_model).items()}
    for key in reshape:
        source[key] = np.zeros((2, 2), dtype="float32")
    for key in drop:
        del source[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the load's own warning about keys outside the head is not tested here
        return xfreeze.load_matched(model, source, allow_partial=True)


def _never_loaded_warnings(call) -> list:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if "did not reach" in str(w.message)]


def test_freezing_tensors_the_last_load_did_not_reach_warns_with_a_hint(fw):
    model = build(fw)
    stat = "4." + fw.stat_names["running_mean"]
    report = _partial_load(fw, model, drop=[stat], reshape=["3.weight"])
    assert "3.weight" in report.mismatched and stat in report.missing
    with pytest.warns(UserWarning, match="HINT:") as caught:
        xfreeze.freeze(model, "*", "!8")
    (message,) = [str(w.message) for w in caught if "did not reach" in str(w.message)]
    assert "2 tensor(s)" in message and "3.weight" in message and stat in message
    assert "0.weight" not in message and "8.bias" not in message  # loaded, or left trainable
    assert "now frozen at their initialisation" in message and '"!3.weight"' in message
    assert _never_loaded_warnings(lambda: xfreeze.freeze(model, "*", "!8")) == []  # nothing newly frozen


def test_only_tensors_this_call_freezes_are_named(fw):
    model = build(fw)
    _partial_load(fw, model, reshape=["3.weight", "0.weight"])
    (message,) = _never_loaded_warnings(lambda: xfreeze.freeze(model, "0"))
    assert "1 tensor(s)" in message and "0.weight" in message and "3.weight" not in message
    assert _never_loaded_warnings(lambda: xfreeze.freeze(model, "3", norm="train")) != []


def test_a_head_made_by_replace_head_after_the_load_is_not_named(fw):
    replaced, kept = build(fw), build(fw)
    for model in (replaced, kept):
        report = _partial_load(fw, model, source_spec=Spec("cnn", (4, 3), classes=10))
        assert sorted(report.mismatched) == ["8.bias", "8.weight"]
    xfreeze.replace_head(replaced, 5)
    assert _never_loaded_warnings(lambda: xfreeze.freeze(replaced, "*")) == []
    (message,) = _never_loaded_warnings(lambda: xfreeze.freeze(kept, "*"))
    assert "8.weight" in message and "8.bias" in message


def test_no_warning_without_a_load_or_after_a_complete_one(fw):
    fresh = build(fw)
    assert _never_loaded_warnings(lambda: xfreeze.freeze(fresh, "*")) == []
    model = build(fw)
    _partial_load(fw, model, reshape=["3.weight"])
    _partial_load(fw, model)  # a later, complete load replaces the record
    assert _never_loaded_warnings(lambda: xfreeze.freeze(model, "*")) == []


def test_the_load_record_keeps_neither_the_model_nor_its_tensors_alive(fw):
    from xfreeze.model import provenance

    model = build(fw)
    provenance.record_load(model, {"3.weight": _param(model, "3.weight")})
    assert list(provenance.untouched(model)) == ["3.weight"]
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


# --- two threads, one model --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_threads_freezing_and_unfreezing_one_model(fw):
    """Each call locks and releases norm statistics (forward pre-hooks): without the per-model lock, two threads
    release one norm's hook twice (KeyError) or change the hook dict another iterates. A fixed number of rounds,
    with the interpreter switching threads as often as it can; no timing."""
    model = fw.nn.Sequential(*[layer for _ in range(16) for layer in (fw.linear(4, 4), fw.batch_norm(4))])
    errors: list = []

    def work(patterns):
        try:
            for _ in range(500):
                if errors:  # another thread failed: the test has its answer
                    return
                xfreeze.freeze(model, *patterns)
                xfreeze.unfreeze(model, *patterns)
        except Exception as exc:  # any exception is the failure
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in (("*",), ("1", "3", "5"), ("type:norm",))]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in threads) and errors == []
    assert sorted(fw.trainable_names(model)) == sorted(xfreeze.select(model, "*"))  # every thread ended on unfreeze
    adapter = adapter_for(model)
    assert not any(adapter.is_norm_locked(m) for _, m in fw.norm_layers(model))
    xfreeze.freeze(model, "*")
    assert not fw.trainable_names(model)
    assert all(adapter.is_norm_locked(m) for _, m in fw.norm_layers(model))

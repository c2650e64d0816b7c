"""freeze / unfreeze: trainability, dropped gradients, locked norm statistics, reports."""

import copy
import pickle

import numpy as np
import pytest

import xfreeze
from xfreeze import XFreezeError
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

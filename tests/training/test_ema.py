"""EMA: frozen weights and locked statistics stay bitwise equal to the model's; only what trains is averaged."""

import numpy as np
import pytest

import xfreeze
from xfreeze import EMA, XFreezeError
from harness import BACKENDS, Spec, batch, kit, random_state

CNN = Spec("cnn", (4, 3))


def trained(fw, dtype="float32", steps=4, decay=0.9, warmup=False):
    model = fw.build(CNN, dtype)
    fw.load(model, random_state(CNN, dtype, 0))
    xfreeze.freeze(model, "0", "1")
    opt = xfreeze.optimizer(model, "sgd", lr=2**-5, momentum=0.875)
    ema = EMA(model, decay=decay, warmup=warmup)
    history = [fw.state(model)]
    for step in range(steps):
        model.train()
        x, y = batch(CNN, dtype, step)
        fw.train_step(model, opt, fw.tensor(x), fw.labels(y))
        ema.update()
        history.append(fw.state(model))
    return model, ema, history


def shadow(fw, ema):
    """The averaged weights in the harness's canonical layout (torch's), through EMA.copy_to."""
    import copy

    clone = copy.deepcopy(ema.model)
    ema.copy_to(clone)
    return fw.state(clone)


def test_frozen_parameters_and_locked_stats_equal_the_model_bitwise(fw):
    model, ema, history = trained(fw, steps=20, decay=0.999)
    s, final = shadow(fw, ema), history[-1]
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        assert np.array_equal(s[key], final[key]), key


def test_trainable_parameters_are_averaged(fw):
    model, ema, history = trained(fw, dtype="float64", decay=0.5)
    expected = history[0]["8.weight"]
    for state in history[1:]:
        expected = expected + 0.5 * (state["8.weight"] - expected)
    np.testing.assert_allclose(shadow(fw, ema)["8.weight"], expected, rtol=0, atol=1e-12)
    assert np.array_equal(shadow(fw, ema)["4.running_mean"], history[-1]["4.running_mean"]), "statistics are copied"


def test_naive_ema_drifts_where_xfreeze_does_not():
    """The seed articles' EMA, d * e + (1 - d) * m with e == m, is not always e in float32."""
    values = np.random.default_rng(0).normal(size=100_000).astype(np.float32)
    d = np.float32(0.999)
    naive = d * values + (np.float32(1) - d) * values
    assert not np.array_equal(naive, values)


def test_warmup(fw):
    model, ema, _ = trained(fw, decay=0.999, warmup=True, steps=1)
    assert ema.current_decay() == pytest.approx(2 / 11)


def test_copy_to_and_state_dict_round_trip(fw):
    model, ema, history = trained(fw)
    evaluation = fw.build(CNN)
    ema.copy_to(evaluation)
    assert all(np.array_equal(v, shadow(fw, ema)[k]) for k, v in fw.state(evaluation).items())
    state = ema.state_dict()
    fresh = EMA(model, decay=0.5)
    fresh.load_state_dict(state)
    assert fresh.num_updates == ema.num_updates and fresh.decay == ema.decay
    assert all(np.array_equal(v, shadow(fw, ema)[k]) for k, v in shadow(fw, fresh).items())


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, True, "0.9"])
def test_bad_decay(fw, decay):
    with pytest.raises(XFreezeError, match="decay must be a number in \\(0, 1\\)"):
        EMA(fw.build(CNN), decay=decay)


def test_copy_to_another_architecture_is_refused(fw):
    ema = EMA(fw.build(CNN))
    with pytest.raises(XFreezeError, match="not the same architecture"):
        ema.copy_to(fw.build(Spec("mlp", (4, 3))))


def test_ema_agrees_across_frameworks():
    shadows = [shadow(kit(b), trained(kit(b), dtype="float64", decay=0.75)[1]) for b in BACKENDS]
    for key in shadows[0]:
        if not key.endswith("running_var"):
            np.testing.assert_allclose(shadows[1][key], shadows[0][key], rtol=0, atol=1e-7, err_msg=key)


def test_the_ema_follows_a_model_cast_after_it_was_built(fw):
    """Lightning converts the module (precision="bf16-true") and moves it to the device after callbacks built
    their EMA; model.to(...) keeps the parameter objects, so only a layout probe can see it."""
    model = fw.build(CNN, "float32")
    fw.load(model, random_state(CNN, "float32", 0))
    xfreeze.freeze(model, "0", "1")
    ema = EMA(model, decay=0.5)
    assert fw.cast(model, "float64") is model  # cast in place: the EMA was built over these same parameters
    opt = xfreeze.optimizer(model, "sgd", lr=2**-5)
    before, before_stats = fw.state(model)["8.weight"], fw.state(model)["4.running_mean"]
    x, y = batch(CNN, "float64", 0)
    fw.train_step(model, opt, fw.tensor(x), fw.labels(y))
    ema.update()  # failed before: a float32 shadow lerped toward a float64 parameter
    after, s = fw.state(model), shadow(fw, ema)
    assert str(ema.shadow["8.weight"].dtype).endswith("float64")
    np.testing.assert_allclose(s["8.weight"], before + 0.5 * (after["8.weight"] - before), rtol=0, atol=1e-7)
    # statistics are copied from the model's current buffers (torch's .to() replaced them: a stale reference
    # would copy the old values of the trainable BatchNorm "4")
    for key in ("0.weight", "1.running_mean", "4.running_mean", "4.running_var"):
        assert np.array_equal(s[key], after[key]), key
    assert not np.array_equal(after["4.running_mean"], before_stats)  # the step moved them: the check can fail

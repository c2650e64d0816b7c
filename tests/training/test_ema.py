"""EMA: frozen weights and locked statistics stay bitwise equal to the model's; only what trains is averaged."""

import copy

import numpy as np
import pytest

import xfreeze
from xfreeze import EMA, XFreezeError
from xfreeze.core.dispatch import adapter_named
from xfreeze.core.tensors import Raw
from xfreeze.model.view import view_of
from harness import BACKENDS, Spec, batch, kit, random_state
from statehash import state_hash

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


# --- EMA cost = trainable bytes (issue 20) ---------------------------------------------------------------------------
NEW_OPTIMIZER = pytest.mark.filterwarnings("ignore:.*in no group of the model's optimizer")  # built after
FROZEN = ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var")  # after freeze("0", "1")
HELD = ("3.weight", "3.bias", "4.weight", "4.bias", "8.weight", "8.bias", "4.running_mean", "4.running_var")


def tensors_of(model) -> dict:
    """The model's own tensors by the EMA's names (parameters, then norm statistics)."""
    view = view_of(model)
    return dict(zip(list(view.names) + list(view.stat_names), list(view.params) + list(view.stat_tensors)))


def nbytes(fw, model, names) -> int:
    state = fw.state(model)
    return sum(state[n].nbytes for n in names)


def step(fw, model, ema, opt, seed, dtype="float32"):
    model.train()
    x, y = batch(CNN, dtype, seed)
    fw.train_step(model, opt, fw.tensor(x), fw.labels(y))
    ema.update()


def test_frozen_parameters_and_locked_statistics_hold_no_copy(fw):
    model, ema, _ = trained(fw, steps=3)
    own = tensors_of(model)
    for name in FROZEN:  # the shadow is the model's tensor: no second copy, nothing copied per update
        assert ema.shadow[name] is own[name], name
        assert fw.same_memory(ema.state_dict()["shadow"][name], own[name]), name
    for name in HELD:  # trainable parameters and the live statistics of norm "4" are the EMA's own
        assert not fw.same_memory(ema.shadow[name], own[name]), name
    assert ema.held_bytes == nbytes(fw, model, HELD) < nbytes(fw, model, HELD + FROZEN)


@NEW_OPTIMIZER
def test_a_tensor_made_trainable_gets_its_shadow_from_its_value_at_the_boundary(fw):
    model, ema, _ = trained(fw, dtype="float64", decay=0.5)
    xfreeze.unfreeze(model, "0", "1")
    ema.refresh()  # the boundary: "0" and "1" get shadows of their own, copies of their values now
    boundary = fw.state(model)
    assert ema.held_bytes == nbytes(fw, model, HELD + FROZEN)
    assert not fw.same_memory(ema.shadow["0.weight"], tensors_of(model)["0.weight"])
    step(fw, model, ema, xfreeze.optimizer(model, "sgd", lr=2**-5), 9, "float64")
    after, s = fw.state(model), shadow(fw, ema)
    assert not np.array_equal(after["0.weight"], boundary["0.weight"])  # the step moved it: the check can fail
    expected = boundary["0.weight"] + 0.5 * (after["0.weight"] - boundary["0.weight"])
    np.testing.assert_allclose(s["0.weight"], expected, rtol=0, atol=1e-12)
    assert np.array_equal(s["1.running_mean"], after["1.running_mean"]), "released statistics are copied again"


@NEW_OPTIMIZER
def test_without_refresh_the_next_update_starts_the_shadow_from_the_current_value(fw):
    model, ema, _ = trained(fw, dtype="float64", decay=0.5)
    xfreeze.unfreeze(model, "0")
    step(fw, model, ema, xfreeze.optimizer(model, "sgd", lr=2**-5), 9, "float64")
    own = tensors_of(model)
    assert not fw.same_memory(ema.shadow["0.weight"], own["0.weight"])
    assert np.array_equal(shadow(fw, ema)["0.weight"], fw.state(model)["0.weight"])


def test_a_tensor_frozen_again_shares_the_models_tensor_and_copy_to_keeps_it(fw):
    model, ema, _ = trained(fw)
    xfreeze.freeze(model, "*")
    before = fw.state(model)
    ema.copy_to()  # the averages were dropped at the freeze: nothing to write, the frozen model stays as it is
    assert ema.held_bytes == 0 and all(ema.shadow[n] is t for n, t in tensors_of(model).items())
    assert all(np.array_equal(v, before[k]) for k, v in fw.state(model).items())
    evaluation = fw.build(CNN)
    ema.copy_to(evaluation)  # another model gets every tensor, the frozen ones from the model
    assert all(np.array_equal(v, before[k]) for k, v in fw.state(evaluation).items())


@NEW_OPTIMIZER
@pytest.mark.parametrize("saved", [1, 3])  # before the boundary (step 2), and after it
def test_resume_across_an_unfreeze_is_bitwise(fw, saved):
    def run(model, ema, start, stop):
        for i in range(start, stop):
            if i == 2:
                xfreeze.unfreeze(model, "0", "1")
                ema.refresh()
            step(fw, model, ema, xfreeze.optimizer(model, "sgd", lr=2**-5), i)

    model, ema, _ = trained(fw, steps=0)
    run(model, ema, 0, saved)
    state, weights = copy.deepcopy(ema.state_dict()), fw.state(model)
    run(model, ema, saved, 5)
    again = fw.build(CNN)
    fw.load(again, weights)
    xfreeze.freeze(again, "0", "1")
    if saved > 2:
        xfreeze.unfreeze(again, "0", "1")
    resumed = EMA(again, decay=0.5)
    resumed.load_state_dict(state)
    run(again, resumed, saved, 5)
    expected, got = shadow(fw, ema), shadow(fw, resumed)
    assert all(np.array_equal(got[k], v) for k, v in expected.items())
    assert resumed.held_bytes == ema.held_bytes and resumed.num_updates == ema.num_updates == 5


def test_an_old_state_with_copies_of_frozen_tensors_loads(fw):
    """States saved before frozen shadows were shared hold a copy of every tensor, in the same format version."""
    model, ema, _ = trained(fw)
    old = {**ema.state_dict(), "shadow": {k: ema.adapter.clone(v) for k, v in ema.state_dict()["shadow"].items()}}
    assert old["version"] == 1 and old["shadow"].keys() == tensors_of(model).keys()
    again = fw.build(CNN)
    fw.load(again, fw.state(model))
    xfreeze.freeze(again, "0", "1")
    resumed, before = EMA(again, decay=0.5), state_hash(again)
    resumed.load_state_dict(old)
    assert state_hash(again) == before, "loading an average never writes the model"
    assert all(resumed.shadow[n] is t for n, t in tensors_of(again).items() if n in FROZEN)
    assert resumed.held_bytes == ema.held_bytes and resumed.num_updates == ema.num_updates
    assert all(np.array_equal(v, shadow(fw, ema)[k]) for k, v in shadow(fw, resumed).items())


# --- the adapters' EMA kernel at every rank and dtype (Paddle lerps each pair as flat views) -----------------------
LERP_SHAPES = [(), (0, 3), (7,), (5, 3), (4, 3, 3, 3), (2, 2, 3, 2, 2)]  # 0-D, empty, then ranks 1 to 5
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}


def native(adapter, array, dtype):
    return adapter.cast(adapter.from_raw(Raw(np.asarray(array, dtype="float32"), "float32")), dtype)


def wide(adapter, tensor):
    return adapter.to_raw(adapter.cast(tensor, "float64")).bits.copy()  # a copy: float64 bits may share memory


def assert_lerped(adapter, dtype, got, a, v, weight):
    """``got`` is a + (v - a) * w within a few roundings of its dtype (computed in float32 or wider, rounded once),
    in a's shape and dtype, and moved off ``a``."""
    assert adapter.tensor_dtype(got) == dtype and wide(adapter, got).shape == a.shape
    bound = 4 * UNIT_ROUNDOFF[dtype] * (np.abs(a) + np.abs(v))
    assert np.all(np.abs(wide(adapter, got) - (a + (v - a) * weight)) <= bound), a.shape
    assert a.size == 0 or not np.array_equal(wide(adapter, got), a), "the update moved: the check can fail"


@pytest.mark.parametrize("dtype", list(UNIT_ROUNDOFF))
def test_ema_update_is_the_lerp_at_every_rank_and_dtype(fw, dtype):
    """Each average becomes the lerp at every rank (0-D and empty included), and stays bit for bit itself where
    v == a."""
    adapter, rng, weight = adapter_named(fw.name), np.random.default_rng(7), 0.375
    averages, values, steady = ([native(adapter, rng.normal(size=s), dtype) for s in LERP_SHAPES] for _ in range(3))
    a, v = [wide(adapter, t) for t in averages], [wide(adapter, t) for t in values]
    kept = [adapter.to_raw(t).bits.copy() for t in steady]
    adapter.ema_update(averages + steady, values + [adapter.clone(t) for t in steady], weight)
    for got, a0, v0 in zip(averages, a, v):
        assert_lerped(adapter, dtype, got, a0, v0, weight)
    assert all(np.array_equal(adapter.to_raw(t).bits, k) for t, k in zip(steady, kept)), "v == a keeps a exactly"


def test_a_large_update_is_the_lerp_of_each_pair(fw):
    """A large update of mixed ranks and dtypes (a 0-D one among them; Paddle lerps flat views, bf16 through
    float32) lerps every average, and gives each the bits it gets when updated alone."""
    adapter, rng, weight = adapter_named(fw.name), np.random.default_rng(11), 0.125
    shapes = [(2048, 1024), (64, 64, 3, 3), (4096,), (), (300, 7, 5), (512, 1024), (1000,), (3, 3)]  # 2.7M elements
    dtypes = ["float32", "float64", "bfloat16", "float32", "float64", "bfloat16", "float32", "float64"]
    averages, values = ([native(adapter, rng.normal(size=s), d) for s, d in zip(shapes, dtypes)] for _ in range(2))
    a, v = [wide(adapter, t) for t in averages], [wide(adapter, t) for t in values]
    alone = [adapter.clone(t) for t in averages]
    adapter.ema_update(averages, values, weight)
    for average, value in zip(alone, values):
        adapter.ema_update([average], [value], weight)
    for dtype, got, expected, a0, v0 in zip(dtypes, averages, alone, a, v):
        assert_lerped(adapter, dtype, got, a0, v0, weight)
        assert np.array_equal(adapter.to_raw(got).bits, adapter.to_raw(expected).bits)

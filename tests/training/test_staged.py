"""StagedUnfreeze: boundaries, live optimizer growth, schedulers, batch sizes, bitwise resume."""

import numpy as np
import pytest

import xfreeze
from xfreeze import Stage, StagedUnfreeze, XFreezeError
from xfreeze.core.dispatch import adapter_for
from harness import Spec, batch, random_state
from statehash import state_hash

CNN = Spec("cnn", (4, 3))  # 0 conv, 1 bn, 3 conv, 4 bn, 8 linear
STAGES = [
    Stage(0, freeze=["*", "!8"], batch_size=8),
    Stage(2, unfreeze=["3", "4"], lr=2**-7),
    Stage(4, unfreeze=["*"], lr=2**-9, batch_size=4),
]


def setup(fw, name="sgd", schedule=None, dtype="float64", seed=0, stages=STAGES):
    model = fw.build(CNN, dtype)
    fw.load(model, random_state(CNN, dtype, seed))
    xfreeze.freeze(model, *stages[0].freeze)
    kwargs = {"momentum": 0.875, "weight_decay": 2**-6} if name == "sgd" else {"weight_decay": 2**-6}
    opt, sched = fw.xfreeze_optimizer(model, name, 2**-5, schedule, **kwargs)
    return model, opt, sched, StagedUnfreeze(model, opt, stages, scheduler=sched)


def epoch(fw, model, opt, sched, staged, e, dtype="float64"):
    staged.step(e)
    model.train()
    x, y = batch(CNN, dtype, 100 + e)
    fw.train_step(model, opt, fw.tensor(x), fw.labels(y))
    if sched is not None:
        sched.step()


def test_boundaries_grow_the_optimizer_with_the_stage_rate(fw):
    model, opt, sched, staged = setup(fw)
    adapter = adapter_for(model)
    assert staged.step(0) is STAGES[0] and staged.batch_size == 8
    assert adapter.group_lrs(opt) == pytest.approx([2**-5, 2**-5])  # head weight (decayed), head bias (not)
    staged.step(1)
    assert len(adapter.group_lrs(opt)) == 2
    staged.step(2)
    assert adapter.group_lrs(opt) == pytest.approx([2**-5, 2**-5, 2**-7, 2**-7])
    staged.step(5)
    assert staged.current is STAGES[2] and staged.batch_size == 4
    assert len(adapter.optimizer_param_ids(opt)) == 10


def test_parameters_already_training_keep_their_state(fw):
    model, opt, sched, staged = setup(fw, "adam")
    for e in range(2):
        epoch(fw, model, opt, sched, staged, e)
    head_state = {k: v for k, v in fw.optimizer_slots(opt, model).items() if k[0].startswith("8.")}
    assert head_state, "the head trained two steps: Adam holds state for it"
    staged.step(2)  # adds a group
    after = fw.optimizer_slots(opt, model)
    for key, value in head_state.items():
        assert np.array_equal(value, after[key]), key


def test_a_refrozen_parameter_stops_at_once(fw):
    stages = [Stage(0, freeze=["0"]), Stage(2, freeze=["8"])]
    model, opt, sched, staged = setup(fw, stages=stages)
    for e in range(2):
        epoch(fw, model, opt, sched, staged, e)
    staged.step(2)
    before = fw.state(model)["8.weight"]
    for e in range(2, 4):
        epoch(fw, model, opt, sched, staged, e)
    assert np.array_equal(before, fw.state(model)["8.weight"])


def test_new_groups_follow_the_lr_schedule(fw):
    model, opt, sched, staged = setup(fw, schedule=(2, 0.5))
    for e in range(5):
        epoch(fw, model, opt, sched, staged, e)
    # after 5 scheduler steps with step_size 2: factor 0.25; stage 2's group was added at factor 0.5
    lrs = adapter_for(model).group_lrs(opt)
    assert lrs[0] == pytest.approx(2**-5 * 0.25)
    assert lrs[2] == pytest.approx(2**-7 * 0.25)


@pytest.mark.parametrize("name, schedule", [("sgd", None), ("adam", (2, 0.5)), ("adamw", None)])
@pytest.mark.parametrize("stop", [1, 2, 3, 4])
def test_resume_after_any_epoch_is_bitwise_identical(fw, name, schedule, stop):
    epochs = 6
    model, opt, sched, staged = setup(fw, name, schedule)
    for e in range(epochs):
        if e == stop:
            saved_model, saved_staged = fw.state(model), staged.state_dict()
        epoch(fw, model, opt, sched, staged, e)
    uninterrupted = fw.state(model)

    model2, opt2, sched2, staged2 = setup(fw, name, schedule, seed=1)  # other weights, other Paddle auto names
    staged2.load_state_dict(saved_staged)
    fw.load(model2, saved_model)
    for e in range(stop, epochs):
        epoch(fw, model2, opt2, sched2, staged2, e)
    resumed = fw.state(model2)
    for key in uninterrupted:
        assert np.array_equal(uninterrupted[key], resumed[key]), key


@pytest.mark.parametrize(
    "stages, message",
    [
        (
            [Stage(2, freeze=["0"]), Stage(1, unfreeze=["0"])],
            r"stages are out of order: stages\[0\].at=2 and stages\[1\].at=1",
        ),
        ([Stage(1, freeze=["0"]), Stage(1, unfreeze=["0"])], r"stages overlap"),
        ([Stage(0, freeze=["layr4"])], r"Pattern 'layr4' matched no parameters"),
        ([Stage(-1, freeze=["0"])], r"stages\[0\].at must be an integer epoch >= 0"),
        ([Stage(0, freeze=["0"], batch_size=0)], r"batch_size must be an integer >= 1"),
        ([Stage(0, freeze=["0"], norm="bn")], r"Expected one of \('freeze', 'train'\)"),
        ([], r"at least one Stage"),
        ([{"at": 0}], r"stages\[0\] is a dict, expected xfreeze.Stage"),
    ],
)
def test_bad_stages_fail_at_construction(fw, stages, message):
    model = fw.build(CNN)
    opt = xfreeze.optimizer(model, "sgd", lr=0.1)
    before = xfreeze.summary(model, print_table=False).counts
    with pytest.raises(XFreezeError, match=message):
        StagedUnfreeze(model, opt, stages)
    assert xfreeze.summary(model, print_table=False).counts == before


def test_bad_unit_and_backwards_steps(fw):
    model = fw.build(CNN)
    opt = xfreeze.optimizer(model, "sgd", lr=0.1)
    with pytest.raises(XFreezeError, match=r"Expected one of \('epoch', 'step'\)"):
        StagedUnfreeze(model, opt, [Stage(0, freeze=["0"])], unit="batch")
    staged = StagedUnfreeze(model, opt, [Stage(0, freeze=["0"])], unit="step")
    staged.step(3)
    with pytest.raises(XFreezeError, match=r"steps must not go backwards"):
        staged.step(2)


def test_paddle_optimizer_built_by_hand_is_refused_with_the_fix():
    from harness import kit

    paddle_kit = kit("paddle")
    model = paddle_kit.build(CNN)
    opt = paddle_kit.p.optimizer.Momentum(learning_rate=0.1, parameters=model.parameters())
    with pytest.raises(XFreezeError, match=r"Build it with xfreeze.optimizer"):
        StagedUnfreeze(model, opt, [Stage(0, freeze=["0"])])


def test_torch_optimizer_built_by_hand_can_grow():
    from harness import kit

    torch_kit = kit("torch")
    model = torch_kit.build(CNN)
    xfreeze.freeze(model, "*", "!8")
    opt = torch_kit.t.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=1e-4)
    staged = StagedUnfreeze(model, opt, [Stage(0, freeze=["*", "!8"]), Stage(1, unfreeze=["3"], lr=0.01)])
    staged.step(1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01, 0.01]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 1e-4, 0.0]  # the new bias group: no decay


# --- issue 9 / 12: checked before anything changes; versioned state; a stage plan that must match ---------------


def _trainability(fw, model):
    from xfreeze.core.dispatch import adapter_for as _adapter

    adapter = _adapter(model)
    return {n: adapter.is_trainable(p) for n, p in model.named_parameters()}


def test_a_scheduler_that_is_not_one_fails_at_construction(fw):
    model = fw.build(CNN)
    opt = xfreeze.optimizer(model, "sgd", lr=0.1)
    before = _trainability(fw, model)
    with pytest.raises(XFreezeError, match=r"scheduler must be a learning-rate scheduler object.*'cosine'"):
        StagedUnfreeze(model, opt, STAGES, scheduler="cosine")
    assert _trainability(fw, model) == before


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: {k: v for k, v in s.items() if k != "applied"}, r"expected the dict StagedUnfreeze.state_dict"),
        (lambda s: {**s, "version": 99}, r"version 99 is not one this xfreeze reads"),
        (lambda s: {**s, "applied": 7}, r"state reached 7 stages, this StagedUnfreeze has 3"),
        (lambda s: {**s, "unit": "step"}, r"the state counts steps"),
        (lambda s: {**s, "plan": s["plan"][:2]}, r"different stage plan \(first difference at stages\[2\]"),
        (lambda s: {**s, "optimizer": "junk"}, r"the optimizer state does not fit"),
    ],
)
def test_a_bad_state_is_refused_before_the_optimizer_grows(fw, damage, message):
    model, opt, sched, staged = setup(fw, "adam")
    for e in range(3):
        epoch(fw, model, opt, sched, staged, e)
    saved = staged.state_dict()
    assert saved["version"] == 1 and saved["format"] == "xfreeze.StagedUnfreeze"
    model2, opt2, sched2, staged2 = setup(fw, "adam", seed=1)
    staged2.step(0)
    before, groups = _trainability(fw, model2), len(adapter_for(model2).group_lrs(opt2))
    with pytest.raises(XFreezeError, match=message):
        staged2.load_state_dict(damage(saved))
    assert _trainability(fw, model2) == before and len(adapter_for(model2).group_lrs(opt2)) == groups


def test_an_incomplete_torch_optimizer_state_is_refused_before_growing():
    from harness import kit

    torch_kit = kit("torch")
    model, opt, sched, staged = setup(torch_kit, "sgd")
    for e in range(3):
        epoch(torch_kit, model, opt, sched, staged, e)
    saved = staged.state_dict()
    saved["optimizer"]["param_groups"] = saved["optimizer"]["param_groups"][:2]  # stage 2's groups lost
    model2, opt2, sched2, staged2 = setup(torch_kit, "sgd", seed=1)
    staged2.step(0)
    before = _trainability(torch_kit, model2)
    with pytest.raises(XFreezeError, match=r"it holds 2 parameters, re-applying 2 stages gives 6"):
        staged2.load_state_dict(saved)
    assert _trainability(torch_kit, model2) == before and len(opt2.param_groups) == 2


def test_a_first_release_state_still_loads(fw):
    model, opt, sched, staged = setup(fw)
    for e in range(3):
        epoch(fw, model, opt, sched, staged, e)
    saved = {k: v for k, v in staged.state_dict().items() if k not in ("format", "version", "unit", "plan")}
    model2, opt2, sched2, staged2 = setup(fw, seed=1)
    staged2.load_state_dict(saved)
    assert staged2.applied == 2


def test_attach_after_stage_0_and_refuse_an_optimizer_built_before(fw):
    model = fw.build(CNN)
    staged = StagedUnfreeze(model, None, STAGES)
    early = xfreeze.optimizer(model, "sgd", lr=0.1)  # built before stage 0: holds everything
    staged.step(0)
    with pytest.raises(XFreezeError, match=r"holds 8 parameters that stage 0 froze.*built before the stage"):
        staged.attach(early)
    with pytest.raises(XFreezeError, match=r"attach\(optimizer\) first"):
        staged.step(2)
    staged.attach(xfreeze.optimizer(model, "sgd", lr=0.1))
    staged.step(2)
    assert len(adapter_for(model).optimizer_param_ids(staged.optimizer)) == 6


def test_new_groups_keep_the_optimizers_layer_decay_and_multipliers(fw):
    from harness import Spec as _Spec

    blocks = _Spec("blocks", (4, 5, 6, 3))  # 0.0, 1.0, 2.0 blocks, 3 head
    model = fw.build(blocks)
    xfreeze.freeze(model, "0", "1", "2")
    opt = xfreeze.optimizer(model, "sgd", lr=1.0, layer_decay=0.5, lr_mult={"3": 2})
    StagedUnfreeze(model, opt, [Stage(0, freeze=["0", "1", "2"]), Stage(1, unfreeze=["1", "2"], lr=0.25)]).step(1)
    assert sorted(set(adapter_for(model).group_lrs(opt))) == pytest.approx([0.0625, 0.125, 2.0])


def test_an_incomplete_paddle_optimizer_state_is_refused_before_growing():
    from harness import kit

    paddle_kit = kit("paddle")
    model, opt, sched, staged = setup(paddle_kit, "adam")
    for e in range(3):
        epoch(paddle_kit, model, opt, sched, staged, e)
    saved = staged.state_dict()
    saved["optimizer"] = {k: v for k, v in saved["optimizer"].items() if not k.startswith("3.weight|_moment2")}
    model2, opt2, sched2, staged2 = setup(paddle_kit, "adam", seed=1)
    staged2.step(0)
    before = _trainability(paddle_kit, model2)
    with pytest.raises(XFreezeError, match=r"some parameters lack accumulators that others have"):
        staged2.load_state_dict(saved)
    assert _trainability(paddle_kit, model2) == before


# --- issue 18: a stage's rate is honoured, or the call is refused ----------------------------------------------


@pytest.mark.parametrize("lr", [float("inf"), float("-inf"), float("nan"), 0, -1.0, "0.01", True, np.bool_(True)])
def test_a_stage_rate_that_is_no_rate_is_refused_when_the_stage_is_built(fw, lr):
    model = fw.build(CNN)
    xfreeze.freeze(model, "*", "!8")
    opt = xfreeze.optimizer(model, "sgd", lr=0.1)
    before = state_hash(model)
    with pytest.raises(XFreezeError, match=r"Stage\(at=2, unfreeze=\['3'\]\)\.lr must be a finite number > 0.*lr="):
        StagedUnfreeze(model, opt, [Stage(0, freeze=["*", "!8"]), Stage(2, unfreeze=["3"], lr=lr)])
    assert state_hash(model) == before


def test_a_stage_rate_changed_after_the_stage_was_built_is_refused_before_anything_changes(fw):
    model = fw.build(CNN)
    opt = xfreeze.optimizer(model, "sgd", lr=0.1)
    late = Stage(2, unfreeze=["3"], lr=0.01)
    object.__setattr__(late, "lr", float("inf"))  # past the dataclass's own check
    before = state_hash(model)
    with pytest.raises(XFreezeError, match=r"stages\[1\]\.lr must be a finite number > 0.*Received: lr=inf"):
        StagedUnfreeze(model, None, [Stage(0, freeze=["*", "!8"]), late])
    with pytest.raises(XFreezeError, match=r"stages\[1\]\.lr"):
        StagedUnfreeze(model, opt, [Stage(0, freeze=["*", "!8"]), late])
    assert state_hash(model) == before


@pytest.mark.parametrize("lr", [1, np.float32(0.25), np.float64(0.5), np.int64(1)])
def test_a_stage_rate_may_be_an_int_or_a_numpy_number(fw, lr):
    model = fw.build(CNN)
    xfreeze.freeze(model, "*", "!8")
    opt = xfreeze.optimizer(model, "sgd", lr=0.5)
    StagedUnfreeze(model, opt, [Stage(0, freeze=["*", "!8"]), Stage(1, unfreeze=["3"], lr=lr)]).step(1)
    assert adapter_for(model).group_lrs(opt)[-1] == pytest.approx(float(lr))
    assert xfreeze.check(model, opt).ok


def test_an_optimizer_holding_what_a_later_stage_unfreezes_at_its_own_rate_is_refused(fw):
    """xfreeze.optimizer built before stage 0's freeze holds every parameter: stage 1's parameters would train in
    their old group at 0.1, not at 0.01 (issue 18)."""
    model = fw.build(CNN)
    early = xfreeze.optimizer(model, "sgd", lr=0.1)
    stages = [Stage(0, freeze=["*", "!8"]), Stage(1, unfreeze=["3"], lr=0.01)]
    before = state_hash(model)
    with pytest.raises(
        XFreezeError,
        match=r"(?s)already holds 2 parameters of .* that stages\[1\] unfreezes \(3\.weight, 3\.bias\).*"
        r"at 0\.1 \(3\.weight\), not at 0\.01 \(stages\[1\]\.lr=0\.01\).*HINT: build the optimizer after",
    ):
        StagedUnfreeze(model, early, stages)
    assert state_hash(model) == before and len(adapter_for(model).group_lrs(early)) == 1
    xfreeze.freeze(model, *stages[0].freeze)  # the fix: build it after the first stage's freeze
    opt = xfreeze.optimizer(model, "sgd", lr=0.1)
    StagedUnfreeze(model, opt, stages).step(1)
    assert adapter_for(model).group_lrs(opt) == pytest.approx([0.1, 0.01])
    assert xfreeze.check(model, opt).ok


def test_an_optimizer_holding_what_a_stage_unfreezes_at_the_same_rate_is_accepted(fw):
    model = fw.build(CNN)
    opt = xfreeze.optimizer(model, "sgd", lr=0.1)  # everything, at the base rate a stage without lr gives
    staged = StagedUnfreeze(model, opt, [Stage(0, freeze=["*", "!8"]), Stage(1, unfreeze=["3"])])
    staged.step(1)
    assert len(adapter_for(model).group_lrs(opt)) == 1 and xfreeze.check(model, opt).ok


def test_a_parameter_that_trained_keeps_its_group_when_frozen_and_unfrozen_again(fw):
    model = fw.build(CNN)
    xfreeze.freeze(model, "*", "!8")
    opt = xfreeze.optimizer(model, "sgd", lr=0.1)
    stages = [Stage(0, freeze=["*", "!8"]), Stage(1, freeze=["8"]), Stage(2, unfreeze=["8", "3"], lr=0.01)]
    StagedUnfreeze(model, opt, stages).step(2)  # 8 trained at 0.1 until stage 1: not refused, back in its group
    rows = {r.name: r.lr for r in xfreeze.param_table(model, opt).rows}
    assert (rows["8.weight"], rows["3.weight"]) == pytest.approx((0.1, 0.01))
    assert xfreeze.check(model, opt).ok


def test_a_hand_built_torch_optimizer_over_every_parameter_is_refused_with_the_fix():
    """The issue's run: SGD(model.parameters(), lr=0.1) and a stage rate 0.01 for layer4; layer4 trained at 0.1."""
    from harness import kit

    torch_kit = kit("torch")
    model = torch_kit.zoo.resnet18(num_classes=4)
    opt = torch_kit.t.optim.SGD(model.parameters(), lr=0.1)
    stages = [Stage(0, freeze=["*", "!fc"]), Stage(2, unfreeze=["layer4"], lr=0.01)]
    before = state_hash(model)
    with pytest.raises(
        XFreezeError,
        match=r"(?s)SGD already holds 15 parameters of ResNet \(torch\) that stages\[1\] unfreezes.*not at 0\.01",
    ):
        StagedUnfreeze(model, opt, stages)
    assert state_hash(model) == before and len(opt.param_groups) == 1
    xfreeze.freeze(model, *stages[0].freeze)
    opt = torch_kit.t.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    staged = StagedUnfreeze(model, opt, stages)
    staged.step(2)
    rates = {r.name: r.lr for r in xfreeze.param_table(model, opt).rows}
    assert rates["layer4.0.conv1.weight"] == pytest.approx(0.01) and rates["fc.weight"] == pytest.approx(0.1)
    assert xfreeze.check(model, opt).ok

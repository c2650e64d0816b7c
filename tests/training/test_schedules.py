"""LR schedulers drive the groups a stage adds (pytorch #79888, #104361), in both frameworks.

The rule: a group a stage adds follows the schedule exactly as a group the optimizer had from the start would, with
the stage's rate as its nominal rate (the rate the user names: the optimizer's rate, OneCycleLR's peak, CyclicLR's
lower bound, Paddle LinearWarmup's rate after warm-up). The torch oracle is a hand-built optimizer holding both
groups from the start under the same schedule.
"""

import math

import pytest

import xfreeze
from xfreeze import Stage, StagedUnfreeze, XFreezeError
from xfreeze.core.dispatch import adapter_for

torch = pytest.importorskip("torch")
paddle = pytest.importorskip("paddle")
T = torch.optim.lr_scheduler
P = paddle.optimizer.lr

BASE, STAGE_LR, AT, EPOCHS = 0.2, 0.02, 3, 9  # BASE is not 0.1, PiecewiseDecay's placeholder base_lr
STAGES = [Stage(0, freeze=["0"]), Stage(AT, unfreeze=["0"], lr=STAGE_LR)]


def warm_cosine(e):
    return e / 3 if e < 3 else 0.5 * (1 + math.cos(math.pi * (e - 3) / 8))


# name -> (staged schedule over an optimizer whose groups are at their nominal rates, oracle schedule over an
# optimizer holding [head at BASE, body at STAGE_LR] from the start, whether it steps on a metric)
TORCH = {
    "StepLR": (lambda o: T.StepLR(o, 2, 0.5), None),
    "MultiStepLR": (lambda o: T.MultiStepLR(o, [1, 4, 6], 0.5), None),
    "ExponentialLR": (lambda o: T.ExponentialLR(o, 0.9), None),
    "CosineAnnealingLR(eta_min)": (lambda o: T.CosineAnnealingLR(o, 8, eta_min=1e-3), None),
    "LambdaLR": (lambda o: T.LambdaLR(o, warm_cosine), None),
    "MultiplicativeLR": (lambda o: T.MultiplicativeLR(o, lambda e: 0.9), None),
    "LinearLR": (lambda o: T.LinearLR(o, 0.25, 1.0, 5), None),
    "ConstantLR": (lambda o: T.ConstantLR(o, 0.5, 4), None),
    "PolynomialLR": (lambda o: T.PolynomialLR(o, 10, 2.0), None),
    "CosineAnnealingWarmRestarts": (lambda o: T.CosineAnnealingWarmRestarts(o, 4, eta_min=1e-3), None),
    "OneCycleLR": (
        lambda o: T.OneCycleLR(o, max_lr=BASE, total_steps=12),
        lambda o: T.OneCycleLR(o, max_lr=[BASE, STAGE_LR], total_steps=12),
    ),
    "CyclicLR": (
        lambda o: T.CyclicLR(o, BASE, 4 * BASE, step_size_up=2),
        lambda o: T.CyclicLR(o, [BASE, STAGE_LR], [4 * BASE, 4 * STAGE_LR], step_size_up=2),
    ),
    "SequentialLR": (
        lambda o: T.SequentialLR(o, [T.LinearLR(o, 0.25, 1.0, 2), T.CosineAnnealingLR(o, 6, 1e-3)], milestones=[2]),
        None,
    ),
    "SequentialLR(after the stage)": (
        lambda o: T.SequentialLR(o, [T.LinearLR(o, 0.25, 1.0, 5), T.ExponentialLR(o, 0.8)], milestones=[5]),
        None,
    ),
    "ChainedScheduler": (lambda o: T.ChainedScheduler([T.ExponentialLR(o, 0.9), T.StepLR(o, 2, 0.5)]), None),
    "ReduceLROnPlateau": (lambda o: T.ReduceLROnPlateau(o, patience=0, factor=0.5, min_lr=1e-4), None),
    "ReduceLROnPlateau(min_lr list)": (
        lambda o: T.ReduceLROnPlateau(o, patience=0, factor=0.5, min_lr=[3e-3]),
        lambda o: T.ReduceLROnPlateau(o, patience=0, factor=0.5, min_lr=[3e-3, 3e-3]),
    ),
}


def torch_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))


def step_schedule(scheduler, optimizer):
    optimizer.step()
    if isinstance(scheduler, T.ReduceLROnPlateau):
        scheduler.step(1.0)  # a flat metric: a reduction at every step after the first
    else:
        scheduler.step()


def staged_torch(make, momentum=0.9):
    model = torch_model()
    xfreeze.freeze(model, "0")
    opt = xfreeze.optimizer(model, "sgd", lr=BASE, momentum=momentum)
    scheduler = make(opt)
    return model, opt, scheduler, StagedUnfreeze(model, opt, STAGES, scheduler=scheduler)


def run_torch(opt, scheduler, staged, start=0, epochs=EPOCHS):
    seen = []
    for epoch in range(start, epochs):
        staged.step(epoch)
        seen.append([(g["lr"], g.get("momentum")) for g in opt.param_groups])
        step_schedule(scheduler, opt)
    return seen


@pytest.mark.parametrize("name", list(TORCH))
def test_a_torch_scheduler_drives_the_new_group_as_one_present_from_the_start(name):
    make, oracle = TORCH[name]
    _, opt, scheduler, staged = staged_torch(make)
    seen = run_torch(opt, scheduler, staged)

    reference = torch_model()
    ref_opt = torch.optim.SGD(
        [{"params": reference[1].parameters(), "lr": BASE}, {"params": reference[0].parameters(), "lr": STAGE_LR}],
        lr=BASE,
        momentum=0.9,
    )
    ref_scheduler = (oracle or make)(ref_opt)
    expected = []
    for _ in range(EPOCHS):
        expected.append([(g["lr"], g["momentum"]) for g in ref_opt.param_groups])
        step_schedule(ref_scheduler, ref_opt)

    for epoch in range(EPOCHS):
        head, *new = seen[epoch]
        assert head[0] == pytest.approx(expected[epoch][0][0], rel=1e-12), epoch
        if epoch >= AT:  # the groups the stage added (weight and bias share a rate) follow the body group
            assert len(new) >= 1, epoch
            for lr, momentum in new:
                assert lr == pytest.approx(expected[epoch][1][0], rel=1e-12), (epoch, lr)
                assert momentum == pytest.approx(expected[epoch][1][1], rel=1e-12), epoch  # cycled momentum too
    last = scheduler.get_last_lr()
    assert len(last) == len(opt.param_groups)  # what Lightning's LearningRateMonitor reads


@pytest.mark.parametrize("name", ["OneCycleLR", "SequentialLR", "ReduceLROnPlateau", "CyclicLR"])
def test_resume_after_the_boundary_continues_the_schedule_exactly(name):
    make, _ = TORCH[name]
    _, opt, scheduler, staged = staged_torch(make)
    whole = run_torch(opt, scheduler, staged)

    _, opt, scheduler, staged = staged_torch(make)
    run_torch(opt, scheduler, staged, epochs=AT + 2)
    saved = staged.state_dict()
    _, opt2, scheduler2, staged2 = staged_torch(make)
    staged2.load_state_dict(saved)
    assert run_torch(opt2, scheduler2, staged2, start=AT + 2) == whole[AT + 2 :]


def test_a_scheduler_of_another_optimizer_is_refused_before_anything_changes():
    model = torch_model()
    xfreeze.freeze(model, "0")
    opt = xfreeze.optimizer(model, "sgd", lr=BASE)
    other = T.StepLR(torch.optim.SGD(model[1].parameters(), lr=BASE), 2)
    with pytest.raises(XFreezeError, match=r"StepLR drives another optimizer.*\n.*HINT"):
        StagedUnfreeze(model, opt, STAGES, scheduler=other)
    staged = StagedUnfreeze(model, None, STAGES)
    with pytest.raises(XFreezeError, match="drives another optimizer"):
        staged.attach(opt, other)
    assert staged.optimizer is None


def test_attach_scheduler_after_a_stage_grew_the_optimizer_is_refused():
    model = torch_model()
    xfreeze.freeze(model, "0")
    opt = xfreeze.optimizer(model, "sgd", lr=BASE)
    staged = StagedUnfreeze(model, opt, STAGES)
    staged.step(AT)
    with pytest.raises(XFreezeError, match="after a stage grew the optimizer"):
        staged.attach_scheduler(T.StepLR(opt, 2))
    assert staged.scheduler is None


# --- Paddle: one global schedule; stage rates mean the same as in torch ---------------------------------------------

# (torch schedule over an optimizer at BASE, Paddle schedule whose nominal rate is BASE)
PAIRS = {
    "step": (lambda o: T.StepLR(o, 2, 0.5), lambda: P.StepDecay(BASE, 2, 0.5)),
    "multistep": (lambda o: T.MultiStepLR(o, [1, 4, 6], 0.5), lambda: P.MultiStepDecay(BASE, [1, 4, 6], 0.5)),
    "exponential": (lambda o: T.ExponentialLR(o, 0.9), lambda: P.ExponentialDecay(BASE, 0.9)),
    "cosine": (lambda o: T.CosineAnnealingLR(o, 8), lambda: P.CosineAnnealingDecay(BASE, 8)),
    "lambda": (lambda o: T.LambdaLR(o, warm_cosine), lambda: P.LambdaDecay(BASE, warm_cosine)),
    "warmup+cosine": (
        lambda o: T.LambdaLR(o, warm_cosine),
        lambda: P.LinearWarmup(P.CosineAnnealingDecay(BASE, 8), 3, 0.0, BASE),  # base_lr 0: its start
    ),
    "piecewise": (
        lambda o: T.MultiStepLR(o, [2, 4], 0.1),
        lambda: P.PiecewiseDecay([2, 4], [BASE, BASE / 10, BASE / 100]),
    ),
    "onecycle": (
        lambda o: T.OneCycleLR(o, max_lr=BASE, total_steps=12, final_div_factor=BASE / 25 / 1e-4),
        lambda: P.OneCycleLR(BASE, 12, end_learning_rate=1e-4),
    ),
    "cyclic": (
        lambda o: T.CyclicLR(o, BASE, 4 * BASE, step_size_up=2, cycle_momentum=False),
        lambda: P.CyclicLR(BASE, 4 * BASE, step_size_up=2),
    ),
}


def rates(model, opt):
    return adapter_for(model).group_lrs(opt)


@pytest.mark.parametrize("name", list(PAIRS))
def test_torch_and_paddle_give_the_new_group_the_same_rates(name):
    make_torch, make_paddle = PAIRS[name]
    _, opt, scheduler, staged = staged_torch(make_torch, momentum=0.0)
    torch_rates = []
    for epoch in range(EPOCHS):
        staged.step(epoch)
        torch_rates.append([g["lr"] for g in opt.param_groups])
        step_schedule(scheduler, opt)

    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Linear(3, 3), paddle.nn.Linear(3, 2))
    xfreeze.freeze(net, "0")
    schedule = make_paddle()
    popt = xfreeze.optimizer(net, "sgd", lr=schedule)
    pstaged = StagedUnfreeze(net, popt, STAGES, scheduler=schedule)
    paddle_rates = []
    for epoch in range(EPOCHS):
        pstaged.step(epoch)
        paddle_rates.append(rates(net, popt))
        schedule.step()

    for epoch, (t, p) in enumerate(zip(torch_rates, paddle_rates)):
        assert len(t) == len(p), epoch
        assert p == pytest.approx(t, rel=1e-9, abs=1e-15), epoch
    after = paddle_rates[AT + 1]
    assert len(after) == 2 and after[1] == pytest.approx(after[0] * STAGE_LR / BASE, rel=1e-9)


def test_paddle_warmup_from_zero_is_accepted_and_its_nominal_rate_is_the_end_of_warmup():
    net = paddle.nn.Sequential(paddle.nn.Linear(3, 3), paddle.nn.Linear(3, 2))
    schedule = P.LinearWarmup(BASE, 3, 0.0, BASE)
    opt = xfreeze.optimizer(net, "adamw", lr=schedule, lr_mult={"1": 10})
    assert sorted(set(rates(net, opt))) == [0.0]  # warm-up starts at 0 for every group
    for _ in range(3):
        schedule.step()
    assert sorted(rates(net, opt)) == pytest.approx([BASE, 10 * BASE])  # the head at 10x


def test_a_paddle_schedule_that_is_not_the_optimizers_is_refused():
    net = paddle.nn.Sequential(paddle.nn.Linear(3, 3), paddle.nn.Linear(3, 2))
    xfreeze.freeze(net, "0")
    opt = xfreeze.optimizer(net, "sgd", lr=BASE)
    with pytest.raises(XFreezeError, match="not the optimizer's learning rate"):
        StagedUnfreeze(net, opt, STAGES, scheduler=P.StepDecay(BASE, 2))

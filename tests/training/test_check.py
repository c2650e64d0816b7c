"""The guard: xfreeze.check, the unfreeze warning, and the per-parameter table (param_table, summary, plan)."""

import warnings

import pytest

import xfreeze
from xfreeze import Stage, StagedUnfreeze, XFreezeError
from xfreeze.cli import main
from harness import Spec, batch

CNN = Spec("cnn", (4, 3))  # 0 conv, 1 bn, 3 conv, 4 bn, 8 linear
BLOCKS = Spec("blocks", (4, 5, 6, 3))  # 0.0, 1.0, 2.0 blocks, 3 head


def test_a_parameter_unfrozen_after_the_optimizer_is_reported_and_warned(fw):
    model = fw.build(CNN)
    xfreeze.freeze(model, "*", "!8")
    opt = xfreeze.optimizer(model, "sgd", lr=0.1)
    assert xfreeze.check(model, opt).ok
    with pytest.warns(UserWarning, match=r"(?s)2 parameters were made trainable but are in no group.*HINT: "):
        xfreeze.unfreeze(model, "0")
    report = xfreeze.check(model, opt)
    assert report.untrained == ["0.weight", "0.bias"] and not report.ok
    assert "trainable, in no optimizer group" in str(report) and "HINT:" in str(report)


def test_no_warning_without_a_known_optimizer_or_when_staged_unfreeze_grows_it(fw):
    model = fw.build(CNN)
    xfreeze.freeze(model, "*", "!8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xfreeze.unfreeze(model, "0")  # no live optimizer known: nothing to say
        opt = xfreeze.optimizer(model, "adam", lr=0.1)
        staged = StagedUnfreeze(model, opt, [Stage(0, freeze=["3", "4"]), Stage(1, unfreeze=["3", "4"])])
        staged.step(0)
        staged.step(1)
    assert xfreeze.check(model, opt).ok


def test_frozen_parameters_holding_optimizer_state(fw):
    model = fw.build(CNN)
    opt = xfreeze.optimizer(model, "sgd", lr=0.1, momentum=0.5)
    x, y = batch(CNN, "float32", 0)
    fw.train_step(model, opt, fw.tensor(x), fw.labels(y))
    xfreeze.freeze(model, "0")
    report = xfreeze.check(model, opt)
    assert report.stale_state == ["0.weight", "0.bias"] and report.frozen_in_groups == ["0.weight", "0.bias"]
    assert "frozen, holding optimizer state" in str(report)


def test_param_table_shows_layer_decay_rates_and_decay(fw):
    model = fw.build(BLOCKS)
    xfreeze.freeze(model, "0")
    opt = xfreeze.optimizer(model, "adamw", lr=1.0, weight_decay=2**-6, layer_decay=0.5)
    table = xfreeze.param_table(model, opt)
    rows = {r.name: r for r in table.rows}
    assert rows["0.0.weight"].group is None and not rows["0.0.weight"].trainable
    assert [rows[n].lr for n in ("1.0.weight", "2.0.weight", "3.weight")] == pytest.approx([0.25, 0.5, 1.0])
    assert rows["3.weight"].weight_decay == pytest.approx(2**-6) and rows["3.bias"].weight_decay == 0.0
    text = str(xfreeze.summary(model, optimizer=opt, print_table=False))
    assert "xfreeze.param_table" in text and "1.0.weight" in text


def test_param_table_reads_the_live_rates_of_a_grown_optimizer(fw):
    model = fw.build(CNN)
    xfreeze.freeze(model, "*", "!8")
    opt = xfreeze.optimizer(model, "sgd", lr=0.5)
    StagedUnfreeze(model, opt, [Stage(0, freeze=["*", "!8"]), Stage(1, unfreeze=["3"], lr=0.125)]).step(1)
    rows = {r.name: r for r in xfreeze.param_table(model, opt).rows}
    assert (rows["8.weight"].lr, rows["3.weight"].lr) == pytest.approx((0.5, 0.125))
    assert rows["3.weight"].group > rows["8.weight"].group


def test_not_an_optimizer(fw):
    with pytest.raises(XFreezeError, match=r"optimizer must be an optimizer of the model's framework"):
        xfreeze.check(fw.build(CNN), [1, 2])


def test_plan_prints_the_param_table(capsys):
    code = main(
        [
            "plan",
            "resnet18",
            "--freeze",
            "*",
            "!layer4",
            "!fc",
            "--optimizer",
            "adamw",
            "--params",
            "--lr",
            "0.01",
            "--layer-decay",
            "0.5",
            "--weight-decay",
            "0.0001",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "xfreeze.param_table: ResNet" in out
    fc = next(line for line in out.splitlines() if " fc.weight " in line)
    l4 = next(line for line in out.splitlines() if " layer4.0.conv1.weight " in line)
    assert "0.01" in fc and "0.005" in l4


def test_importing_the_integrations_imports_no_framework():
    import subprocess
    import sys

    code = (
        "import sys, xfreeze, xfreeze.integrations; "
        "print(sorted(m for m in ('torch', 'paddle', 'pytorch_lightning', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- issue 18: rates that differ from the plan -------------------------------------------------------------------


def test_a_stage_parameter_left_in_an_old_group_is_reported_with_both_rates(fw):
    """A parameter frozen by hand after StagedUnfreeze was built, then unfrozen by a stage with its own rate, stays
    in the group the optimizer had: check names it, its rate and the stage's."""
    model = fw.build(CNN)
    opt = xfreeze.optimizer(model, "sgd", lr=0.5)
    staged = StagedUnfreeze(model, opt, [Stage(0), Stage(1, unfreeze=["3"], lr=0.125)])
    xfreeze.freeze(model, "3")  # by hand, after the stages were checked
    staged.step(1)
    report = xfreeze.check(model, opt)
    assert [(d.name, d.lr, d.planned, d.source) for d in report.off_plan] == [
        ("3.weight", 0.5, 0.125, "stages[1].lr"),
        ("3.bias", 0.5, 0.125, "stages[1].lr"),
    ]
    assert not report.ok and report.untrained == []
    text = str(report)
    assert "at another rate than planned" in text and "3.weight at 0.5, planned 0.125 (stages[1].lr)" in text
    assert "HINT: a parameter in a group built before its stage keeps that group's rate" in text


def test_a_group_rate_changed_by_hand_is_reported_and_a_common_factor_is_not(fw):
    model = fw.build(CNN)
    opt = xfreeze.optimizer(model, "sgd", lr=0.5, lr_mult={"8": 4})  # group 0: the rest at 0.5, group 1: 8 at 2
    for index in (0, 1):
        fw.scale_group_lr(opt, index, 0.5)  # what a schedule does: every group alike
    assert xfreeze.check(model, opt).ok
    fw.scale_group_lr(opt, 1, 0.25)  # the head's x4 is lost
    report = xfreeze.check(model, opt)
    assert [(d.name, d.lr, d.planned, d.source) for d in report.off_plan] == [
        ("8.weight", 0.25, 1.0, "xfreeze.optimizer"),
        ("8.bias", 0.25, 1.0, "xfreeze.optimizer"),
    ]


def test_stage_groups_under_a_schedule_are_in_plan(fw):
    model = fw.build(CNN)
    xfreeze.freeze(model, "*", "!8")
    opt, sched = fw.xfreeze_optimizer(model, "sgd", 0.5, (1, 0.5), lr_mult={"8": 2})
    stages = [Stage(0, freeze=["*", "!8"]), Stage(2, unfreeze=["3"], lr=0.125)]
    staged = StagedUnfreeze(model, opt, stages, scheduler=sched)
    for epoch in range(4):
        staged.step(epoch)
        x, y = batch(CNN, "float32", epoch)
        fw.train_step(model, opt, fw.tensor(x), fw.labels(y))
        sched.step()
    assert xfreeze.check(model, opt).ok


def test_a_torch_one_cycle_schedule_that_flattens_the_group_rates_is_reported():
    """OneCycleLR(max_lr=0.1) gives every group the same peak: the head's x10 from lr_mult is gone."""
    from harness import kit

    torch_kit = kit("torch")
    model = torch_kit.build(CNN)
    opt = xfreeze.optimizer(model, "adamw", lr=0.01, lr_mult={"8": 10})
    torch_kit.t.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    assert {d.name for d in xfreeze.check(model, opt).off_plan} == {"8.weight", "8.bias"}
    fixed = xfreeze.optimizer(model, "adamw", lr=0.01, lr_mult={"8": 10})
    torch_kit.t.optim.lr_scheduler.OneCycleLR(fixed, max_lr=[g["lr"] for g in fixed.param_groups], total_steps=10)
    assert xfreeze.check(model, fixed).ok


def test_a_torch_one_cycle_schedule_grown_by_stages_is_in_plan():
    from harness import kit

    torch_kit = kit("torch")
    model = torch_kit.build(CNN)
    xfreeze.freeze(model, "*", "!8")
    opt = xfreeze.optimizer(model, "sgd", lr=0.1)
    sched = torch_kit.t.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    staged = StagedUnfreeze(
        model, opt, [Stage(0, freeze=["*", "!8"]), Stage(2, unfreeze=["3"], lr=0.01)], scheduler=sched
    )
    for step in range(4):
        staged.step(step)
        opt.step()
        sched.step()
    assert xfreeze.check(model, opt).ok

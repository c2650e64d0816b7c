"""xfreeze.optimizer with any optimizer class or factory, and the checks of its arguments (issue 9)."""

import functools

import numpy as np
import pytest

import xfreeze
from xfreeze import Stage, StagedUnfreeze, XFreezeError
from xfreeze.core.dispatch import adapter_for
from harness import Spec, batch, random_state

CNN = Spec("cnn", (4, 3))  # 0 conv, 1 bn, 3 conv, 4 bn, 8 linear


def model_pair(fw):
    a, b = fw.build(CNN, "float32"), fw.build(CNN, "float32")
    state = random_state(CNN, "float32", 0)
    fw.load(a, state)
    fw.load(b, state)
    return a, b


@pytest.mark.parametrize("index", [0, 1, 2])
def test_any_optimizer_class_keeps_absolute_group_rates(fw, index):
    """One xfreeze optimizer with a x4 head group steps exactly like two hand-built optimizers at the two rates."""
    cls = fw.optimizer_classes()[index]
    a, b = model_pair(fw)
    opt = xfreeze.optimizer(a, cls, lr=2**-4, lr_mult={"8": 4})
    assert sorted(set(adapter_for(a).group_lrs(opt))) == pytest.approx([2**-4, 2**-2])
    head = [p for n, p in b.named_parameters() if n.startswith("8.")]
    rest = [p for n, p in b.named_parameters() if not n.startswith("8.") and adapter_for(b).is_trainable(p)]
    hand = [fw.hand_optimizer(cls, head, 2**-2), fw.hand_optimizer(cls, rest, 2**-4)]
    for step in range(2):
        x, y = batch(CNN, "float32", step)
        fw.train_step(a, opt, fw.tensor(x), fw.labels(y))
        fw.train_steps(b, hand, fw.tensor(x), fw.labels(y))  # one backward, two optimizers
    sa, sb = fw.state(a), fw.state(b)
    for key in sa:
        np.testing.assert_allclose(sa[key], sb[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_a_class_built_optimizer_grows_at_a_stage(fw):
    cls = fw.optimizer_classes()[0]
    model = fw.build(CNN)
    xfreeze.freeze(model, "*", "!8")
    opt = xfreeze.optimizer(model, cls, lr=2**-4)
    staged = StagedUnfreeze(model, opt, [Stage(0, freeze=["*", "!8"]), Stage(1, unfreeze=["3"], lr=2**-6)])
    staged.step(1)
    assert adapter_for(model).group_lrs(opt) == pytest.approx([2**-4, 2**-6])


def test_a_factory_and_class_options(fw):
    model = fw.build(CNN)
    cls = fw.optimizer_classes()[0]
    opt = xfreeze.optimizer(model, functools.partial(cls, **{fw.eps_option: 1e-5}), lr=0.1)
    assert len(adapter_for(model).optimizer_param_ids(opt)) == 10


@pytest.mark.parametrize("case", ["lbfgs", "rprop_decay"])
def test_torch_optimizers_without_group_semantics_are_refused(case):
    from harness import kit

    torch_kit = kit("torch")
    model = torch_kit.build(CNN)
    if case == "lbfgs":
        with pytest.raises(XFreezeError, match=r"LBFGS cannot be built over xfreeze's parameter groups"):
            xfreeze.optimizer(model, torch_kit.t.optim.LBFGS, lr=0.1, lr_mult={"8": 10})
    else:
        with pytest.raises(XFreezeError, match=r"Rprop has no per-group weight decay"):
            xfreeze.optimizer(model, torch_kit.t.optim.Rprop, lr=0.1, weight_decay=0.01)


def test_paddle_lamb_with_group_decay_is_refused():
    from harness import kit

    paddle_kit = kit("paddle")
    model = paddle_kit.build(CNN)
    with pytest.raises(XFreezeError, match=r"Lamb has no per-group weight_decay"):
        xfreeze.optimizer(model, paddle_kit.p.optimizer.Lamb, lr=0.1, weight_decay=0.01)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": float("inf")}, r"lr must be a finite number"),
        ({"lr": float("nan")}, r"lr must be a finite number"),
        ({"lr": 0.1, "weight_decay": float("nan")}, r"weight_decay must be a finite number"),
        ({"lr": 0.1, "momentum": 5}, r"momentum must be in \[0, 1\)"),
        ({"lr": 0.1, "betas": (0.9, 0.99)}, r"betas= is not an option of name='sgd' \(it takes momentum, nesterov\)"),
        ({"lr": 0.1, "nesterov": True}, r"nesterov=True needs momentum > 0"),
        ({"lr": 0.1, "lr_mult": ["8", 10]}, r"lr_mult must be a dict"),
        ({"lr": 0.1, "nesterov": "yes"}, r"nesterov must be a bool"),
        ({"lr": 0.1, "layer_decay": float("inf")}, r"layer_decay must be a finite number"),
        ({"lr": 0.1, "alpha": 0.9}, r"unexpected options \['alpha'\] for name='sgd'"),
        ({"lr": 0.1, "no_decay": 5}, r"no_decay must be a pattern or a list of patterns"),
    ],
)
def test_bad_numbers_and_types_name_the_argument(fw, kwargs, message):
    model = fw.build(CNN)
    before = fw.state(model)
    with pytest.raises(XFreezeError, match=message):
        xfreeze.optimizer(model, "sgd", **kwargs)
    assert all(np.array_equal(v, fw.state(model)[k]) for k, v in before.items())


def test_not_an_optimizer(fw):
    with pytest.raises(XFreezeError, match=r"name must be one of .* or an optimizer class/factory. Received: 42"):
        xfreeze.optimizer(fw.build(CNN), 42, lr=0.1)


def test_one_no_decay_pattern_as_a_string_carries_to_stage_groups(fw):
    model = fw.build(CNN)
    xfreeze.freeze(model, "*", "!8")
    opt = xfreeze.optimizer(model, "sgd", lr=0.1, weight_decay=0.01, no_decay="*.bias")
    StagedUnfreeze(model, opt, [Stage(0, freeze=["*", "!8"]), Stage(1, unfreeze=["3"])]).step(1)
    rows = {r.name: r for r in xfreeze.param_table(model, opt).rows}
    assert (rows["3.weight"].weight_decay, rows["3.bias"].weight_decay) == pytest.approx((0.01, 0.0))


@pytest.mark.parametrize("given", ["class", "partial", "explicit"])
def test_a_class_keeps_its_own_default_weight_decay(fw, given):
    """torch.optim.AdamW / paddle.optimizer.AdamW decay by 0.01 unless told: passing the class keeps that meaning
    (norms and biases still go to the no-decay group); a partial's value or an explicit one wins."""
    cls = fw.optim.AdamW
    factory, kwargs, expected = {
        "class": (cls, {}, 0.01),
        "partial": (functools.partial(cls, weight_decay=0.05), {}, 0.05),
        "explicit": (cls, {"weight_decay": 0.0}, 0.0),
    }[given]
    model = fw.build(CNN)
    opt = xfreeze.optimizer(model, factory, lr=0.1, **kwargs)
    rows = {r.name: r for r in xfreeze.param_table(model, opt).rows}
    assert rows["0.weight"].weight_decay == pytest.approx(expected)
    assert (rows["0.bias"].weight_decay, rows["1.weight"].weight_decay) == (0.0, 0.0)
    assert xfreeze.optimizer(model, "adamw", lr=0.1)._xfreeze_config.weight_decay == 0.0  # xfreeze's own names: 0


@pytest.mark.parametrize("name", ["Lamb", "Lion", "Adan", "MADGRAD", "AdamP", "Adafactor"])
def test_third_party_torch_optimizers_keep_absolute_group_rates(name):
    """timm's optimizers (Lamb clips by the norm over every group, so the oracle is one grouped optimizer built by
    hand, not one per rate) and transformers' Adafactor with absolute steps."""
    from harness import kit

    torch_kit = kit("torch")
    if name == "Adafactor":
        transformers = pytest.importorskip("transformers")
        cls = functools.partial(transformers.Adafactor, scale_parameter=False, relative_step=False)
    else:
        cls = getattr(pytest.importorskip("timm.optim"), name)
    a, b = model_pair(torch_kit)
    opt = xfreeze.optimizer(a, cls, lr=2**-6, lr_mult={"8": 4}, no_decay=None)
    head = [p for n, p in b.named_parameters() if n.startswith("8.")]
    rest = [p for n, p in b.named_parameters() if not n.startswith("8.")]
    hand = cls([{"params": rest, "lr": 2**-6}, {"params": head, "lr": 2**-4}], lr=2**-6)
    for step in range(2):
        x, y = batch(CNN, "float32", step)
        torch_kit.train_step(a, opt, torch_kit.tensor(x), torch_kit.labels(y))
        torch_kit.train_steps(b, [hand], torch_kit.tensor(x), torch_kit.labels(y))
    sa, sb = torch_kit.state(a), torch_kit.state(b)
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


def test_adafactor_with_relative_steps_is_refused_with_the_reason():
    transformers = pytest.importorskip("transformers")
    from harness import kit

    with pytest.raises(XFreezeError, match=r"Adafactor cannot be built over xfreeze's parameter groups.*relative_step"):
        xfreeze.optimizer(kit("torch").build(CNN), transformers.Adafactor, lr=0.1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"betas": (0.9,)}, r"betas must be two numbers in \[0, 1\)"),
        ({"eps": -1.0}, r"eps must be >= 0.0"),
        ({"momentum": 0.9}, r"momentum= is not an option of name='adam' \(it takes betas, eps\)"),
    ],
)
def test_name_options_are_checked_and_foreign_ones_refused(fw, kwargs, message):
    with pytest.raises(XFreezeError, match=message):
        xfreeze.optimizer(fw.build(CNN), "adam", lr=0.1, **kwargs)


def test_options_given_with_a_class_are_passed_to_it(fw):
    """momentum / nesterov / betas / eps with a class are the class's own options (they were silently dropped);
    Paddle's classes get them in their own spelling (use_nesterov, beta1 / beta2, epsilon)."""
    model = fw.build(CNN)
    sgd = xfreeze.optimizer(model, fw.sgd_momentum, lr=0.1, momentum=0.9, nesterov=True)
    assert fw.group_options(sgd, "momentum", "nesterov") == {(0.9, True)}
    adam = xfreeze.optimizer(model, fw.optim.Adam, lr=0.1, betas=(0.5, 0.75), eps=1e-3)
    assert fw.group_options(adam, "betas", "eps") == {((0.5, 0.75), 1e-3)}


def test_paddle_betas_are_checked_before_they_are_spelled_beta1_beta2():
    from harness import kit

    paddle_kit = kit("paddle")
    with pytest.raises(XFreezeError, match=r"betas must be two numbers. Received: betas=0.5"):
        xfreeze.optimizer(paddle_kit.build(CNN), paddle_kit.optim.Adam, lr=0.1, betas=0.5)

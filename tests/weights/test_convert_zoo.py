"""Every torchvision classifier with a paddle.vision twin converts both ways with every key placed and equal eval
outputs (float32, <= 1e-5 of the output magnitude); where the architectures differ, the message says what differs."""

import gc

import numpy as np
import pytest

import xfreeze

# torchvision name -> (paddle.vision builder, keyword arguments, input size)
ZOO = {
    **{
        n: (n, {}, 64)
        for n in (
            "resnet18",
            "resnet34",
            "resnet50",
            "resnet101",
            "resnet152",
            "resnext50_32x4d",
            "resnext101_64x4d",
            "wide_resnet50_2",
            "wide_resnet101_2",
            "mobilenet_v2",
            "mobilenet_v3_small",
            "mobilenet_v3_large",
            "densenet121",
            "densenet161",
            "densenet169",
            "densenet201",
            "shufflenet_v2_x0_5",
            "shufflenet_v2_x1_0",
            "shufflenet_v2_x1_5",
        )
    },
    **{n: (n, {}, 64) for n in ("vgg11", "vgg13", "vgg16", "vgg19")},
    **{f"{n}_bn": (n, {"batch_norm": True}, 64) for n in ("vgg11", "vgg13", "vgg16", "vgg19")},
    "alexnet": ("alexnet", {}, 224),  # paddle.vision AlexNet has no adaptive pool: 224 only
    "squeezenet1_0": ("squeezenet1_0", {}, 227),  # ceil_mode pooling in torchvision: equal where maps are odd
    "inception_v3": ("inception_v3", {}, 299),
}
DEFAULT = [
    ("alexnet", "paddle"),
    ("squeezenet1_0", "torch"),
    ("densenet121", "paddle"),
    ("shufflenet_v2_x0_5", "torch"),
    ("mobilenet_v3_small", "paddle"),
    ("mobilenet_v3_small", "torch"),
]


def build_pair(name):
    import paddle
    import paddle.vision.models as pv
    import torch
    import torchvision

    torch.manual_seed(0)
    paddle.seed(0)
    builder, kwargs, size = ZOO[name]
    extra = {"aux_logits": False, "init_weights": False} if name == "inception_v3" else {}
    t = torchvision.models.get_model(name, num_classes=10, **extra).eval()
    p = getattr(pv, builder)(num_classes=10, **kwargs)
    p.eval()
    with torch.no_grad():  # statistics away from 0 / 1, so a misplaced or unadjusted one shows
        for m in t.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    for layer in p.sublayers():
        if isinstance(layer, paddle.nn.layer.norm._BatchNormBase):
            layer._mean.set_value(paddle.uniform(layer._mean.shape, min=-0.5, max=0.5))
            layer._variance.set_value(paddle.uniform(layer._variance.shape, min=0.5, max=1.5))
    return t, p, size


def measure(name, to):
    """(load report, max |torch - paddle| / max |torch|) after converting into the ``to`` model."""
    import paddle
    import torch

    t, p, size = build_pair(name)
    report = xfreeze.load_matched(p, t.state_dict()) if to == "paddle" else xfreeze.load_matched(t, p.state_dict())
    x = np.random.RandomState(0).randn(2, 3, size, size).astype("float32")
    with torch.no_grad():
        a = t(torch.from_numpy(x)).numpy()
    b = p(paddle.to_tensor(x)).numpy()
    del t, p
    gc.collect()
    return report, float(np.abs(a - b).max() / np.abs(a).max())


def _check(name, to):
    if name == "squeezenet1_0":  # equal at 227x227, and the load says where it would not be
        with pytest.warns(UserWarning, match="ceil_mode=True, paddle.vision floors"):
            report, diff = measure(name, to)
    else:
        report, diff = measure(name, to)
    assert not report.missing and not report.unexpected and not report.mismatched, str(report)
    assert diff <= 1e-5, f"{name} -> {to}: outputs differ by {diff:.2e} of their magnitude"


@pytest.mark.parametrize("name,to", DEFAULT)
def test_zoo_converts_with_equal_outputs(name, to):
    _check(name, to)


@pytest.mark.slow
@pytest.mark.sweep
@pytest.mark.parametrize("to", ["paddle", "torch"])
@pytest.mark.parametrize("name", [n for n in ZOO])
def test_whole_zoo_converts_with_equal_outputs(name, to):
    if (name, to) in DEFAULT:
        pytest.skip("in the default tier")
    _check(name, to)


def test_googlenet_differs_and_says_what():
    import paddle.vision.models as pv
    import torchvision

    t = torchvision.models.googlenet(num_classes=10, aux_logits=False, init_weights=False)
    p = pv.googlenet(num_classes=10)
    for model, source, origin in ((p, t.state_dict(), "torch"), (t, p.state_dict(), "paddle")):
        with pytest.raises(
            xfreeze.XFreezeError,
            match=rf"converting the {origin} source placed 0 of \d+ keys .*"
            r"fewer than half.*BatchNorm after every conv",
        ):
            xfreeze.load_matched(model, source)


def test_shufflenet_x2_0_differs_and_says_what():
    import paddle.vision.models as pv
    import torchvision

    t, p = torchvision.models.shufflenet_v2_x2_0(num_classes=10), pv.shufflenet_v2_x2_0(num_classes=10)
    with pytest.raises(
        xfreeze.XFreezeError,
        match=r"module 5 differs: source 'stage2.0.branch1.2' holds weight "
        r"\[122, 24, 1, 1\] where the target's '2_1._conv_linear_1.0' "
        r"holds weight \[112, 24, 1, 1\]",
    ):
        xfreeze.load_matched(p, t.state_dict())


def test_squeezenet_1_1_warns_what_differs():
    import paddle.vision.models as pv
    import torchvision

    t, p = torchvision.models.squeezenet1_1(num_classes=10), pv.squeezenet1_1(num_classes=10)
    with pytest.warns(UserWarning, match="first conv has no padding, paddle.vision's pads by 1.*\nHINT"):
        report = xfreeze.load_matched(p, t.state_dict())
    assert len(report.loaded) == 52 and not report.missing  # the weights do convert, exactly


def test_fewer_than_half_placed_is_an_error_unless_allowed():
    import paddle.vision.models as pv
    import torchvision

    t = torchvision.models.resnet18(num_classes=10)
    subset = {k: v for k, v in t.state_dict().items() if k.startswith(("layer4.", "fc."))}
    target = pv.resnet18(num_classes=10)
    before = {k: v.numpy().copy() for k, v in target.state_dict().items()}
    with pytest.raises(
        xfreeze.XFreezeError,
        match=r"placed 27 of 102 keys of ResNet \(paddle\) \(fewer than "
        r"half\); nothing was changed.*allow_partial=True",
    ):
        xfreeze.load_matched(target, subset)
    assert all(np.array_equal(before[k], v.numpy()) for k, v in target.state_dict().items())
    report = xfreeze.load_matched(target, subset, allow_partial=True)
    assert len(report.loaded) == 27 and len(report.missing) == 102 - 27
    with pytest.raises(xfreeze.XFreezeError, match="allow_partial must be True or False"):
        xfreeze.load_matched(target, subset, allow_partial="yes")


def test_value_rules_round_trip_bitwise_close():
    """AlexNet's folded Dropout scale and Inception's folded epsilon undo on the way back."""
    import paddle.vision.models as pv
    import torch
    import torchvision

    t = torchvision.models.alexnet(num_classes=10)
    there = xfreeze.convert(t.state_dict(), to="paddle", model=pv.alexnet(num_classes=10))
    back = xfreeze.convert(there, to="torch", model=torchvision.models.alexnet(num_classes=10))
    for key, value in t.state_dict().items():
        assert torch.equal(back[key], value), key  # x2 then /2 is exact in float32
    assert any("downscale_in_infer" in note for _, note in there.notes)

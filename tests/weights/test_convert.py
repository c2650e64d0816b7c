"""torch <-> Paddle conversion on real architectures: same eval outputs both ways, bitwise round trips.

Tolerance: converted models agree in float32 eval-mode outputs within 1e-5 of the largest output magnitude
(measured: ResNet-18 ~2e-6 absolute on logits of ~50; ResNet-50 ~5e-6 relative on logits of ~1400; the small ERNIE
~5e-7 on hidden states of ~1): the frameworks' kernels round differently, a conversion error is of order 1.

Both ERNIE runs get the same explicit attention mask: PaddleNLP's ErnieModel masks pad_token_id by itself when no
mask is given, transformers' attends to every token. That is a difference of the models' call API, not of weights.
"""

import numpy as np
import pytest

import xfreeze
from xfreeze import XFreezeError
from xfreeze.backends.naming import naming
from xfreeze.weights.convert import convert_archs
from harness import BACKENDS, kit

OUTPUT_RTOL = 1e-5


def assert_same_outputs(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=OUTPUT_RTOL * float(np.abs(expected).max()))


def resnet(framework, arch):
    model = getattr(kit(framework).zoo, arch)()
    model.eval()
    return model


def forward(framework, model, x, mask=None):
    if framework == "torch":
        import torch

        extra = {} if mask is None else {"attention_mask": torch.from_numpy(mask)}
        with torch.no_grad():
            out = model(torch.from_numpy(x), **extra)
        return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out).numpy()
    import paddle

    extra = {} if mask is None else {"attention_mask": paddle.to_tensor(mask)}
    out = model(paddle.to_tensor(x), **extra)
    return (out[0] if isinstance(out, (tuple, list)) else out).numpy()


def randomize_statistics(framework, model, seed=0):
    """Fresh models have mean 0 / variance 1 statistics, which would hide a mix-up of mean and variance."""
    from xfreeze.core.dispatch import adapter_for
    from xfreeze.core.tensors import Raw
    from xfreeze.model.view import view_of

    adapter, view, rng = adapter_for(model), view_of(model), np.random.default_rng(seed)
    for name, tensor in zip(view.stat_names, view.stat_tensors):
        shape = tuple(tensor.shape)
        value = rng.uniform(0.5, 1.5, shape) if name.endswith("running_var") else rng.normal(0, 0.1, shape)
        native = adapter.as_native(adapter.from_raw(Raw(value.astype("float32"), "float32")), tensor)
        adapter.load_tensors([tensor], [native])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("source, target", [("torch", "paddle"), ("paddle", "torch")])
def test_resnet_converts_with_the_same_outputs(arch, source, target):
    kit(source), kit(target)
    src, dst = resnet(source, arch), resnet(target, arch)
    randomize_statistics(source, src)
    report = xfreeze.load_matched(dst, src)
    assert not report.missing and not report.unexpected and not report.mismatched
    assert "fc.weight" in report.converted
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype("float32")
    assert_same_outputs(forward(target, dst, x), forward(source, src, x))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnet_round_trip_torch_paddle_torch_is_bitwise(arch, tmp_path):
    kit("paddle")
    original, middle, back = resnet("torch", arch), resnet("paddle", arch), resnet("torch", arch)
    randomize_statistics("torch", original)
    xfreeze.save_checkpoint(original, tmp_path / "a.pt")
    xfreeze.load_matched(middle, tmp_path / "a.pt")  # from a torch file into Paddle
    xfreeze.save_checkpoint(middle, tmp_path / "b.pdparams")
    report = xfreeze.load_matched(back, tmp_path / "b.pdparams")  # from a Paddle file back into torch
    assert not report.missing  # num_batches_tracked: kept, not reported as missing
    for key, value in original.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert np.array_equal(value.numpy(), back.state_dict()[key].numpy()), key


def ernie(framework, seed=0):
    kw = dict(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        type_vocab_size=2,
    )
    if framework == "torch":
        import torch
        from transformers import ErnieConfig, ErnieModel

        torch.manual_seed(seed)
        return ErnieModel(ErnieConfig(**kw)).eval()
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieModel

    paddle.seed(seed)
    model = ErnieModel(ErnieConfig(**kw))
    model.eval()
    return model


@pytest.mark.slow
@pytest.mark.parametrize("source, target", [("torch", "paddle"), ("paddle", "torch")])
def test_ernie_converts_with_the_same_outputs(source, target):
    src, dst = ernie(source), ernie(target, seed=1)
    report = xfreeze.load_matched(dst, src)
    assert len(report.loaded) == 39 and not report.missing and not report.unexpected
    ids = np.random.default_rng(0).integers(0, 100, (2, 9))
    ids[:, -2:] = 0  # padding tokens: Paddle outputs zeros for the padding row, torch returns it
    mask = (ids != 0).astype("int64")
    assert_same_outputs(forward(target, dst, ids, mask), forward(source, src, ids, mask))
    if source == "paddle":  # PaddleNLP's padding row is random (output forced to zero), so it is zeroed for torch
        assert any("padding row 0 zeroed" in n for n in report.converted["embeddings.word_embeddings.weight"])


@pytest.mark.slow
def test_ernie_round_trip_is_bitwise():
    original, middle, back = ernie("torch"), ernie("paddle", 1), ernie("torch", 2)
    xfreeze.load_matched(middle, original)
    xfreeze.load_matched(back, middle)
    for key, value in original.state_dict().items():
        assert np.array_equal(value.numpy(), back.state_dict()[key].numpy()), key


def test_embeddings_and_convs_are_not_transposed_without_a_model():
    state = {
        "embeddings.word_embeddings.weight": np.zeros((100, 16), "float32"),
        "encoder.layer.0.attention.self.query.weight": np.zeros((32, 16), "float32"),
        "conv1.weight": np.zeros((8, 3, 3, 3), "float32"),
        "bn.running_var": np.ones(8, "float32"),
        "bn.num_batches_tracked": np.zeros((), "int64"),
    }
    out = xfreeze.convert(state, to="paddle")
    assert out["embeddings.word_embeddings.weight"].shape == (100, 16)
    assert out["encoder.layers.0.self_attn.q_proj.weight"].shape == (16, 32)
    assert out["conv1.weight"].shape == (8, 3, 3, 3) and "bn._variance" in out
    assert "bn.num_batches_tracked" not in out and out.framework == "paddle"
    assert ("bn.num_batches_tracked", "dropped: no counterpart in paddle") in out.notes
    assert any("a guess from its name" in note for _, note in out.notes)


def test_what_cannot_be_placed_is_reported():
    model = resnet("paddle", "resnet18")
    state = {k: v for k, v in xfreeze.convert(resnet("torch", "resnet18").state_dict(), to="paddle").items()}
    state["extra.weight"] = np.zeros((2, 2), "float32")
    out = xfreeze.convert(state, to="paddle", model=model)
    assert out.unplaced == ["extra.weight"]
    assert ("extra.weight", "not placed: the target model has no such key") in out.notes


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(to="jax"), r"Expected one of \('torch', 'paddle'\)"),
        (dict(to="paddle", arch="vgg"), r"unknown arch='vgg' for paddle: .*Did you mean 'vgg"),
        (dict(to="paddle", arch=50), r"arch must be .* Received: arch=50"),
        (dict(to="paddle", allow_partial=1), r"allow_partial must be True or False"),
    ],
)
def test_bad_convert_arguments(kwargs, message):
    with pytest.raises(XFreezeError, match=message):
        xfreeze.convert({"w": np.ones(2)}, **kwargs)


def other(fw):
    """The framework a state converted into ``fw`` comes from (data, not a branch on the name)."""
    return next(name for name in BACKENDS if name != fw.name)


def test_arch_is_spelled_as_on_the_command_line(fw):
    state = resnet(other(fw), "resnet18").state_dict()
    out = xfreeze.convert(state, to=fw.name, arch="resnet18")  # a model name, as `xfreeze convert --arch resnet18`
    target = set(resnet(fw.name, "resnet18").state_dict())
    own_only = naming(fw.name).own_only_leaves  # torch's num_batches_tracked: no Paddle counterpart
    assert set(out) <= target and all(k.rpartition(".")[2] in own_only for k in target - set(out))
    assert not any("differs" in note for _, note in out.notes)
    assert xfreeze.convert(state, to=fw.name, arch="resnet").arch == "resnet"  # a name map still forces the map
    assert "resnet" in convert_archs() and "llama" in convert_archs()


@pytest.mark.slow
def test_a_state_of_another_architecture_is_refused(fw):
    state = resnet(other(fw), "resnet18").state_dict()
    with pytest.raises(
        XFreezeError, match=r"do not fit arch='resnet50' .*'layer1\.0\.conv1\.weight' is \[64, 64, 3, 3\]"
    ):
        xfreeze.convert(state, to=fw.name, arch="resnet50")
    out = xfreeze.convert(state, to=fw.name, arch="resnet50", allow_partial=True)
    assert ("layer1.0.conv1.weight", "shape [64, 64, 3, 3] differs from resnet50's [64, 64, 1, 1]") in out.notes


def test_unknown_arch_suggests_each_name_once(fw):
    with pytest.raises(XFreezeError, match="Did you mean") as info:
        xfreeze.convert(
            {"conv1.weight": np.ones((2, 3, 1, 1), "float32")}, to=fw.name, source=other(fw), arch="resnet5"
        )
    suggested = str(info.value).partition("Did you mean ")[2].rstrip("?").split(" or ")
    assert len(suggested) == len(set(suggested)) >= 2 and "'resnet50'" in suggested


def test_arch_naming_a_model_and_model_together_are_refused(fw):
    with pytest.raises(XFreezeError, match="pass one of them"):
        xfreeze.convert(
            {"fc.weight": np.ones((2, 3), "float32")},
            to=fw.name,
            source=other(fw),
            model=fw.linear(3, 2),
            arch="resnet18",
        )

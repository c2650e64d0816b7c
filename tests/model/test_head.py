"""replace_head on real torchvision / paddle.vision models and on the ...ForSequenceClassification layout; a lone
Linear that is not the head (issue 18), 1x1-convolution heads named with head=, and bad arguments."""

import numpy as np
import pytest
from statehash import state_hash

import xfreeze
import xfreeze.model.head as head_module
from xfreeze import XFreezeError
from xfreeze.core.dispatch import adapter_for

VISION = {  # model builder -> where its classifier is
    "resnet18": "fc",
    "vgg11": "classifier.6",
    "mobilenet_v2": "classifier.1",
    "mobilenet_v3_small": "classifier.3",
}


@pytest.mark.parametrize("arch", sorted(VISION))
def test_auto_finds_the_head_of_real_vision_models(fw, arch):
    model = getattr(fw.zoo, arch)()
    xfreeze.freeze(model, "*")
    new = xfreeze.replace_head(model, 7)
    assert dict(fw.named_modules(model))[VISION[arch]] is new
    assert fw.linear_shape(new)[1] == 7
    assert xfreeze.select(model, VISION[arch]) == [f"{VISION[arch]}.weight", f"{VISION[arch]}.bias"]
    assert xfreeze.summary(model, print_table=False).counts.trainable == fw.linear_shape(new)[0] * 7 + 7


def test_auto_finds_torchvision_vit_head():
    import torchvision

    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16
    )
    new = xfreeze.replace_head(model, 3)
    assert model.heads.head is new and new.out_features == 3


def sequence_classifier(fw):
    """The layout of transformers / PaddleNLP ...ForSequenceClassification: encoder (with a pooler dense layer),
    dropout, classifier."""
    nn = fw.nn

    class Encoder(fw.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = nn.Embedding(10, 8)
            self.pooler = nn.Sequential(fw.linear(8, 8), nn.Tanh())

    class ErnieForSequenceClassification(fw.Module):
        def __init__(self):
            super().__init__()
            self.ernie, self.dropout, self.classifier = Encoder(), nn.Dropout(0.1), fw.linear(8, 2)

    return ErnieForSequenceClassification()


def test_auto_finds_sequence_classification_classifier(fw):
    model = sequence_classifier(fw)
    new = xfreeze.replace_head(model, 5)
    assert model.classifier is new and fw.linear_shape(new) == (8, 5)


def test_new_head_keeps_dtype_device_and_bias_setting(fw):
    model = fw.cast(fw.nn.Sequential(fw.linear(4, 6), fw.linear(6, 9, bias=False)), "float64")
    new = xfreeze.replace_head(model, 3, head="1")
    assert new.bias is None
    assert "float64" in str(new.weight.dtype)
    x = fw.tensor(np.ones((2, 4)))
    assert fw.numpy(model(x)).shape == (2, 3)


@pytest.mark.parametrize("init", ["xavier_uniform", "xavier_normal", "kaiming_uniform", "normal", "zeros", "default"])
def test_init_choices(fw, init):
    model = fw.nn.Sequential(fw.nn.Linear(16, 8), fw.nn.Linear(8, 1000))
    new = xfreeze.replace_head(model, 10, head="1", init=init)
    w = fw.numpy(new.weight)
    assert np.all(fw.numpy(new.bias) == 0) or init == "default"
    assert (np.all(w == 0)) == (init == "zeros")
    if init == "xavier_uniform":
        assert np.abs(w).max() <= np.sqrt(6 / (8 + 10)) + 1e-6


def test_new_head_is_trainable_even_in_a_frozen_model(fw):
    model = fw.zoo.resnet18()
    xfreeze.freeze(model, "*")
    xfreeze.replace_head(model, 4)
    assert xfreeze.select(model, "fc") == ["fc.weight", "fc.bias"]
    assert xfreeze.summary(model, print_table=False).counts.trainable == 512 * 4 + 4


def test_head_by_pattern(fw):
    model = fw.nn.Sequential(fw.nn.Linear(4, 6), fw.nn.ReLU(), fw.nn.Linear(6, 9))
    assert fw.linear_shape(xfreeze.replace_head(model, 2, head="[2]")) == (6, 2)


def test_ambiguous_head_lists_the_candidates(fw):
    class TwoHeads(fw.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.classifier = fw.linear(4, 3), fw.linear(4, 2)

    model = TwoHeads()
    with pytest.raises(
        XFreezeError,
        match=rf"replace_head is ambiguous \(head='auto'\) in TwoHeads \({fw.name}\): "
        r"'fc', 'classifier' could each be the head\. "
        r"Pass head=NAME, one of the linear layers: fc \(4->3\), classifier \(4->2\)",
    ):
        xfreeze.replace_head(model, 5)
    assert fw.linear_shape(model.fc) == (4, 3) and fw.linear_shape(model.classifier) == (4, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=0), r"num_classes must be an integer >= 1\. Received: num_classes=0"),
        (dict(num_classes=-3), "num_classes=-3"),
        (dict(num_classes=2.5), "num_classes=2.5"),
        (dict(num_classes=3.0), "num_classes=3.0"),
        (dict(num_classes=True), "num_classes=True"),
        (dict(num_classes="3"), "num_classes='3'"),
        (dict(num_classes=None), "num_classes=None"),
        (dict(num_classes=3, init="he"), r"Expected one of \('xavier_uniform'"),
        (
            dict(num_classes=3, head="decoder"),
            r"head='decoder' matched no linear layers or 1x1 convolutions in Sequential \(\w+\)\. "
            r"Pass head=NAME, one of the linear layers: 0 \(4->6\), 2 \(6->9\)",
        ),
        (dict(num_classes=3, head="1"), r"'1' is a ReLU, not a Linear or a 1x1 convolution"),
        (dict(num_classes=3, head="*"), r"head='\*' matched 2 linear layers or 1x1 convolutions .*0 \(4->6\), 2"),
        (dict(num_classes=3, head=7), r"head must be 'auto', a module name .* Received: head=7"),
        (dict(num_classes=3), r"found no classification head in Sequential"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_model_is_untouched(fw, kwargs, message):
    model = fw.nn.Sequential(fw.nn.Linear(4, 6), fw.nn.ReLU(), fw.nn.Linear(6, 9))
    before, old = state_hash(model), model[2]
    with pytest.raises(XFreezeError, match=message):
        xfreeze.replace_head(model, **kwargs)
    assert model[2] is old and state_hash(model) == before


def test_a_numpy_integer_is_a_class_count(fw):
    model = fw.nn.Sequential(fw.nn.Linear(4, 6), fw.nn.ReLU(), fw.nn.Linear(6, 9))
    assert fw.linear_shape(xfreeze.replace_head(model, np.int64(3), head="2")) == (6, 3)


# --- num_classes too large to build (issue 18: raw RuntimeError / IndexError / SystemError before) --------------
@pytest.mark.parametrize("classes", [10**12, 10**30, 2**63])
def test_an_absurd_class_count_is_refused_before_anything_is_allocated(fw, classes):
    model = fw.nn.Sequential(fw.nn.Linear(4, 6), fw.nn.ReLU(), fw.nn.Linear(6, 9))
    before = state_hash(model)
    per_class = 4 * (6 + 1)  # float32 weight row + bias element
    with pytest.raises(
        XFreezeError,
        match=rf"num_classes={classes} is too large for head '2' of Sequential \({fw.name}\) \(6 in-features, "
        rf"{per_class} bytes per class\): the new layer would need {classes * per_class:,} bytes .*"
        r"at most 2,147,483,647 classes and 17,179,869,184 bytes \(16\.0 GiB\) per head",
    ):
        xfreeze.replace_head(model, classes, head="2")
    assert state_hash(model) == before


def test_the_class_bound_holds_whatever_the_byte_bound(fw, monkeypatch):
    """More classes than an int32 dimension holds (Paddle's shapes) is refused even under a larger byte budget."""
    monkeypatch.setattr(head_module, "MAX_HEAD_BYTES", 2**62)
    model = fw.nn.Sequential(fw.nn.Linear(4, 6), fw.nn.ReLU(), fw.nn.Linear(6, 9))
    before = state_hash(model)
    with pytest.raises(XFreezeError, match=r"num_classes=2147483648 is too large"):
        xfreeze.replace_head(model, 2**31, head="2")
    assert state_hash(model) == before


def test_the_byte_bound_counts_the_heads_dtype_and_bias(fw, monkeypatch):
    monkeypatch.setattr(head_module, "MAX_HEAD_BYTES", 6400)
    model = fw.cast(fw.nn.Sequential(fw.linear(4, 6), fw.linear(6, 9, bias=False)), "float64")
    before = state_hash(model)
    with pytest.raises(XFreezeError, match=r"\(6 in-features, 48 bytes per class\): .* need 6,432 bytes"):
        xfreeze.replace_head(model, 134, head="1")  # 134 classes * 6 float64 weights
    assert state_hash(model) == before
    assert fw.linear_shape(xfreeze.replace_head(model, 133, head="1")) == (6, 133)  # 6,384 bytes: within


def test_a_layer_the_device_cannot_allocate_is_an_error_and_no_head_is_replaced(fw, monkeypatch):
    """Every new head is built before the first is put in place: a failure on the second leaves the first too."""

    class TwoHeads(fw.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.classifier = fw.linear(4, 3), fw.linear(4, 2)

    model = TwoHeads()
    before, old = state_hash(model), (model.fc, model.classifier)
    adapter = type(adapter_for(model))
    built = []

    def new_linear(self, like, out_features, init):
        if built:
            raise MemoryError("out of memory")
        built.append(like)
        return fw.linear(4, out_features)

    monkeypatch.setattr(adapter, "new_linear", new_linear)
    with pytest.raises(XFreezeError, match=r"could not build the new head 'classifier' .*MemoryError: out of memory"):
        xfreeze.replace_head(model, 5, head=["fc", "classifier"])
    assert (model.fc, model.classifier) == old and state_hash(model) == before


# --- a lone Linear that is not the head (issue 18 item 4) --------------------------------------------------------
def autoencoder(fw):
    """A conv encoder whose Linear bottleneck feeds a transposed-conv decoder: its only Linear is no classifier."""

    class AutoEncoder(fw.Module):
        def __init__(self):
            super().__init__()
            self.encoder = fw.nn.Sequential(fw.conv2d(1, 2, 3), fw.nn.ReLU(), fw.nn.Flatten(), fw.linear(2 * 4 * 4, 8))
            self.decoder = fw.nn.Sequential(fw.conv2d(8, 1, 6, transpose=True), fw.nn.Sigmoid())

        def forward(self, x):
            return self.decoder(self.encoder(x).reshape([-1, 8, 1, 1]))

    return AutoEncoder()


def test_a_lone_linear_bottleneck_is_refused_with_a_hint(fw):
    model = autoencoder(fw)
    image = fw.tensor(np.ones((2, 1, 6, 6), dtype="float32"))
    before = state_hash(model)
    with pytest.raises(
        XFreezeError,
        match=rf"will not replace 'encoder.3' \(32->8\), the only linear layer of AutoEncoder \({fw.name}\): "
        r"layers with parameters come after it \(decoder.0 \(\w+\)\), so it looks like a bottleneck.*"
        r"registration order \(xfreeze runs no forward\)\.\nHINT: pass head='encoder.3' if it really is",
    ):
        xfreeze.replace_head(model, 10)
    assert state_hash(model) == before
    assert fw.numpy(model(image)).shape == (2, 1, 6, 6)  # still runs
    new = xfreeze.replace_head(model, 8, head="encoder.3")  # named: the user means it
    assert model.encoder[3] is new and fw.numpy(model(image)).shape == (2, 1, 6, 6)


def test_a_lone_linear_followed_by_a_norm_is_refused(fw):
    model = fw.nn.Sequential(fw.linear(4, 8), fw.nn.ReLU(), fw.batch_norm(8))
    before = state_hash(model)
    with pytest.raises(XFreezeError, match=r"will not replace '0' \(4->8\).*come after it \(2 \(BatchNorm1[dD]\)\)"):
        xfreeze.replace_head(model, 3)
    assert state_hash(model) == before


def test_a_lone_linear_that_is_last_is_the_head(fw):
    """A small CNN (conv, BatchNorm, ReLU, pooling, Linear): convolutions and norms before the Linear do not count."""
    from harness import Spec

    model = fw.build(Spec("cnn", (4,), classes=3))
    xfreeze.freeze(model, "*")
    new = xfreeze.replace_head(model, 6)
    assert model[-1] is new and fw.linear_shape(new) == (4, 6)
    assert fw.trainable_names(model) == ["5.weight", "5.bias"]


# --- 1x1-convolution heads (segmentation) ------------------------------------------------------------------------
def segmenter(fw, bias: bool = True):
    """torchvision FCN's layout, small: a backbone, then classifier = conv 3x3, BatchNorm, ReLU, Dropout, conv 1x1."""

    class FCN(fw.Module):
        def __init__(self):
            super().__init__()
            self.backbone = fw.nn.Sequential(fw.conv2d(3, 8, 3), fw.batch_norm2d(8), fw.nn.ReLU())
            self.classifier = fw.nn.Sequential(
                fw.conv2d(8, 4, 3, bias=False),
                fw.batch_norm2d(4),
                fw.nn.ReLU(),
                fw.nn.Dropout(0.1),
                fw.conv2d(4, 21, 1, bias=bias),
            )

        def forward(self, x):
            return self.classifier(self.backbone(x))

    return FCN()


@pytest.mark.parametrize("bias", [True, False])
def test_a_1x1_conv_head_is_replaced_when_named(fw, bias):
    model = fw.cast(segmenter(fw, bias), "float64")
    xfreeze.freeze(model, "*")
    new = xfreeze.replace_head(model, 7, head="classifier.4", init="zeros")
    assert dict(fw.named_modules(model))["classifier.4"] is new
    assert "float64" in str(new.weight.dtype) and (new.bias is not None) == bias
    assert fw.trainable_names(model) == ["classifier.4.weight"] + ["classifier.4.bias"] * bias
    assert not fw.numpy(new.weight).any()
    image = fw.tensor(np.ones((2, 3, 9, 9)))
    assert fw.numpy(model(image)).shape == (2, 7, 5, 5)


def test_a_1x1_conv_head_is_found_by_pattern_and_listed_when_auto_fails(fw):
    model = segmenter(fw)
    before = state_hash(model)
    with pytest.raises(
        XFreezeError,
        match=rf"found no classification head in FCN \({fw.name}\)\. "
        r"Pass head=NAME, one of the 1x1 convolutions: classifier.4 \(1x1 conv 4->21\)$",
    ):
        xfreeze.replace_head(model, 7)
    assert state_hash(model) == before
    assert xfreeze.replace_head(model, 7, head="classifier.*") is model.classifier[4]


@pytest.mark.parametrize(
    "head, message",
    [
        ("classifier.0", r"'classifier.0' is a Conv2[dD], not a Linear or a 1x1 convolution"),
        ("classifier", r"'classifier' is a Sequential, .*; inside it: classifier.4 \(1x1 conv 4->21\)"),
        ("clasifier.4", r"no module is named 'clasifier.4'; did you mean 'classifier.4'\?"),
        ("classifier.4.weight", r"no module is named 'classifier.4.weight'; did you mean 'classifier.4'\?"),
        ("decoder", r"matched no linear layers or 1x1 convolutions in FCN \(\w+\)\. Pass head=NAME"),
    ],
)
def test_naming_a_module_that_is_no_head_says_what_it_is_or_what_was_meant(fw, head, message):
    model = segmenter(fw)
    before = state_hash(model)
    with pytest.raises(XFreezeError, match=message):
        xfreeze.replace_head(model, 7, head=head)
    assert state_hash(model) == before


def test_torchvision_fcn_segmentation_head():
    import torch
    import torchvision

    model = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=False
    )
    xfreeze.freeze(model, "*")
    new = xfreeze.replace_head(model, 5, head="classifier.4")
    assert model.classifier[4] is new and (new.in_channels, new.out_channels, new.kernel_size) == (512, 5, (1, 1))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["classifier.4.weight", "classifier.4.bias"]
    model.eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32))["out"].shape == (1, 5, 32, 32)

"""replace_head on real torchvision / paddle.vision models and on the ...ForSequenceClassification layout."""

import numpy as np
import pytest

import xfreeze
from xfreeze import XFreezeError

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
        (dict(num_classes=True), "num_classes=True"),
        (dict(num_classes=3, init="he"), r"Expected one of \('xavier_uniform'"),
        (
            dict(num_classes=3, head="decoder"),
            r"head='decoder' matched no linear layers in Sequential .* "
            r"one of the linear layers: 0 \(4->6\), 2 \(6->9\)",
        ),
        (dict(num_classes=3), r"found no classification head in Sequential"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_model_is_untouched(fw, kwargs, message):
    model = fw.nn.Sequential(fw.nn.Linear(4, 6), fw.nn.ReLU(), fw.nn.Linear(6, 9))
    before = fw.numpy(model[2].weight).copy()
    old = model[2]
    with pytest.raises(XFreezeError, match=message):
        xfreeze.replace_head(model, **kwargs)
    assert model[2] is old and np.array_equal(fw.numpy(model[2].weight), before)

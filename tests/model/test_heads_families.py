"""replace_head across families (issue 11): head names, two-headed models, head=[...], a lone Linear, label counts."""

import warnings

import numpy as np
import pytest

import sweep_models as S
import xfreeze
from xfreeze.model.view import view_of


def _heads(model, head="auto"):
    return xfreeze.model.head.find_heads(view_of(model), head)


@pytest.mark.parametrize(
    "family,head",
    [
        ("llama", "score"),
        ("gpt2", "score"),
        ("bart", "classification_head.out_proj"),
        ("t5", "classification_head.out_proj"),
        ("xlnet", "logits_proj"),
        ("bert", "classifier"),
        ("vit", "classifier"),
    ],
)
def test_transformers_heads(family, head):
    model, inputs, _ = S.hf_case(family).build()
    assert _heads(model) == [head]
    xfreeze.replace_head(model, 5)
    assert model.config.num_labels == 5 and len(model.config.id2label) == 5 and len(model.config.label2id) == 5
    import torch

    labels = torch.tensor([4, 1])
    out = model(**inputs, labels=labels)  # the loss uses the new label count
    assert out.logits.shape[-1] == 5 and torch.isfinite(out.loss)


@pytest.mark.classic_stack  # PaddleNLP 2.8.1 models
@pytest.mark.parametrize("family,head", [("ernie", "classifier"), ("gpt", "score"), ("bart", "classifier.out_proj")])
def test_paddlenlp_heads_and_num_classes(family, head):
    import paddle

    model, inputs, _ = S.paddlenlp_case(family).build()
    assert _heads(model) == [head]
    xfreeze.replace_head(model, 5)
    assert model.config.num_labels == 5 and model.config.num_classes == 5 and len(model.config.id2label) == 5
    assert getattr(model, "num_labels", 5) == 5
    out = model(**inputs)
    logits = out.logits if hasattr(out, "logits") else out
    assert logits.shape[-1] == 5
    assert paddle.isfinite(logits).all()


@pytest.mark.parametrize(
    "name,heads",
    [
        ("densenet121", ["out"]),
        ("shufflenet_v2_x0_25", ["_fc"]),
        ("alexnet", ["_fc8"]),
        ("googlenet", ["_fc_out", "_out1", "_out2"]),
        ("resnet18", ["fc"]),
        ("mobilenet_v3_small", ["classifier.3"]),
    ],
)
def test_paddle_vision_head_names(name, heads):
    import paddle.vision.models as models

    assert _heads(getattr(models, name)(num_classes=10)) == heads


def test_torchvision_aux_heads_are_replaced_with_the_main_one():
    import torchvision

    model = torchvision.models.inception_v3(num_classes=10, aux_logits=True, init_weights=False)
    with pytest.warns(UserWarning, match=r"replaced 2 class-logit heads of Inception3 \(torch\): AuxLogits.fc, fc"):
        new = xfreeze.replace_head(model, 4)
    assert [layer.out_features for layer in new] == [4, 4] and model.fc is new[1]


@pytest.mark.parametrize(
    "name,heads",
    [
        ("deit_tiny_distilled_patch16_224", ["head", "head_dist"]),
        ("levit_128s", ["head.linear", "head_dist.linear"]),
        ("volo_d1_224", ["aux_head", "head"]),
        ("crossvit_tiny_240", ["head.0", "head.1"]),
        ("repvit_m1", ["head.head.l", "head.head_dist.l"]),
    ],
)
def test_timm_two_headed_models_replace_all_heads(name, heads):
    import torch

    model, inputs, _ = S.timm_case(name).build()
    with pytest.warns(UserWarning, match="class-logit heads.*\nHINT: pass head=NAME"):
        new = xfreeze.replace_head(model, 4)
    assert isinstance(new, list) and len(new) == len(heads)
    assert _heads(model) == heads
    model.eval()
    with torch.no_grad():
        assert model(inputs["x"]).shape == (2, 4)  # one head left at 10 classes would fail here


def test_transformers_teacher_models():
    model, inputs, _ = S.hf_case("deit-teacher").build()
    assert _heads(model) == ["cls_classifier", "distillation_classifier"]
    with pytest.warns(UserWarning, match="replaced 2 class-logit heads"):
        xfreeze.replace_head(model, 6)
    assert model(**inputs).logits.shape == (2, 6) and model.config.num_labels == 6


def test_head_list_and_lone_linear(fw):
    class TwoHeads(fw.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc, self.classifier = fw.linear(4, 4), fw.linear(4, 3), fw.linear(4, 2)

    model = TwoHeads()
    with pytest.raises(xfreeze.XFreezeError, match="is ambiguous"):
        xfreeze.replace_head(model, 5)
    new = xfreeze.replace_head(model, 5, head=["classifier", "fc"])
    assert isinstance(new, list) and len(new) == 2 and model.fc is new[0] and model.classifier is new[1]
    with pytest.raises(xfreeze.XFreezeError, match=r"head='nope' matched no linear layers"):
        xfreeze.replace_head(model, 5, head=["fc", "nope"])
    with pytest.raises(xfreeze.XFreezeError, match="names the same layer twice"):
        xfreeze.replace_head(model, 5, head=["fc", "f?"])

    class Encoder(fw.Module):
        def __init__(self):
            super().__init__()
            self.proj = fw.linear(4, 7)

    lone = Encoder()
    layer = xfreeze.replace_head(lone, 2)
    assert lone.proj is layer


def test_view_is_rebuilt_after_replacing(fw):
    model = fw.nn.Sequential(fw.nn.Linear(4, 8), fw.nn.Linear(8, 10))
    before = view_of(model)
    xfreeze.replace_head(model, 3, head="1")
    assert view_of(model) is not before
    assert view_of(model).shapes[-1] in ((3,),)


def test_replace_head_errors_leave_the_model_unchanged(fw):
    model = fw.nn.Sequential(fw.nn.Linear(4, 8), fw.nn.Linear(8, 10))
    state = {k: np.array(fw.numpy(v)) for k, v in model.state_dict().items()}
    for bad in ([], [1], ["1", ""]):
        with pytest.raises(xfreeze.XFreezeError, match="head must be"):
            xfreeze.replace_head(model, 3, head=bad)
    assert all(np.array_equal(state[k], fw.numpy(v)) for k, v in model.state_dict().items())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xfreeze.replace_head(model, 3, head="1")  # one head: no warning


def test_squeezenet_conv_classifier_is_replaced(fw):
    """SqueezeNet classifies with a 1x1 convolution (torchvision classifier.1, paddle.vision _conv9): auto finds it
    by the model's num_classes and puts a new 1x1 convolution there."""
    model = fw.zoo.squeezenet1_1()
    new = xfreeze.replace_head(model, 7)
    assert dict(fw.named_modules(model))[fw.zoo.head("squeezenet1_1")] is new
    image = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype("float32")
    assert fw.numpy(model(fw.tensor(image))).shape == (1, 7)
    assert model.num_classes == 7

"""param_groups / optimizer: trainable parameters only, absolute group rates, no-decay, layer decay, Paddle traps."""

import numpy as np
import pytest

import xfreeze
from xfreeze import XFreezeError
from xfreeze.core.dispatch import adapter_for
from harness import Spec, batch, random_state
from statehash import state_hash

CNN = Spec("cnn", (4, 3))  # 0 conv, 1 bn, 3 conv, 4 bn, 8 linear
BLOCKS = Spec("blocks", (4, 5, 6, 3))  # 0.0, 1.0, 2.0 blocks, 3 head


def names(groups):
    return [g["names"] for g in groups]


def test_only_trainable_parameters_are_grouped(fw):
    model = fw.build(CNN)
    xfreeze.freeze(model, "*", "!8")
    assert names(xfreeze.param_groups(model, lr=0.1)) == [["8.weight", "8.bias"]]
    opt = xfreeze.optimizer(model, "adam", lr=0.1)
    assert len(adapter_for(model).optimizer_param_ids(opt)) == 2


def test_no_decay_defaults_to_biases_and_norms(fw):
    model = fw.build(CNN)
    groups = xfreeze.param_groups(model, lr=0.1, weight_decay=0.01)
    decayed = [n for g in groups if g["weight_decay"] for n in g["names"]]
    assert decayed == ["0.weight", "3.weight", "8.weight"]
    assert xfreeze.param_groups(model, lr=0.1, weight_decay=0.01, no_decay=())[0]["weight_decay"] == 0.01


def test_lr_mult_scales_by_pattern_and_multiplies(fw):
    model = fw.build(CNN)
    groups = xfreeze.param_groups(model, lr=0.5, lr_mult={"8": 10, "*.bias": 2})
    by_name = {n: g["lr"] for g in groups for n in g["names"]}
    assert by_name["0.weight"] == 0.5 and by_name["8.weight"] == 5.0 and by_name["8.bias"] == 10.0
    assert by_name["0.bias"] == 1.0


def test_group_learning_rates_are_absolute_in_both_frameworks(fw):
    """Paddle's group learning_rate is a multiplier of the global rate; xfreeze hides that."""
    model = fw.build(CNN)
    opt = xfreeze.optimizer(model, "sgd", lr=0.1, momentum=0.9, lr_mult={"8": 10})
    assert sorted(adapter_for(model).group_lrs(opt)) == pytest.approx([0.1, 1.0])


def test_layer_decay_on_repeated_blocks(fw):
    model = fw.build(BLOCKS)
    groups = xfreeze.param_groups(model, lr=1.0, layer_decay=0.5)
    assert [(g["names"][0], g["lr"]) for g in groups] == [
        ("0.0.weight", 0.125),
        ("1.0.weight", 0.25),
        ("2.0.weight", 0.5),
        ("3.weight", 1.0),
    ]


def test_layer_decay_on_resnet_stages(fw):
    model = fw.zoo.resnet18()
    by_name = {n: g["lr"] for g in xfreeze.param_groups(model, lr=1.0, layer_decay=0.5) for n in g["names"]}
    assert by_name["conv1.weight"] == 0.5**5 and by_name["layer1.0.conv1.weight"] == 0.5**4
    assert by_name["layer4.1.bn2.bias"] == 0.5 and by_name["fc.weight"] == 1.0


def test_layer_decay_on_a_transformer_encoder_layout():
    """transformers BERT/ERNIE name their layers encoder.layer.N; torchvision ViT encoder.layers.encoder_layer_N."""
    import torchvision

    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=3, num_heads=2, hidden_dim=8, mlp_dim=16
    )
    by_name = {n: g["lr"] for g in xfreeze.param_groups(vit, lr=1.0, layer_decay=0.5) for n in g["names"]}
    assert by_name["conv_proj.weight"] == 0.5**4
    assert by_name["encoder.layers.encoder_layer_0.ln_1.weight"] == 0.5**3
    assert by_name["encoder.layers.encoder_layer_2.mlp.0.weight"] == 0.5
    assert by_name["heads.head.weight"] == 1.0


def test_layer_decay_blocks_whose_numbers_share_a_prefix(fw):
    """Block 1 and block 10..12 ("blocks.1." is not a prefix of "blocks.10."), a stem before and a head after."""
    model = fw.Module()
    model.stem = fw.linear(2, 2)
    model.blocks = fw.ModuleList([fw.nn.Sequential(fw.linear(2, 2)) for _ in range(13)])
    model.head = fw.linear(2, 2)
    by_name = {n: g["lr"] for g in xfreeze.param_groups(model, lr=1.0, layer_decay=0.5) for n in g["names"]}
    assert by_name["stem.weight"] == 0.5**14
    for k in (0, 1, 10, 12):
        assert by_name[f"blocks.{k}.0.weight"] == 0.5 ** (13 - k), k
    assert by_name["head.bias"] == 1.0


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_paddle_regularizers_left_by_an_earlier_optimizer_do_not_leak(name):
    """Paddle writes a dict group's float weight_decay (as L2Decay) and rate multiplier onto the parameters
    themselves; an optimizer built later without decay still decayed them. xfreeze sets both for every group."""
    from harness import kit

    paddle_kit = kit("paddle")
    import paddle

    finals = []
    for pollute in (False, True):
        model = paddle_kit.build(CNN, "float64")
        paddle_kit.load(model, random_state(CNN, "float64", 0))
        if pollute:
            paddle.optimizer.Adam(
                learning_rate=0.1,
                parameters=[{"params": model.parameters(), "weight_decay": 0.5, "learning_rate": 7.0}],
            )
            # the trap is real: decay and rate multiplier now live on the parameters
            assert model[0].weight.regularizer is not None
            assert model[0].weight.optimize_attr["learning_rate"] == 7.0
        opt = xfreeze.optimizer(model, name, lr=2**-6, **({"momentum": 0.875} if name == "sgd" else {}))
        for step in range(3):
            x, y = batch(CNN, "float64", step)
            paddle_kit.train_step(model, opt, paddle_kit.tensor(x), paddle_kit.labels(y))
        finals.append(paddle_kit.state(model))
    for key in finals[0]:
        assert np.array_equal(finals[0][key], finals[1][key]), key


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda m: xfreeze.optimizer(m, "rmsprop", lr=0.1),
            r"Expected one of \('sgd', 'adam', 'adamw'\)\. "
            r"Received: name='rmsprop'",
        ),
        (lambda m: xfreeze.optimizer(m, "sgd", lr=0), r"lr must be > 0\. Received: lr=0"),
        (lambda m: xfreeze.optimizer(m, "sgd", lr=-1e-3), r"lr must be > 0"),
        (lambda m: xfreeze.optimizer(m, "sgd", lr="0.1"), r"lr must be a number > 0"),
        (lambda m: xfreeze.param_groups(m, lr=0.1, layer_decay=0.0), r"layer_decay must be in \(0, 1\]"),
        (lambda m: xfreeze.param_groups(m, lr=0.1, layer_decay=1.5), r"layer_decay must be in \(0, 1\]"),
        (lambda m: xfreeze.param_groups(m, lr=0.1, weight_decay=-1), r"weight_decay must be >= 0"),
        (lambda m: xfreeze.param_groups(m, lr=0.1, lr_mult={"8": 0}), r"lr_mult\['8'\] must be > 0"),
        (lambda m: xfreeze.param_groups(m, lr=0.1, lr_mult={"fcc": 2}), r"Pattern 'fcc' matched no parameters"),
        (lambda m: xfreeze.param_groups(m, lr=0.1, no_decay=["*.bais"]), r"Did you mean"),
        (lambda m: xfreeze.param_groups(m, lr=0.1, layer_decay=0.5), r"layer_decay found no repeated blocks"),
        (lambda m: xfreeze.optimizer(m, "adam", lr=0.1, nesterov=True), r"nesterov= is not an option of name='adam'"),
    ],
)
def test_bad_optimizer_arguments(fw, call, message):
    model = fw.build(CNN)
    with pytest.raises(XFreezeError, match=message):
        call(model)


def test_nothing_trainable_is_an_error(fw):
    model = fw.build(CNN)
    xfreeze.freeze(model, "*")
    with pytest.raises(XFreezeError, match="has no trainable parameters to optimize"):
        xfreeze.optimizer(model, "sgd", lr=0.1)


def test_optimizer_trains_and_frozen_stays(fw):
    model = fw.build(CNN)
    fw.load(model, random_state(CNN, "float32", 0))
    xfreeze.freeze(model, "0", "1")
    opt = xfreeze.optimizer(model, "adamw", lr=1e-2, weight_decay=0.1)
    before = fw.state(model)
    for step in range(2):
        x, y = batch(CNN, "float32", step)
        fw.train_step(model, opt, fw.tensor(x), fw.labels(y))
    after = fw.state(model)
    assert np.array_equal(before["0.weight"], after["0.weight"])
    assert not np.array_equal(before["3.weight"], after["3.weight"])


@pytest.mark.classic_stack("paddle")  # PaddleNLP ERNIE on the Paddle side
def test_layer_decay_on_real_ernie(fw):
    """transformers (encoder.layer.N) and PaddleNLP (encoder.layers.N) ERNIE: the same rates per depth."""
    config = dict(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    text, layer = fw.zoo.text, f"ernie.{fw.zoo.encoder_layers}"
    model = text.ErnieForSequenceClassification(text.ErnieConfig(**config))
    rates = {n: g["lr"] for g in xfreeze.param_groups(model, lr=1.0, layer_decay=0.5) for n in g["names"]}
    assert rates["ernie.embeddings.word_embeddings.weight"] == 0.5**4
    assert {rates[n] for n in rates if n.startswith(f"{layer}.0.")} == {0.5**3}
    assert {rates[n] for n in rates if n.startswith(f"{layer}.2.")} == {0.5}
    assert rates["classifier.weight"] == 1.0 and rates["ernie.pooler.dense.weight"] == 1.0


# --- issue 18: numbers of any spelling; the no-decay conventions of timm ---------------------------------------


@pytest.mark.parametrize("lr", [1, np.int64(1), np.float32(0.25), np.float64(0.5)])
def test_an_int_or_numpy_rate_builds_in_both_frameworks(fw, lr):
    model = fw.build(CNN)
    opt = xfreeze.optimizer(model, "sgd", lr=lr, momentum=0, weight_decay=0, lr_mult={"8": 2})
    assert sorted(adapter_for(model).group_lrs(opt)) == pytest.approx([float(lr), 2 * float(lr)])
    x, y = batch(CNN, "float32", 0)
    fw.train_step(model, opt, fw.tensor(x), fw.labels(y))  # the framework took the rate as a float
    assert xfreeze.check(model, opt).ok


@pytest.mark.parametrize("lr", [True, np.bool_(True)])
def test_a_bool_rate_is_refused(fw, lr):
    model = fw.build(CNN)
    before = state_hash(model)
    with pytest.raises(XFreezeError, match=r"lr must be a number > 0, not a bool\. Received: lr=(np\.)?True"):
        xfreeze.optimizer(model, "sgd", lr=lr)
    with pytest.raises(XFreezeError, match=r"lr must be a number"):
        xfreeze.param_groups(model, lr=lr)
    assert state_hash(model) == before


def _with_tokens(fw, keywords=()):
    """A model with a ViT's pos_embed / cls_token that names them in no_weight_decay(), timm's way."""

    class Tokens(fw.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = fw.new_parameter(self, (1, 3, 4))
            self.cls_token = fw.new_parameter(self, (1, 1, 4))
            self.proj = fw.linear(4, 4)

        def no_weight_decay(self):
            return {"pos_embed", "cls_token", "reg_token"}  # timm lists tokens a model may lack

        def no_weight_decay_keywords(self):
            return set(keywords)

    return Tokens()


def _decayed(groups) -> set:
    return {n for g in groups if g["weight_decay"] for n in g["names"]}


def test_the_models_own_no_weight_decay_list_is_honoured(fw):
    model = _with_tokens(fw)
    assert _decayed(xfreeze.param_groups(model, lr=0.1, weight_decay=0.05)) == {"proj.weight"}
    off = xfreeze.param_groups(model, lr=0.1, weight_decay=0.05, model_no_decay=False)
    assert _decayed(off) == {"pos_embed", "cls_token", "proj.weight"}


def test_no_weight_decay_keywords_and_a_submodule_of_your_own_model(fw):
    class Outer(fw.Module):
        def __init__(self):
            super().__init__()
            self.backbone = _with_tokens(fw, keywords={"proj.w"})
            self.head = fw.linear(4, 2)

    model = Outer()
    assert _decayed(xfreeze.param_groups(model, lr=0.1, weight_decay=0.05)) == {"head.weight"}


def test_groups_a_stage_adds_keep_the_models_list(fw):
    model = _with_tokens(fw)
    xfreeze.freeze(model, "pos_embed", "cls_token")
    opt = xfreeze.optimizer(model, "adamw", lr=0.1, weight_decay=0.05)
    xfreeze.StagedUnfreeze(model, opt, [xfreeze.Stage(0), xfreeze.Stage(1, unfreeze=["*"], lr=0.01)]).step(1)
    decays = {r.name: r.weight_decay for r in xfreeze.param_table(model, opt).rows}
    assert decays["pos_embed"] == decays["cls_token"] == 0.0 and decays["proj.weight"] == pytest.approx(0.05)


@pytest.mark.parametrize("answer, message", [(None, "raised"), ([1, 2], "must return parameter names")])
def test_a_broken_no_weight_decay_is_refused_with_the_way_out(fw, answer, message):
    model = _with_tokens(fw)
    type(model).no_weight_decay = (lambda self: 1 / 0) if answer is None else (lambda self: answer)
    with pytest.raises(
        XFreezeError, match=rf"(?s)Tokens\.no_weight_decay\(\) of Tokens .*{message}.*model_no_decay=False"
    ):
        xfreeze.optimizer(model, "adamw", lr=0.1, weight_decay=0.05)
    opt = xfreeze.optimizer(model, "adamw", lr=0.1, weight_decay=0.05, model_no_decay=False)
    assert len(adapter_for(model).optimizer_param_ids(opt)) == 4


def test_no_decay_1d_is_timms_rule_and_off_by_default(fw):
    model = fw.build(BLOCKS)
    model.gamma = fw.new_parameter(model, (3,))  # a LayerScale-like gain: 1-D, neither a bias nor a norm
    assert "gamma" in _decayed(xfreeze.param_groups(model, lr=0.1, weight_decay=0.05))
    timm_rule = xfreeze.param_groups(model, lr=0.1, weight_decay=0.05, no_decay_1d=True)
    assert _decayed(timm_rule) == {"0.0.weight", "1.0.weight", "2.0.weight", "3.weight"}
    with pytest.raises(XFreezeError, match=r"no_decay_1d must be True or False\. Received: no_decay_1d='yes'"):
        xfreeze.param_groups(model, lr=0.1, no_decay_1d="yes")


def test_a_timm_vit_decays_what_timm_decays():
    """timm's own param_groups_weight_decay (no_weight_decay() + 1-D rule) against xfreeze with no_decay_1d."""
    from timm.models.vision_transformer import VisionTransformer
    from timm.optim import param_groups_weight_decay

    vit = VisionTransformer(
        img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3, init_values=1e-5
    )
    names = {id(p): n for n, p in vit.named_parameters()}
    timm_groups = param_groups_weight_decay(vit, 0.05, no_weight_decay_list=vit.no_weight_decay())
    timm_decayed = {names[id(p)] for g in timm_groups if g["weight_decay"] for p in g["params"]}
    assert _decayed(xfreeze.param_groups(vit, lr=1e-3, weight_decay=0.05, no_decay_1d=True)) == timm_decayed
    default = _decayed(xfreeze.param_groups(vit, lr=1e-3, weight_decay=0.05))
    assert not {"pos_embed", "cls_token"} & default  # the model's list, honoured by default
    assert default - timm_decayed == {
        "blocks.0.ls1.gamma",
        "blocks.0.ls2.gamma",
        "blocks.1.ls1.gamma",
        "blocks.1.ls2.gamma",
    }

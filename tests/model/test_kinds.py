"""Kinds beyond the frameworks' own classes (issue 11): the registry of third-party classes, the structural norm
rule, type:linear over Conv1D / MultiheadAttention in_proj / Linear3D, and no_decay never decaying a norm quietly."""

import ast
import pathlib
import warnings

import pytest

import xfreeze
from xfreeze.model.view import view_of

TEXT = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)


def _llama(fw):
    text = fw.zoo.text
    return text.LlamaForCausalLM(text.LlamaConfig(**TEXT, num_key_value_heads=1))


def _family(fw, family):
    """The same configuration in transformers and PaddleNLP (options one library needs are given to both)."""
    text = fw.zoo.text
    build = {
        "t5": lambda: text.T5Model(
            text.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2)
        ),
        "deberta": lambda: text.DebertaModel(text.DebertaConfig(**TEXT)),
        "mobilebert": lambda: text.MobileBertModel(
            text.MobileBertConfig(
                **dict(TEXT, hidden_size=32), embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16
            )
        ),
    }
    return build[family]()


@pytest.mark.classic_stack("paddle")  # its Paddle model is PaddleNLP's
def test_rmsnorm_is_a_norm_and_never_decayed(fw):
    model = _llama(fw)
    norms = xfreeze.select(model, "type:norm")
    assert len(norms) == 3 and all("norm" in n for n in norms)  # two per layer and the final one
    groups = xfreeze.param_groups(model, lr=1e-3, weight_decay=0.1)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    assert not decayed & set(norms)
    rows = {r.name: r.kind for r in xfreeze.summary(model, print_table=False).rows}
    assert any(kind == "norm" and "norm" in name for name, kind in rows.items())


@pytest.mark.parametrize("arch", ["qwen2", "mistral", "gemma"])
def test_transformers_rmsnorm_family(arch):
    import transformers as T

    config = getattr(T, {"qwen2": "Qwen2Config", "mistral": "MistralConfig", "gemma": "GemmaConfig"}[arch])(
        **TEXT, num_key_value_heads=1, head_dim=8
    )
    model = getattr(T, {"qwen2": "Qwen2Model", "mistral": "MistralModel", "gemma": "GemmaModel"}[arch])(config)
    assert len(xfreeze.select(model, "type:norm")) == 3


@pytest.mark.classic_stack("paddle")  # its Paddle models are PaddleNLP's
@pytest.mark.parametrize(
    "family,cls", [("t5", "T5LayerNorm"), ("deberta", "DebertaLayerNorm"), ("mobilebert", "NoNorm")]
)
def test_third_party_norms(fw, family, cls):
    model = _family(fw, family)
    view = view_of(model)
    owners = {view.paths[view.owner[view.index[n]]] for n in xfreeze.select(model, "type:norm")}
    classes = {type(view.modules[view.module_index[p]]).__name__ for p in owners}
    assert cls in classes, classes


def test_type_linear_covers_conv1d_and_in_proj():
    import torch
    import transformers as T

    gpt2 = T.GPT2Model(T.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2))
    assert xfreeze.select(gpt2, "type:linear") == [
        "h.0.attn.c_attn.weight",
        "h.0.attn.c_attn.bias",
        "h.0.attn.c_proj.weight",
        "h.0.attn.c_proj.bias",
        "h.0.mlp.c_fc.weight",
        "h.0.mlp.c_fc.bias",
        "h.0.mlp.c_proj.weight",
        "h.0.mlp.c_proj.bias",
    ]
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32)
    assert {"self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight"} <= set(
        xfreeze.select(layer, "type:linear")
    )
    # in_proj is linear for selection and conversion, never a head: only the attention's out_proj is a Linear
    assert xfreeze.model.head.find_heads(view_of(torch.nn.Sequential(torch.nn.MultiheadAttention(16, 2)))) == [
        "0.out_proj"
    ]


@pytest.mark.classic_stack  # PaddleNLP 2.8.1
def test_type_linear_covers_paddlenlp_linear3d():
    import paddle
    from paddlenlp.transformers.attention_utils import Linear3D

    class Block(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.query = Linear3D(16, 2, 8)

    assert xfreeze.select(Block(), "type:linear") == ["query.weight", "query.bias"]


def _module(fw, name, params, forward):
    def init(self):
        fw.Module.__init__(self)
        for pname, size in params:
            setattr(self, pname, fw.new_parameter(self, size))

    return type(name, (fw.Module,), {"__init__": init, "forward": forward})


def _rms_forward(self, x):
    return x * (x.pow(2).mean(-1, keepdim=True) + 1e-6).rsqrt() * self.weight


def _scale_forward(self, x):
    return x * self.weight


def test_structural_norm_rule(fw):
    cases = {  # class name, direct parameters, forward -> norm?
        "Gain": ([("weight", 4)], _rms_forward, True),  # forward computes a statistic
        "ScaleNorm": ([("weight", 4), ("bias", 4)], _scale_forward, True),  # the name says it
        "PerChannelScale": ([("weight", 4)], _scale_forward, False),  # 1-D weight, does not normalize
        "LayerScale": ([("gamma", 4)], _scale_forward, False),  # not a "weight"
        "TwoWeights": ([("weight", 4), ("bias", 3)], _rms_forward, False),  # bias of another length
    }
    for name, (params, forward, is_norm) in cases.items():
        module = _module(fw, name, params, forward)()
        model = fw.nn.Sequential(fw.nn.Linear(4, 4), module)
        assert (view_of(model).kinds[2] == "norm") is is_norm, name


def test_unrecognised_norm_like_is_warned_not_decayed_quietly(fw):
    class AdaptiveNorm(fw.Module):  # a norm with a projection inside: the structural rule refuses it
        def __init__(self):
            super().__init__()
            self.proj = fw.linear(4, 4)
            self.weight = fw.new_parameter(self, 4)

    model = fw.nn.Sequential(fw.nn.Linear(4, 4), AdaptiveNorm())
    with pytest.warns(
        UserWarning,
        match=r"look like norm weights that no kind recognises \(1\.weight\).*\n"
        r"HINT: add them to no_decay",
    ):
        xfreeze.param_groups(model, lr=1e-3, weight_decay=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xfreeze.param_groups(model, lr=1e-3, weight_decay=0.1, no_decay=("*.bias", "1.weight"))


def test_kind_registry_imports_no_framework():
    source = pathlib.Path(xfreeze.__file__).parent.parent / "backends" / "kinds.py"
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"torch", "paddle", "transformers", "paddlenlp", "timm"}

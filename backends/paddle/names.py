"""Paddle's naming and layouts against the neutral (torch-ecosystem) naming.

* Linear weights are ``[in, out]``; BatchNorm statistics are ``_mean`` / ``_variance``.
* An Embedding's ``padding_idx`` row is forced to output zeros (torch returns the stored row).
* paddle.vision ResNet / VGG / MobileNetV2 share torchvision's names; PaddleNLP ``ErnieModel`` names its encoder
  like ``paddle.nn.TransformerEncoder``. The other paddle.vision twins of torchvision models (AlexNet, SqueezeNet,
  ShuffleNetV2, MobileNetV3, DenseNet, InceptionV3) name every module differently but hold the same modules in the
  same order: they convert module by module when the target model is given (``_convert._aligned``).
* paddle.vision AlexNet and SqueezeNet use ``Dropout(mode="downscale_in_infer")``: at inference they multiply the
  classifier's input by 1 - p = 0.5 (InceptionV3: 0.8), where torchvision's Dropout does nothing. The next layer's
  weight is stored as the neutral one / (1 - p) so both compute the same thing in eval and in training.
* PaddleFormers (PaddleNLP's successor for LLMs) names its decoders like transformers (``model.layers.N...``), every
  Linear ``[in, out]`` but the ``LMHead``, which keeps ``[vocab, hidden]`` (map ``"paddleformers"``: Llama, Phi3,
  whose fused ``qkv_proj``/``gate_up_proj`` are fused alike in transformers). ERNIE 4.5 and Gemma3 also fuse
  ``q/k/v_proj`` into ``qkv_proj`` (interleaved per key-value head) and ``gate_proj``/``up_proj`` into
  ``up_gate_proj`` (map ``"ernie4_5"``). These follow PaddleFormers' own HF<->Paddle rules (``_gen_aoa_config`` of
  each model class: ``^T`` on every Linear but ``lm_head``, ``fused_qkv`` with ``num_heads`` /
  ``num_key_value_groups``, ``fused_ffn``; Phi3's ``fused_qkv_old`` is the identity on one device).
"""

from ..kinds import FUSED_LINEARS
from ..naming import Fusion, Naming, ValueRule

ARCH_MAPS = {
    "resnet": [],
    # transformers LlamaForCausalLM <-> PaddleNLP: same modules, same rotary layout (rotate_half) and q/k order
    # (PaddleNLP's own _get_name_mappings only transposes); the base model is "llama." instead of "model."
    "llama": [("model.", "llama.")],
    "paddleformers": [],  # transformers' names
    "ernie4_5": [],  # transformers' names, with FUSIONS
    "ernie": [
        ("embeddings.LayerNorm.", "embeddings.layer_norm."),
        ("encoder.layer.{i}.attention.self.query.", "encoder.layers.{i}.self_attn.q_proj."),
        ("encoder.layer.{i}.attention.self.key.", "encoder.layers.{i}.self_attn.k_proj."),
        ("encoder.layer.{i}.attention.self.value.", "encoder.layers.{i}.self_attn.v_proj."),
        ("encoder.layer.{i}.attention.output.dense.", "encoder.layers.{i}.self_attn.out_proj."),
        ("encoder.layer.{i}.attention.output.LayerNorm.", "encoder.layers.{i}.norm1."),
        ("encoder.layer.{i}.intermediate.dense.", "encoder.layers.{i}.linear1."),
        ("encoder.layer.{i}.output.dense.", "encoder.layers.{i}.linear2."),
        ("encoder.layer.{i}.output.LayerNorm.", "encoder.layers.{i}.norm2."),
    ],
}

_HALF_AT_INFERENCE = "paddle.vision {} scales the input of {} by 0.5 at inference (Dropout downscale_in_infer)"
VALUE_RULES = (
    ValueRule(
        when=("_conv1._conv.weight", "_fc6.weight", "_fc7.weight", "_fc8.weight"),
        key=r"_fc[67]\.weight",
        scale=2.0,
        why=_HALF_AT_INFERENCE.format("AlexNet", "_fc6 and _fc7"),
    ),
    ValueRule(
        when=("_conv9.weight", "_conv1._conv_path2._conv.weight"),
        key=r"_conv9\.weight",
        scale=2.0,
        why=_HALF_AT_INFERENCE.format("SqueezeNet", "_conv9"),
    ),
    ValueRule(
        when=("inception_stem.conv_1a_3x3.0.weight", "fc.weight"),
        key=r"fc\.weight",
        scale=1.25,
        why=_HALF_AT_INFERENCE.replace("0.5", "0.8").format("InceptionV3", "fc"),
    ),
)

_LM_HEAD = (r"(^|\.)lm_head\.weight$",)  # PaddleFormers' LMHead: [vocab, hidden]
FUSIONS = {
    "ernie4_5": (
        Fusion("self_attn.qkv_proj", tuple(f"self_attn.{p}" for p in FUSED_LINEARS["qkv_proj"]), by_heads=True),
        Fusion("mlp.up_gate_proj", tuple(f"mlp.{p}" for p in FUSED_LINEARS["up_gate_proj"])),
    )
}

NAMING = Naming(
    framework="paddle",
    stat_names={"running_mean": "_mean", "running_var": "_variance"},
    linear_layout="in_out",
    wrapper_prefixes=("_layers.",),
    padding_row="zero_output",
    arch_maps=ARCH_MAPS,
    key_signals=(r"\._(mean|variance)$", r"(^|\.)encoder\.layers\.\d+\.self_attn\.q_proj\.", r"^llama\.layers\.\d+\."),
    value_rules=VALUE_RULES,
    arch_signals={
        "llama": r"^llama\.layers\.\d+\.",
        "paddleformers": r"^model\.layers\.\d+\.",
        "ernie4_5": r"^model\.layers\.\d+\.mlp\.up_gate_proj\.",  # Phi3's qkv_proj is not interleaved
    },
    other_layout={"paddleformers": _LM_HEAD, "ernie4_5": _LM_HEAD},
    fusions=FUSIONS,
    arch_differences=(
        (
            ("_conv.weight", "_fc_out.weight", "_out1.weight", "_out2.weight"),
            "paddle.vision GoogLeNet is the 2014 original (conv biases, no BatchNorm, two aux heads always built); "
            "torchvision GoogLeNet has a BatchNorm after every conv",
        ),
    ),
)

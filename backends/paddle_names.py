"""Paddle's naming and layouts against the neutral (torch-ecosystem) naming.

* Linear weights are ``[in, out]``; BatchNorm statistics are ``_mean`` / ``_variance``.
* An Embedding's ``padding_idx`` row is forced to output zeros (torch returns the stored row).
* paddle.vision ResNet / VGG / MobileNetV2 share torchvision's names; PaddleNLP ``ErnieModel`` names its encoder
  like ``paddle.nn.TransformerEncoder``.
"""
from .naming import Naming

ARCH_MAPS = {
    "resnet": [],
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

NAMING = Naming(
    framework="paddle",
    stat_names={"running_mean": "_mean", "running_var": "_variance"},
    linear_layout="in_out",
    wrapper_prefixes=("_layers.",),
    padding_row="zero_output",
    arch_maps=ARCH_MAPS,
    key_signals=(r"\._(mean|variance)$", r"(^|\.)encoder\.layers\.\d+\.self_attn\.q_proj\."),
)

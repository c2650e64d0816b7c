"""torch's naming is the neutral one: only what has no counterpart elsewhere is described here."""

from ..naming import Naming, ValueRule

# torchvision Inception3's BatchNorms use eps=1e-3 (paddle.vision's and the neutral one: 1e-5): its running variance
# is stored 0.00099 below the neutral value so that var + eps is the same number in both
VALUE_RULES = (
    ValueRule(
        when=("Conv2d_1a_3x3.bn.running_var", "Mixed_7c.branch_pool.bn.running_var"),
        key=r"(Conv2d_|Mixed_|AuxLogits\.).*\bbn\.running_var",
        shift=-(1e-3 - 1e-5),
        why="torchvision Inception3 BatchNorm eps is 1e-3, paddle.vision's 1e-5 (folded into the variance)",
    ),
)

ARCH_DIFFERENCES = (
    (
        ("features.6.squeeze.weight", "features.12.expand3x3.weight"),
        "torchvision SqueezeNet 1.1's first conv has no padding, paddle.vision's pads by 1: every output differs even "
        "with identical weights",
    ),
    (
        ("features.3.squeeze.weight", "features.5.squeeze.weight", "features.12.expand3x3.weight"),
        "torchvision SqueezeNet 1.0 max-pools with ceil_mode=True, paddle.vision floors: outputs are equal only at "
        "input sizes where every pooled map has odd size (227x227 is one)",
    ),
    (
        ("conv1.conv.weight", "conv1.bn.weight", "inception3a.branch1.conv.weight"),
        "torchvision GoogLeNet puts a BatchNorm after every conv (no conv bias) and has optional aux heads of two "
        "linears; paddle.vision GoogLeNet is the 2014 original: conv biases, no BatchNorm, aux heads always present",
    ),
)

NAMING = Naming(
    framework="torch",
    linear_layout="out_in",
    padding_row="stored",
    wrapper_prefixes=("module.", "_orig_mod."),
    own_only_leaves=("num_batches_tracked",),
    leaf_aliases={"gamma": "weight", "beta": "bias"},
    alias_modules=("LayerNorm",),
    key_signals=(
        r"\.running_(mean|var)$",
        r"\.num_batches_tracked$",
        r"(^|\.)attention\.self\.query\.",
        r"^model\.layers\.\d+\.(self_attn|mlp)\.",
    ),  # transformers decoder LMs (PaddleNLP: "llama.")
    value_rules=VALUE_RULES,
    arch_differences=ARCH_DIFFERENCES,
)

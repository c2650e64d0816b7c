"""torch's naming is the neutral one: only what has no counterpart elsewhere is described here."""
from .naming import Naming

NAMING = Naming(
    framework="torch",
    linear_layout="out_in",
    padding_row="stored",
    wrapper_prefixes=("module.", "_orig_mod."),
    own_only_leaves=("num_batches_tracked",),
    leaf_aliases={"gamma": "weight", "beta": "bias"},
    alias_modules=("LayerNorm",),
    key_signals=(r"\.running_(mean|var)$", r"\.num_batches_tracked$", r"(^|\.)attention\.self\.query\."),
)

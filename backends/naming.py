"""How each framework names and lays out weights, relative to one neutral naming (data only; imports no framework).

The neutral naming is the one the torch ecosystem uses (torchvision, transformers): ``conv1.weight``,
``bn1.running_mean``, Linear weights ``[out, in]``, ``encoder.layer.N.attention.self.query``. Each framework
describes itself once against it: a converter between frameworks A and B goes A -> neutral -> B, so a third
framework needs one :class:`Naming`, not one map per pair.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Naming:
    framework: str
    # neutral statistic leaf -> this framework's leaf (BatchNorm running statistics)
    stat_names: dict = field(default_factory=dict)
    # "out_in" (torch: Linear weight [out, in]) or "in_out" (Paddle: [in, out])
    linear_layout: str = "out_in"
    # "stored": an Embedding returns its padding row as stored; "zero_output": the framework outputs zeros there
    padding_row: str = "stored"
    # state leaves with no counterpart elsewhere (torch's num_batches_tracked): dropped when converting away
    own_only_leaves: tuple = ()
    # old leaf names read as today's ({"gamma": "weight"} of TF-era BERT LayerNorms), only under these modules
    leaf_aliases: dict = field(default_factory=dict)
    alias_modules: tuple = ()
    # architecture -> [(neutral fragment, this framework's fragment)]; {i} is a layer number
    arch_maps: dict = field(default_factory=dict)
    # prefixes that wrappers put in front of every state key (DDP "module.", Paddle DataParallel "_layers.")
    wrapper_prefixes: tuple = ()
    # regular expressions (re.search) for keys only this framework's naming has: whose checkpoint it is, from keys
    key_signals: tuple = ()
    # values this framework stores differently from the neutral convention, for architectures told by their keys
    value_rules: tuple = ()
    # (keys that identify an architecture, how this framework's version of it computes differently from its twin)
    arch_differences: tuple = ()
    # architecture -> regular expressions (re.search) of keys telling this framework's version of it: which map to
    # use when several place the same keys (PaddleFormers' "model.layers.N" vs PaddleNLP's "llama.layers.N")
    arch_signals: dict = field(default_factory=dict)
    # architecture -> regular expressions (re.search) of Linear weights kept in the other layout than
    # ``linear_layout`` (PaddleFormers' LMHead keeps torch's [vocab, hidden]); a given model's modules say it first
    other_layout: dict = field(default_factory=dict)
    # architecture -> :class:`Fusion` s: neutral Linear layers this framework keeps as one
    fusions: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Fusion:
    """This framework keeps the neutral Linear layers ``parts`` as the one layer ``fused``: weights and biases joined
    along the output axis, one after the other, or, ``by_heads``, query/key/value interleaved per key-value head
    (PaddleFormers' ``fused_qkv``: for each key-value head g, the query heads of its group, key head g, value head g;
    the layer's output reshapes to ``[kv_heads, (heads / kv_heads + 2) * head_dim]``).

    Fragments are module names as the arch map leaves them (``self_attn.qkv_proj``), matched after a dot or at the
    start of a key. Splitting and joining are permutations of the same bits: exact in every dtype.
    """

    fused: str
    parts: tuple
    by_heads: bool = False


@dataclass(frozen=True)
class ValueRule:
    """This framework stores the tensors at ``key`` as ``neutral * scale + shift``, in the models whose state has
    every key of ``when`` (so that the rule applies to one architecture, never to a look-alike name elsewhere).

    Used for what a name map cannot say: a norm epsilon other than the neutral 1e-5 (folded into the running
    variance), a Dropout that scales at inference instead of at training (folded into the next layer's weight).
    """

    when: tuple  # keys (this framework's names) that identify the architecture; all must be present
    key: str  # regular expression (re.fullmatch) on this framework's key
    scale: float = 1.0
    shift: float = 0.0
    why: str = ""


def naming(framework: str) -> Naming:
    from . import FRAMEWORKS

    return importlib.import_module(FRAMEWORKS[framework].naming, package=__package__).NAMING

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


NAMINGS = {"torch": ".torch_names", "paddle": ".paddle_names"}


def naming(framework: str) -> Naming:
    return importlib.import_module(NAMINGS[framework], package=__package__).NAMING

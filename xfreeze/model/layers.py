"""Layer indices for layer-wise learning-rate decay, derived from the model's structure.

The "layers" are the repeated blocks of the model: transformer encoder layers (``encoder.layer.N`` in transformers
BERT/ERNIE, ``encoder.layers.N`` in PaddleNLP, ``blocks.N`` in timm, ``encoder.layers.encoder_layer_N`` in
torchvision ViT) or ResNet stages (``layer1`` .. ``layer4``). Found as the shallowest module whose children are named
``<prefix><number>`` with one prefix, at least two of them, each a block (a module with submodules) holding parameters.
Parameters before the first block (stem, embeddings) get index 0, block k gets k + 1, the rest (head, pooler) n + 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.errors import XFreezeError

_NUMBERED = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True)
class LayerMap:
    blocks: list[str]  # module paths of the blocks, in order
    ids: dict[str, int]  # parameter name -> layer index (0 .. len(blocks) + 1)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def scale(self, name: str, decay: float) -> float:
        return decay ** (self.num_layers + 1 - self.ids[name])


def find_blocks(view) -> list[str]:
    """Module paths of the model's repeated blocks, in order (empty when it has none)."""
    children: dict[int, list[int]] = {}
    for i, parent in enumerate(view.parent.tolist()):
        if parent >= 0:
            children.setdefault(parent, []).append(i)
    holds = _holds_params(view)
    best: tuple | None = None
    for mi, kids in children.items():
        groups: dict[str, list[tuple[int, str]]] = {}
        for child in kids:
            path = view.paths[child]
            m = _NUMBERED.match(path.rpartition(".")[2])
            if m and child in children and holds[child]:
                groups.setdefault(m.group(1), []).append((int(m.group(2)), path))
        for members in groups.values():
            if len(members) >= 2:
                path = view.paths[mi]
                depth = path.count(".") + (1 if path else 0)
                key = (depth, -len(members))
                if best is None or key < best[0]:
                    best = (key, [p for _, p in sorted(members)])
    return best[1] if best else []


def _holds_params(view) -> list:
    """Per module: whether it or a module inside it owns parameters."""
    holds = [bool(view.direct(i)) for i in range(len(view.paths))]
    for i in range(len(holds) - 1, 0, -1):  # children come after their parents
        parent = int(view.parent[i])
        if holds[i] and parent >= 0:
            holds[parent] = True
    return holds


def layer_map(view) -> LayerMap:
    """The layer index of every parameter of ``view``; raises when the model has no repeated blocks."""
    blocks = find_blocks(view)
    if not blocks:
        raise XFreezeError(
            f"layer_decay found no repeated blocks in {view.label}: it looks "
            "for encoder layers (encoder.layer.N, encoder.layers.N, blocks.N) or stages (layer1..layerN). "
            "Use lr_mult patterns instead, or pass layer_decay=None"
        )
    # the blocks are siblings ("<parent>.<prefix><n>", the last part without dots): a name's block is found by one
    # dictionary lookup of "<parent>.<its next part>", not by trying every block (quadratic at 100k tensors)
    index_of = {b: i for i, b in enumerate(blocks)}
    parent = blocks[0].rpartition(".")[0]
    lead = parent + "." if parent else ""
    ids, seen_block = {}, False
    for name in view.names:
        index = None
        if name.startswith(lead):
            part, dot, _ = name[len(lead) :].partition(".")
            index = index_of.get(lead + part) if dot else None
        if index is not None:
            ids[name], seen_block = index + 1, True
        else:
            ids[name] = len(blocks) + 1 if seen_block else 0
    return LayerMap(blocks, ids)

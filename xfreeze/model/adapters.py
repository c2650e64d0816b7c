"""Adapter weights in the model view: which tensors are LoRA weights (``type:adapter``), and per-layer rank and scaling.

PEFT models and PaddleFormers ``LoRAModel`` are seen through like other wrappers (``backends/*/model.py``), and both
show one naming: the base model's names, each adapter weight a leaf of the layer it adapts::

    model.layers.0.self_attn.q_proj.weight      the base weight (PEFT's ``q_proj.base_layer.weight``)
    model.layers.0.self_attn.q_proj.lora_A      PEFT ``q_proj.lora_A.default.weight`` [r, in]; Paddle [in, r]
    model.layers.0.self_attn.q_proj.lora_B      PEFT ``q_proj.lora_B.default.weight`` [out, r]; Paddle [r, out]

PEFT's adapter name is dropped while a layer holds one adapter, and kept (``q_proj.lora_A.<name>``) when it holds
several. The kind ``adapter`` belongs to tensors, not modules (a LoRA layer owns its base weight too), so
``type:adapter`` matches by tensor here (``select.Pattern.name_hits`` asks :func:`tensor_kind_hits`).
"""

from __future__ import annotations

import weakref

import numpy as np

from ..backends import kinds as _kinds

ADAPTER = _kinds.ADAPTER
TENSOR_KINDS = (ADAPTER,)

_masks: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def lora_mask(view) -> np.ndarray:
    """Which of the view's parameters are adapter weights (a LoRA leaf of a PEFT / PaddleFormers layer); cached."""
    mask = _masks.get(view)
    if mask is None:
        layers = [_kinds.adapter_layer(type(m)) for m in view.modules]
        mask = np.fromiter(
            (
                layers[mi] and _kinds.adapter_leaf(name[len(view.paths[mi]) + 1 if view.paths[mi] else 0 :])
                for name, mi in zip(view.names, view.owner)
            ),
            dtype=bool,
            count=len(view.names),
        )
        mask.flags.writeable = False
        _masks[view] = mask
    return mask


def tensor_kind_hits(view, names: list, kind: str) -> np.ndarray:
    """Which of ``names`` (the view's parameter names, or other keys) have the tensor kind ``kind``; all False for
    a module kind (those match through the modules) or for names the view does not own."""
    if kind not in TENSOR_KINDS or view is None:
        return np.zeros(len(names), dtype=bool)
    if names is view.names:
        return lora_mask(view).copy()
    chosen = {view.names[i] for i in np.flatnonzero(lora_mask(view))}
    return np.fromiter((n in chosen for n in names), dtype=bool, count=len(names))


def adapter_names(view) -> list[str]:
    """Names of the view's adapter weights, in model order."""
    return [view.names[i] for i in np.flatnonzero(lora_mask(view))]


def adapted(view) -> bool:
    """Whether the model holds adapter layers (a PEFT model, a PaddleFormers ``LoRAModel``)."""
    return any(_kinds.adapter_layer(type(m)) for m in view.modules) or any(w.startswith("Peft") for w in view.wrappers)


def layer_settings(view) -> dict:
    """``{layer path: (rank, scaling)}`` of every LoRA layer of the view (scaling as the layer applies it)."""
    out = {}
    for path, module in zip(view.paths, view.modules):
        if _kinds.adapter_layer(type(module)):
            found = _kinds.lora_settings(module)
            if found is not None:
                out[path] = found
    return out

"""Kinds of third-party module classes the frameworks do not know: a registry plus one structural rule for norms.

Imports no framework: classes are looked up by (module path prefix, class name) over the class's MRO, so a
subclass of a registered class is recognised too. ``Adapter.module_kind`` (backends/contract.py) asks the
framework's own classes (the adapter's ``KINDS``) first and this file after.

The registry (``REGISTRY``):
  * norms: the RMSNorm family (any class named ``*RMSNorm`` / ``*RmsNorm`` in transformers, PaddleNLP,
    PaddleFormers, timm: Llama, Qwen2/3, Mistral, Mixtral, Gemma/Gemma2, Phi3, GLM, Qwen2-MoE, ...), T5/mT5
    ``T5LayerNorm``, ``DebertaLayerNorm`` (both frameworks), MobileBERT ``NoNorm``, timm ``SimpleNorm``.
  * linear: transformers ``Conv1D`` (GPT-2, OpenAI-GPT, ImageGPT; its weight is ``[in, out]``), PaddleNLP
    ``Linear3D`` (BigBird; ``[in, out]`` like every Paddle Linear) and ``LlamaLMHead``, and torch's
    ``nn.MultiheadAttention``: its ``in_proj_weight`` / ``in_proj_bias`` (or ``q/k/v_proj_weight``) are the packed
    query/key/value Linear layers ([3E, E], Linear layout), so ``type:linear`` selects them with the attention
    module (its ``out_proj`` is a Linear of its own). These modules are ``linear`` for selection and conversion but
    never a classification head (``replaceable_linear``).

The structural rule for unknown norms (``looks_like_norm``): a module with **no children** whose direct parameters
are exactly a 1-D ``weight`` (plus, optionally, a 1-D ``bias`` of the same length) **and** whose class name contains
``norm`` (case-insensitive) **or** whose ``forward`` computes a statistic (its source calls ``rsqrt``, ``.var(``,
``.pow(2).mean``, ``.std(``, ``.norm(`` or ``layer_norm``/``rms_norm``). A 1-D weight alone is not enough:
PReLU, LayerScale-like gains and per-channel scales have that shape and do not normalize.
"""

from __future__ import annotations

import inspect
import re

_THIRD_PARTY = ("transformers.", "paddlenlp.", "paddleformers.", "timm.")

# (module path prefix, class name) -> kind
REGISTRY = {
    ("transformers.", "T5LayerNorm"): "norm",
    ("transformers.", "DebertaLayerNorm"): "norm",
    ("transformers.", "NoNorm"): "norm",
    ("transformers.pytorch_utils", "Conv1D"): "linear",
    ("paddlenlp.", "T5LayerNorm"): "norm",
    ("paddlenlp.", "MT5LayerNorm"): "norm",
    ("paddlenlp.", "ErnieCodeLayerNorm"): "norm",
    ("paddlenlp.", "DebertaLayerNorm"): "norm",
    ("paddlenlp.", "NoNorm"): "norm",
    ("paddlenlp.", "Linear3D"): "linear",
    ("paddlenlp.", "LlamaLMHead"): "linear",  # weight [hidden, vocab], Paddle's Linear layout
    ("paddleformers.", "Linear3D"): "linear",
    ("timm.", "SimpleNorm"): "norm",
    ("timm.", "SimpleNorm2d"): "norm",
    ("torch.nn.modules.activation", "MultiheadAttention"): "linear",
}
# class-name suffixes that are norms in every third-party library above
_SUFFIXES = (("RMSNorm", "norm"), ("RmsNorm", "norm"), ("RmsNorm2d", "norm"), ("RMSNormPipe", "norm"))
# linear-kind classes whose parameters are not one plain Linear: never a classification head
_PACKED = {"Conv1D", "Linear3D", "MultiheadAttention", "LlamaLMHead"}
_STATISTIC = re.compile(r"rsqrt|\.var\(|\bvar\(|pow\(2\)\.mean|\.std\(|\.norm\(|layer_norm|rms_norm|group_norm")

_by_type: dict = {}


def registered_kind(cls) -> str | None:
    """The registry's kind for ``cls`` (or a base class of it), else None."""
    if cls not in _by_type:
        _by_type[cls] = _lookup(cls)
    return _by_type[cls]


def _lookup(cls) -> str | None:
    for klass in cls.__mro__:
        path, name = getattr(klass, "__module__", "") or "", klass.__name__
        for (prefix, registered), kind in REGISTRY.items():
            if name == registered and path.startswith(prefix):
                return kind
        if path.startswith(_THIRD_PARTY):
            for suffix, kind in _SUFFIXES:
                if name.endswith(suffix):
                    return kind
    return None


def looks_like_norm(module, children: list, params: list) -> bool:
    """The structural rule (see the module docstring); ``params`` are ``[(local name, tensor)]``."""
    if children or not norm_shaped(params):
        return False
    return "norm" in type(module).__name__.lower() or forward_normalizes(type(module))


def norm_shaped(params: list) -> bool:
    """Exactly a 1-D ``weight`` and optionally a 1-D ``bias`` of the same length."""
    shapes = {name: tuple(tensor.shape) for name, tensor in params}
    if "weight" not in shapes or not set(shapes) <= {"weight", "bias"} or len(shapes["weight"]) != 1:
        return False
    return shapes.get("bias", shapes["weight"]) == shapes["weight"]


_forward_cache: dict = {}


def forward_normalizes(cls) -> bool:
    """Whether ``cls.forward``'s source computes a statistic (False when the source cannot be read)."""
    if cls not in _forward_cache:
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError, AttributeError):
            source = ""
        _forward_cache[cls] = bool(_STATISTIC.search(source))
    return _forward_cache[cls]


def module_kind(module, children: list, params: list) -> str | None:
    """A kind for a module its framework's own classes did not give one: the registry, then the norm rule."""
    kind = registered_kind(type(module))
    if kind is None and looks_like_norm(module, children, params):
        kind = "norm"
    return kind


def replaceable_linear(module) -> bool:
    """A linear-kind module that is one plain Linear (a head can be swapped for it)."""
    return not any(klass.__name__ in _PACKED for klass in type(module).__mro__)

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
  * PaddleFormers ``paddleformers.nn.lm_head.LMHead``: the output layer of its causal LMs, ``linear`` for selection
    and conversion, but its weight keeps torch's layout ``[vocab, hidden]`` (``LAYOUTS``; a Paddle Linear is
    ``[in, out]``) and it computes logits through PaddleFormers' own head function: never a classification head.

Fused Linear layers (``FUSED_LINEARS``): one Linear that packs several along its output axis. PaddleFormers joins
``q_proj``/``k_proj``/``v_proj`` into ``qkv_proj`` and ``gate_proj``/``up_proj`` into ``up_gate_proj`` (gate, then up)
in ERNIE 4.5 and Gemma3, where transformers keeps them apart; its ERNIE 4.5 / Gemma3 ``qkv_proj`` interleaves them
per key-value head (see ``Fusion`` in ``backends/naming.py``). Phi3 packs ``qkv_proj`` (one after the other) and
``gate_up_proj`` in both frameworks alike. They are plain Linears (kind ``linear``, never a classification head by
their place); the table says what each packs, for weight conversion (``backends/paddle/names.py``).

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
    ("paddleformers.nn.lm_head", "LMHead"): "linear",  # weight [vocab, hidden]: torch's layout (LAYOUTS)
    ("timm.", "SimpleNorm"): "norm",
    ("timm.", "SimpleNorm2d"): "norm",
    ("torch.nn.modules.activation", "MultiheadAttention"): "linear",
}
# class-name suffixes that are norms in every third-party library above
_SUFFIXES = (("RMSNorm", "norm"), ("RmsNorm", "norm"), ("RmsNorm2d", "norm"), ("RMSNormPipe", "norm"))
# linear-kind classes whose parameters are not one plain Linear: never a classification head
_PACKED = {"Conv1D", "Linear3D", "MultiheadAttention", "LlamaLMHead", "LMHead"}
# linear-kind classes whose weight is not in their framework's Linear layout: (module path prefix, class name) -> the
# layout they keep ("out_in": [out, in], torch's; "in_out": [in, out], Paddle's)
LAYOUTS = {("paddleformers.nn.lm_head", "LMHead"): "out_in"}
# fused Linear layer name -> the Linear layers it packs, in order along its output axis
FUSED_LINEARS = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "up_gate_proj": ("gate_proj", "up_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}
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


_layout_by_type: dict = {}


def weight_layout(cls) -> str | None:
    """The weight layout of a linear-kind class that differs from its framework's Linear layout (``LAYOUTS``)."""
    if cls not in _layout_by_type:
        found = None
        for klass in cls.__mro__:
            path, name = getattr(klass, "__module__", "") or "", klass.__name__
            found = found or next(
                (layout for (prefix, n), layout in LAYOUTS.items() if n == name and path.startswith(prefix)), None
            )
        _layout_by_type[cls] = found
    return _layout_by_type[cls]


# --- adapters (issue 19): the kind ``adapter`` is a tensor's, not a module's -----------------------------------------
# PEFT's LoRA layers (seen through by the torch adapter: ``q_proj.base_layer.weight`` -> ``q_proj.weight``,
# ``q_proj.lora_A.default.weight`` -> ``q_proj.lora_A``) and PaddleFormers' / PaddleNLP's ``LoRALinear`` (a Linear
# with bare ``lora_A`` / ``lora_B`` parameters) both own their adapter weights beside the base weight, so
# ``type:adapter`` selects tensors by their leaf name in a layer of these libraries, not whole modules.
ADAPTER = "adapter"
ADAPTER_LIBRARIES = ("peft.", "paddleformers.peft.", "paddlenlp.peft.")
ADAPTER_LEAVES = frozenset(("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"))
_adapter_layers: dict = {}


def adapter_layer(cls) -> bool:
    """Whether ``cls`` (or a base class) is an adapter layer of PEFT, PaddleFormers or PaddleNLP."""
    hit = _adapter_layers.get(cls)
    if hit is None:
        hit = _adapter_layers[cls] = any(
            (getattr(k, "__module__", "") or "").startswith(ADAPTER_LIBRARIES) for k in cls.__mro__
        )
    return hit


def adapter_leaf(name: str) -> bool:
    """Whether a tensor name (or a local one) is an adapter weight's: a segment is one of ``ADAPTER_LEAVES``."""
    return any(part in ADAPTER_LEAVES for part in name.split("."))


def lora_settings(module) -> tuple[int, float] | None:
    """``(rank, scaling)`` of a LoRA layer's active adapter, read from the libraries' plain attributes (PEFT: dicts
    per adapter name; PaddleFormers / PaddleNLP: numbers), else None."""
    rank, scaling = getattr(module, "r", None), getattr(module, "scaling", None)
    if isinstance(rank, dict) and isinstance(scaling, dict):
        active = next((a for a in getattr(module, "active_adapters", ()) if a in rank and a in scaling), None)
        rank, scaling = (rank[active], scaling[active]) if active is not None else (None, None)
    if isinstance(rank, int) and isinstance(scaling, (int, float)) and not isinstance(scaling, bool):
        return int(rank), float(scaling)
    return None

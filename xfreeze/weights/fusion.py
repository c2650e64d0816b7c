"""Per-key layouts and fused Linear layers in weight conversion: one framework's ``qkv_proj`` is the other's
``q/k/v_proj``; PaddleFormers' ``LMHead`` keeps torch's layout.

A Linear weight's layout is its framework's (``Naming.linear_layout``) unless the target model's module keeps
another (``backends/kinds.py`` ``LAYOUTS``) or, without a model, the architecture map says so (``other_layout``).

A :class:`~xfreeze.backends.naming.Fusion` of a framework's naming says which neutral Linear layers it keeps as one
(PaddleFormers ERNIE 4.5 / Gemma3: ``qkv_proj``, interleaved per key-value head, and ``up_gate_proj``). Converting,
a fused source tensor is split into its parts (named as the source names them, in the source's layout) before the
names and layouts are converted key by key, and the target's parts are joined after. Both are permutations of the
tensor's bits (numpy views of the raw bits, so bf16 and fp8 stay exact); the numbers of heads come from the model,
or, without one, from the ``config.json`` of the checkpoint folder the state was read from (:func:`heads_for`).
"""

from __future__ import annotations

import re

import numpy as np

from ..backends.naming import Fusion, Naming
from ..core import tensors as _tensors
from ..core.dispatch import adapter_named
from ..core.errors import XFreezeError
from ..model.view import view_of
from .statedict import StateDict


_OTHER = {"out_in": "in_out", "in_out": "out_in"}
HEAD_KEYS = ("num_attention_heads", "num_key_value_heads")


def layout(side: Naming, arch: str, key: str, targets=None) -> str:
    """The layout of ``key``'s Linear weight on ``side``: with ``targets`` (the target model's key info) its module's
    own, else the side's, flipped for the keys its ``other_layout`` names for ``arch``."""
    if targets is not None:
        return (targets.get(key) or (None, None, None))[2] or side.linear_layout
    flipped = any(re.search(p, key) for p in side.other_layout.get(arch, ()))
    return _OTHER[side.linear_layout] if flipped else side.linear_layout


def out_axis(side: Naming, arch: str, key: str, targets=None) -> int:
    """The output axis of ``key``'s 2-D Linear weight on ``side`` (0 for ``[out, in]``)."""
    return 0 if layout(side, arch, key, targets) == "out_in" else 1


def heads_of(model) -> tuple | None:
    """``(num_attention_heads, num_key_value_heads, head_dim or None)`` from the model's ``config`` (None when it
    gives none, or no model)."""
    if model is None:
        return None
    config = getattr(view_of(model).inner, "config", None)
    return _heads(lambda key: getattr(config, key, None))


def heads_in_config(config: dict) -> tuple | None:
    """The numbers of heads of a ``config.json`` (its ``text_config`` when it has none itself), as
    :func:`heads_of` gives them; key-value heads default to the attention heads, as transformers does."""
    for where in (config, config.get("text_config")):
        if isinstance(where, dict) and where.get("num_attention_heads") is not None:
            return _heads(where.get)
    return None


def heads_for(model, config: dict, where: str) -> tuple:
    """``(heads, why there are none)`` for fused query/key/value tensors: from ``model``'s config when a model is
    given, else from ``config`` (the ``config.json`` of the folder ``where`` the state was read from; ``where``
    empty: the state was not read from a folder)."""
    if model is not None:
        return heads_of(model), ""
    heads = heads_in_config(config) if config else None
    if heads is not None or not where:
        return heads, ""
    if config:
        return None, f"config.json of {where} lacks {' and '.join(HEAD_KEYS)} (nor in its text_config)"
    return None, f"{where} has no config.json (which would give {' and '.join(HEAD_KEYS)})"


def same_heads(a: tuple | None, b: tuple | None) -> bool:
    """Whether two :func:`heads_of` answers agree where both say something."""
    if a is None or b is None:
        return True
    return a[:2] == b[:2] and (a[2] is None or b[2] is None or a[2] == b[2])


def _heads(get) -> tuple | None:
    heads, kv, dim, hidden = (get(k) for k in (*HEAD_KEYS, "head_dim", "hidden_size"))
    if not _count(heads):
        return None
    kv = kv if _count(kv) else heads
    dim = dim if _count(dim) else hidden // heads if _count(hidden) and hidden % heads == 0 else None
    return heads, kv, dim


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _split_key(key: str, fusion: Fusion) -> tuple | None:
    """``(prefix, leaf)`` of a key of ``fusion.fused`` (``model.layers.0.`` and ``weight``), else None."""
    head, _, leaf = key.rpartition(".")
    if head == fusion.fused or head.endswith("." + fusion.fused):
        return head[: len(head) - len(fusion.fused)], leaf
    return None


def part_names(key: str, side: Naming, arch: str) -> list | None:
    """The keys ``key`` of a fused layer of ``side`` splits into, else None."""
    for fusion in side.fusions.get(arch, ()):
        found = _split_key(key, fusion)
        if found:
            return [f"{found[0]}{part}.{found[1]}" for part in fusion.parts]
    return None


def fused_name(key: str, side: Naming, arch: str) -> str:
    """The fused key a part key of ``side`` joins into (``key`` itself when it is no part)."""
    for fusion in side.fusions.get(arch, ()):
        for part in fusion.parts:
            found = _split_key(key, Fusion(part, ()))
            if found:
                return f"{found[0]}{fusion.fused}.{found[1]}"
    return key


def with_parts(targets: dict, side: Naming, arch: str) -> dict:
    """Target key info with each fused key's parts added (same kind and layout), so parts convert like it."""
    out = dict(targets)
    for key, info in targets.items():
        for part in part_names(key, side, arch) or ():
            out.setdefault(part, info)
    return out


def split(state: StateDict, side: Naming, arch: str, heads, axis_of, why: str = "") -> StateDict:
    """``state`` with every fused tensor replaced by its parts (in place of it, in order); ``axis_of(key)`` is the
    output axis of a 2-D weight in the source layout; ``why``: why ``heads`` is None, for the error."""
    if not side.fusions.get(arch):
        return state
    out = StateDict(framework=state.framework, format=state.format, notes=list(state.notes))
    out.metadata = state.metadata
    for key, value in state.items():
        names, fusion = part_names(key, side, arch), _fusion_of(key, side, arch)
        if names is None or fusion is None:
            out[key] = value
            continue
        raw, axis = _tensors.to_raw(value, key), _axis(value, key, axis_of)
        counts = _counts(key, raw.shape[axis], fusion, heads, len(names), why)
        for name, bits in zip(names, _unjoin(raw.bits, axis, counts, fusion.by_heads, heads)):
            out[name] = _native(bits, raw.dtype, value)
        out.notes.append((key, f"split into {', '.join(n.rpartition('.')[0].rpartition('.')[2] for n in names)}"))
    return out


def join(out: StateDict, side: Naming, arch: str, heads, axis_of, why: str = "") -> None:
    """Join, in ``out``, each complete set of a fusion's parts into the fused tensor (parts removed)."""
    for key in list(out):
        fused = fused_name(key, side, arch)
        if fused == key or fused in out:
            continue
        names, fusion = part_names(fused, side, arch), _fusion_of(fused, side, arch)
        if fusion is None or names is None or not all(n in out for n in names):
            continue
        values = [out[n] for n in names]
        raws = [_tensors.to_raw(v, n) for v, n in zip(values, names)]
        axis = _axis(values[0], fused, axis_of)
        _check_joinable(fused, names, raws, axis, fusion, heads, why)
        bits = _rejoin([r.bits for r in raws], axis, fusion.by_heads, heads)
        parts = {n: out.pop(n) for n in names}
        out[fused] = _native(bits, raws[0].dtype, parts[names[0]])
        out.notes.append((fused, f"joined from {', '.join(names)}"))


def _fusion_of(key: str, side: Naming, arch: str) -> Fusion | None:
    return next((f for f in side.fusions.get(arch, ()) if _split_key(key, f)), None)


def _axis(value, key: str, axis_of) -> int:
    return axis_of(key) if len(_tensors.shape_of(value)) == 2 else 0


def _counts(key: str, size: int, fusion: Fusion, heads, n: int, why: str = "") -> list:
    """Rows of each part along the output axis (per key-value group when ``by_heads``)."""
    if fusion.by_heads:
        if heads is None:
            raise XFreezeError(_no_heads(key, why))
        q, kv, want = heads
        if q % kv or size % (q + 2 * kv):
            raise XFreezeError(
                f"{key!r} has {size} outputs, which do not split into {q} query and 2 x {kv} key/value heads of one "
                "size: is the model's config (num_attention_heads, num_key_value_heads) the checkpoint's?"
            )
        dim = size // (q + 2 * kv)
        if want is not None and dim != want:
            raise XFreezeError(
                f"{key!r} has {size} outputs: {q} query and 2 x {kv} key/value heads of {dim}, where the config says "
                f"head_dim {want}: are num_attention_heads, num_key_value_heads and head_dim the checkpoint's?"
            )
        return [q // kv * dim, dim, dim]
    if size % n:
        raise XFreezeError(f"{key!r} has {size} outputs, which do not split into {n} equal parts")
    return [size // n] * n


def _no_heads(key: str, why: str) -> str:
    fix = (
        f"the {why}: add them there, or pass model="
        if why
        else "Pass model= (a model built from the checkpoint's config: its config gives num_attention_heads and "
        "num_key_value_heads), or convert the checkpoint folder with its config.json (xfreeze convert <folder>)"
    )
    return (
        f"{key!r} holds query, key and value interleaved per key-value head: splitting or joining it needs the "
        f"numbers of heads. {fix[0].upper()}{fix[1:]}"
    )


def _unjoin(bits: np.ndarray, axis: int, counts: list, by_heads: bool, heads) -> list:
    front = np.moveaxis(bits, axis, 0)
    groups = heads[1] if by_heads else 1
    grouped = front.reshape(groups, -1, *front.shape[1:])
    edges = np.cumsum([0, *counts])
    parts = [grouped[:, a:b].reshape(-1, *front.shape[1:]) for a, b in zip(edges[:-1], edges[1:])]
    return [np.ascontiguousarray(np.moveaxis(p, 0, axis)) for p in parts]


def _rejoin(parts: list, axis: int, by_heads: bool, heads) -> np.ndarray:
    fronts = [np.moveaxis(p, axis, 0) for p in parts]
    groups = heads[1] if by_heads else 1
    grouped = [f.reshape(groups, -1, *f.shape[1:]) for f in fronts]
    joined = np.concatenate(grouped, axis=1).reshape(-1, *fronts[0].shape[1:])
    return np.ascontiguousarray(np.moveaxis(joined, 0, axis))


def _check_joinable(fused: str, names: list, raws: list, axis: int, fusion: Fusion, heads, why: str) -> None:
    others = [i for i, r in enumerate(raws) if r.dtype != raws[0].dtype or len(r.shape) != len(raws[0].shape)]
    if others:
        raise XFreezeError(f"{names[others[0]]!r} and {names[0]!r} differ in dtype or rank: cannot join {fused!r}")
    if fusion.by_heads:
        q, kv = heads[:2] if heads is not None else (None, None)
        _counts(fused, sum(r.shape[axis] for r in raws), fusion, heads, len(raws), why)
        if raws[1].shape[axis] * q != raws[0].shape[axis] * kv or raws[1].shape != raws[2].shape:
            raise XFreezeError(
                f"{', '.join(names)} do not hold {q} query and {kv} key/value heads of one size: cannot join {fused!r}"
            )


def _native(bits: np.ndarray, dtype: str, like):
    """``bits`` as a value of the framework of ``like`` (numpy for a numpy ``like``), dtype ``dtype``."""
    backend = _tensors.backend_of(like)
    if backend is None:
        return bits
    return adapter_named(backend).from_raw(_tensors.Raw(bits, dtype))

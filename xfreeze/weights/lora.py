"""LoRA adapters across frameworks: PEFT adapter folders as a source, and the checks and rescaling that let
``load_matched`` move an unmerged adapter between a PEFT model and a PaddleFormers ``LoRAModel`` (either way).

Names: both frameworks' adapter weights are leaves of the layer they adapt (``q_proj.lora_A``, ``q_proj.lora_B``;
see ``xfreeze.model.adapters``); conversion transposes them like the layer's Linear weight (PEFT ``lora_A`` is
``[r, in]``, PaddleFormers' ``[in, r]``). A PEFT folder's keys (``base_model.model.<name>.lora_A.weight``) are read
into the same names.

Scaling: both libraries add ``scaling * B(A(x))`` with ``scaling = lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA:
PEFT ``use_rslora``, PaddleFormers ``rslora``). When the source's scaling of a layer differs from the model's,
its ``lora_B`` weights are multiplied by ``source scaling / model scaling`` so that the adapted outputs are equal,
and the report says so. A source whose scaling cannot be told (a bare state dict) is copied as it is, with a note.

Refused before anything is written (the model is left exactly as it was): adapter weights the model has no LoRA
layer for (the adapter targets other modules), a rank that differs from the model's, an adapter folder whose
config and tensors disagree, and (without ``allow_partial``) a source that adapts only some of the model's layers.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..backends.kinds import ADAPTER_LEAVES, adapter_leaf
from ..core import tensors as _tensors
from ..core.dispatch import adapter_for
from ..core.errors import XFreezeError
from ..model.adapters import lora_mask, layer_settings
from ..model.view import view_of
from .files import load_checkpoint
from .statedict import StateDict

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."


def is_adapter_folder(path) -> bool:
    """Whether ``path`` is a folder PEFT's ``save_pretrained`` wrote (it holds ``adapter_config.json``)."""
    return isinstance(path, (str, os.PathLike)) and (Path(path) / CONFIG).is_file()


def read_adapter_folder(path) -> StateDict:
    """The LoRA weights of a PEFT adapter folder under xfreeze's names, with each layer's ``(rank, scaling)``
    (``state.lora_layers``) from its ``adapter_config.json``.

    Args:
        path: a folder holding ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``.bin``).

    Returns:
        StateDict: ``{"model.layers.0.self_attn.q_proj.lora_A": tensor, ...}`` in torch's layout.

    Raises:
        XFreezeError: a config that does not parse or is not a LoRA config, no weights file, or a tensor whose rank
            disagrees with the config (each naming the file and the key).
    """
    folder = Path(path)
    config = _read_config(folder / CONFIG)
    weights = next((folder / name for name in WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise XFreezeError(f"adapter folder {str(folder)!r} holds {CONFIG} but no {' or '.join(WEIGHTS)}")
    raw = load_checkpoint(weights)
    state = StateDict(framework="torch", format=raw.format, notes=[("", f"PEFT adapter folder {str(folder)!r}")])
    for key, value in raw.items():
        state[_peft_name(key)] = value
    state.lora_layers = _folder_settings(state, config, weights)  # type: ignore[attr-defined]
    return state


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise XFreezeError(f"adapter config {str(path)!r} does not read as JSON: {exc}") from None
    kind = config.get("peft_type") if isinstance(config, dict) else None
    if kind != "LORA":
        raise XFreezeError(
            f"adapter config {str(path)!r} is not a LoRA adapter (peft_type={kind!r}); xfreeze moves LoRA adapters only"
        )
    for field in ("r", "lora_alpha"):
        value = config.get(field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise XFreezeError(f"adapter config {str(path)!r}: {field} must be a positive number. Received: {value!r}")
    return config


def _peft_name(key: str) -> str:
    """A PEFT checkpoint key under xfreeze's names: no ``base_model.model.`` prefix, ``lora_A.weight`` -> ``lora_A``."""
    key = key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
    parts = key.split(".")
    if len(parts) >= 2 and parts[-2] in ADAPTER_LEAVES and parts[-1] == "weight":
        return ".".join(parts[:-1])
    return key


def _folder_settings(state: StateDict, config: dict, weights: Path) -> dict:
    """``{layer: (rank, scaling)}`` from the config (with its ``rank_pattern`` / ``alpha_pattern``), each rank
    checked against the layer's ``lora_A``."""
    out = {}
    for key, value in state.items():
        layer, leaf = _layer_of(key)
        if leaf != "lora_A":
            continue
        rank = int(_pattern_value(config.get("rank_pattern") or {}, layer, config["r"]))
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, layer, config["lora_alpha"]))
        held = int(_tensors.shape_of(value)[0])  # PEFT: [r, in]
        if held != rank:
            raise XFreezeError(
                f"adapter file {str(weights)!r}: {key!r} holds rank {held} but {CONFIG} says r={rank}; "
                "the folder is inconsistent (re-save it with PEFT's save_pretrained)"
            )
        scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        out[layer] = (rank, scaling)
    return out


def _pattern_value(patterns: dict, layer: str, default):
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", layer):
            return value
    return default


def _layer_of(key: str) -> tuple[str, str]:
    """(layer path, adapter leaf) of an adapter weight's name; ``("", "")`` for another tensor."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part in ADAPTER_LEAVES:
            return ".".join(parts[:i]), part
    return "", ""


@dataclass
class Source:
    """What ``load_matched`` knows of its source's adapter: each LoRA layer's ``(rank, scaling)`` (None: unknown),
    how to name the source in an error, and whether a partial adapter is accepted."""

    settings: dict | None
    label: str
    allow_partial: bool


def source_of(source, state, allow_partial: bool) -> Source:
    """The :class:`Source` of a ``load_matched`` source (a model, an adapter folder's state, a file or a dict)."""
    return Source(_source_settings(source, state), _describe(source), allow_partial)


def _source_settings(source, state) -> dict | None:
    known = getattr(state, "lora_layers", None)
    if known is not None:
        return known
    if isinstance(source, (str, os.PathLike, dict)):
        return None
    try:
        adapter_for(source)
    except XFreezeError:
        return None
    return layer_settings(view_of(source))


def fit(context, state: StateDict, report) -> StateDict:
    """``state`` (already in the model's names and layouts) with each ``lora_B`` rescaled to the model's scaling;
    raises, before anything is written, when the adapter does not fit the model (see the module docstring). An
    adapter alone (a PEFT folder) leaves the base model's tensors as they are: they join ``context.ignored``."""
    incoming = [k for k in state if adapter_leaf(k)]
    if not incoming:
        return state
    view = context.view
    source = context.lora if context.lora is not None else Source(None, "the source", False)
    label, settings, allow_partial = source.label, source.settings, source.allow_partial
    own = {view.names[i] for i, hit in enumerate(lora_mask(view)) if hit}
    if not own:
        if len(incoming) == len(state):  # an adapter alone (a PEFT folder): onto a model that cannot hold it
            check_wrapped(view, incoming, label)
        return state  # a PEFT model's whole state onto a plain model: its base weights load, the adapter is unexpected
    _check_fit(view, state, incoming, own, label, allow_partial)
    if len(incoming) == len(state):
        base = {k for k in context.targets if k not in own}
        context.ignored = set(context.ignored) | base
        report.notes.append(("", f"an adapter alone: the base model's {len(base)} tensors are kept as they are"))
    return _rescaled(view, state, incoming, settings, report)


def check_wrapped(view, names: list, label: str) -> None:
    """Refuse adapter weights (``names`` with a LoRA leaf) for a model without adapter layers: it must be wrapped
    (PEFT ``get_peft_model``, PaddleFormers ``LoRAModel``) before they can be loaded."""
    found = next((n for n in names if adapter_leaf(n)), None)
    if found is not None and not lora_mask(view).any():
        raise XFreezeError(
            f"{label} holds LoRA adapter weights (e.g. {found!r}) but {view.label} has no adapter layers: wrap it "
            "first (peft.get_peft_model(model, LoraConfig(...)) or paddleformers LoRAModel(model, LoRAConfig(...)), "
            "with the adapter's rank and target modules), then load; nothing was changed"
        )


def _check_fit(view, state, incoming: list, own: set, label: str, allow_partial: bool) -> None:
    stray = [k for k in incoming if k not in own]
    if stray:
        layers = sorted({_layer_of(k)[0].rpartition(".")[2] for k in own})
        raise XFreezeError(
            f"{label}: adapter weight {stray[0]!r} has no LoRA layer in {view.label} ({len(stray)} such tensors): "
            f"the adapter targets other modules than the model's LoRA layers ({', '.join(layers)}). Wrap the model "
            "with the adapter's target_modules; nothing was changed"
        )
    for key in incoming:
        want, got = view.shapes[view.index[key]], tuple(_tensors.shape_of(state[key]))
        if want != got:
            raise XFreezeError(
                f"{label}: adapter weight {key!r} has shape {list(got)} but {view.label} holds {list(want)} there: "
                f"the ranks differ (the model's LoRA rank is {_rank(view, key)}). Wrap the model with the adapter's r; "
                "nothing was changed"
            )
    absent = sorted(own - set(incoming))
    if absent and not allow_partial:
        raise XFreezeError(
            f"{label} adapts {len(incoming)} of the {len(own)} adapter weights of {view.label}; e.g. {absent[0]!r} "
            "is not in it (the adapter targets fewer modules). Pass allow_partial=True to load it anyway; nothing "
            "was changed"
        )


def _rank(view, key: str) -> int | str:
    layer = _layer_of(key)[0]
    found = layer_settings(view).get(layer)
    return found[0] if found else "unknown"


def _rescaled(view, state: StateDict, incoming: list, settings: dict | None, report) -> StateDict:
    """Each ``lora_B`` (and ``lora_embedding_B``) times source scaling / model scaling, where they differ."""
    own = layer_settings(view)
    uniform = set((settings or {}).values())
    for key in incoming:
        layer, leaf = _layer_of(key)
        if leaf not in ("lora_B", "lora_embedding_B") or layer not in own:
            continue
        source = (settings or {}).get(layer) or (next(iter(uniform)) if len(uniform) == 1 else None)
        if source is None:
            report.notes.append((key, "LoRA scaling of the source unknown: copied as it is"))
            continue
        ratio = source[1] / own[layer][1]
        if not math.isclose(ratio, 1.0, rel_tol=1e-12):
            state[key] = state[key] * ratio  # the source's scaling * B == the model's scaling * (B * ratio)
            note = f"scaled by {ratio:g}: LoRA scaling {source[1]:g} in the source, {own[layer][1]:g} in the model"
            report.notes.append((key, note))
            report.converted.setdefault(key, []).append(note)
    return state


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"adapter source {str(source)!r}"
    return f"the source ({type(source).__name__})"

"""State dicts: :class:`StateDict`, unwrapping a file's containers into one, whose naming its keys follow, and turning a
file's raw bits into native values. Shared by the files, the formats and conversion (none of which import each other
for these)."""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from ..backends import ADAPTERS
from ..backends.naming import naming
from ..core import tensors as _tensors
from ..core.dispatch import adapter_named, installed
from ..core.errors import XFreezeError, check_choice

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "params", "weights")
PADDLE_BOOKKEEPING = "StructuredToParameterName@@"
DTYPE_ENTRY = "xfreeze@@dtypes"  # in pickles: {key: dtype} for tensors whose bits alone do not tell (fp8)
MAX_DEPTH = 8  # "state_dict"-style wrappers unwrapped at most this deep


class StateDict(dict):
    """A ``{name: tensor}`` mapping that remembers where it came from.

    Attributes:
        framework: ``"torch"``, ``"paddle"`` or None (unknown): whose names and layouts the keys follow.
        format: the file format it was read from (``"torch"``, ``"paddle"``, ``"safetensors"``, ``"npz"``) or None.
        notes: what was done to it on the way (unwrapping, conversion, ignored metadata), as ``(key, note)`` pairs;
            notes about the whole file have the key ``""``.
        metadata: what a safetensors file says of itself (its ``__metadata__``, verbatim; never trusted over the
            file's structure); empty for other formats.
        config, config_from: the ``config.json`` beside the checkpoint and the folder it was read from, when it was
            read from a folder (``save_pretrained``), else empty: :func:`xfreeze.convert` takes fused layers'
            numbers of heads from it when given no model.
        arch, unplaced, differences: set by :func:`xfreeze.convert`: the architecture map used, the keys the
            target model has no place for, and the known architecture differences it found.
    """

    def __init__(self, *args, framework=None, format=None, notes=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.framework, self.format, self.notes = framework, format, list(notes or [])
        self.metadata: dict = {}  # what a safetensors file says of itself (``__metadata__``), verbatim
        self.config: dict = {}  # the folder's config.json, when it was read from a checkpoint folder
        self.config_from = ""  # that folder, as errors name it
        self.arch: str | None = None
        self.unplaced: list = []
        self.differences: list = []


def as_state_dict(data, *, framework=None, format=None, what="the state dict") -> StateDict:
    """Unwrap ``{"state_dict": {...}, "epoch": 3}``-style containers and check keys (strings) and values (tensors).

    Paddle's ``(name, array)`` tuples become the array; Paddle's ``StructuredToParameterName@@`` bookkeeping is
    dropped. A container that holds itself is refused.
    """
    if framework is not None:
        check_choice("framework", framework, tuple(ADAPTERS))
    notes: list = []
    seen: set = set()
    while isinstance(data, dict) and not _all_tensors(data):
        if id(data) in seen or len(seen) >= MAX_DEPTH:
            raise XFreezeError(
                f"{what} holds containers that refer to themselves (or nest deeper than {MAX_DEPTH}); refused"
            )
        seen.add(id(data))
        inner = [k for k in WRAPPER_KEYS if isinstance(data.get(k), dict)]
        if not inner:
            break
        notes.append((inner[0], f"unwrapped {what}[{inner[0]!r}]"))
        data = data[inner[0]]
    if not isinstance(data, dict):
        raise XFreezeError(f"{what} holds a {type(data).__name__}, not a mapping of names to tensors")
    data = {k: untuple(v) for k, v in data.items() if k not in (PADDLE_BOOKKEEPING, DTYPE_ENTRY)}
    check_keys(data, what)
    bad = [k for k, v in data.items() if not _tensors.is_tensor(v)]
    if bad:
        shown = ", ".join(f"{k!r} ({type(data[k]).__name__})" for k in bad[:5])
        raise XFreezeError(
            f"{what} has values that are not tensors: {shown}"
            f"{' ...' if len(bad) > 5 else ''}. Pass the weights mapping itself (e.g. ckpt['model'])"
        )
    return StateDict(data, framework=framework or values_framework(data), format=format, notes=notes)


def describe(state: StateDict) -> dict:
    """Keys, shapes, dtypes and total bytes of a state dict (for ``xfreeze inspect``); any dtype, bf16 included."""
    tensors = [(k, _tensors.shape_of(v), _tensors.dtype_name(v)) for k, v in state.items()]
    nbytes = sum(_tensors.to_raw(v, k).bits.nbytes for k, v in state.items())
    return {
        "framework": state.framework,
        "format": state.format,
        "keys": len(tensors),
        "bytes": int(nbytes),
        "tensors": tensors,
        "notes": list(state.notes),
    }


def guess_framework(keys) -> str | None:
    """Whose naming ``keys`` follow, from names only one framework uses; None when they do not tell."""
    hits = {fw for fw in ADAPTERS if any(_signal(fw).search(k) for k in keys)}
    return hits.pop() if len(hits) == 1 else None


@lru_cache(maxsize=None)
def _signal(framework: str) -> re.Pattern:
    signals = naming(framework).key_signals
    return re.compile("|".join(f"(?:{s})" for s in signals) if signals else r"(?!x)x")


def check_keys(state: dict, what: str) -> None:
    """Every key a non-empty string, else one error naming the first few."""
    bad = [k for k in state if not isinstance(k, str) or not k]
    if bad:
        shown = ", ".join(f"{k!r} ({type(k).__name__})" for k in bad[:3])
        raise XFreezeError(f"{what} has keys that are not non-empty strings: {shown}; tensor names must be strings")


def values_framework(state) -> str | None:
    """The one framework all tensor values belong to, or None (numpy, mixed, empty)."""
    kinds = {_tensors.backend_of(v) for v in state.values()} - {None}
    return kinds.pop() if len(kinds) == 1 else None


def untuple(value):
    """Paddle pickles a tensor beside other objects as ``(name, array)``: the array."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], np.ndarray):
        return value[1]
    return value


def native(raw, framework, key: str):
    """numpy where numpy holds the dtype; else a tensor of ``framework`` (if installed) or any installed one."""
    if raw.dtype not in _tensors.BIT_CARRIERS:
        return raw.bits if raw.bits.flags.writeable else raw.bits.copy()
    order = [framework] + [n for n in ADAPTERS if n != framework]
    for name in order:
        if name is not None and installed(name) and raw.dtype in adapter_named(name).DTYPES:
            return adapter_named(name).from_raw(raw)
    raise XFreezeError(
        f"tensor {key!r} is {raw.dtype}, which numpy cannot hold, and no installed framework holds "
        f"it: install one of {list(ADAPTERS)}"
    )


def _all_tensors(data: dict) -> bool:
    return bool(data) and all(
        _tensors.is_tensor(untuple(v)) for k, v in data.items() if k not in (PADDLE_BOOKKEEPING, DTYPE_ENTRY)
    )

"""Shape-adapting loads: which shape mismatches ``load_matched`` adapts, and how (the kernels are in ``resample.py``).

A mismatched key is adapted only when its name and its module's kind say which case it is; anything else stays a
shape mismatch:

* **2-D position grids**: a parameter named like ``pos_embed`` (``POSITION_NAMES``) shaped ``[1, prefix + H*W, D]``
  or ``[1, H, W, D]``, with the same ``D``. The prefix tokens (class, distillation, register) are the model's
  ``num_prefix_tokens`` (none with timm's ``no_embed_class``), else the one count that makes both grids square; the
  model's grid is its ``patch_embed.grid_size`` when it has one, else square. Resampled as timm's
  ``resample_abs_pos_embed`` does (bicubic, antialiased, prefix kept).
* **1-D position tables**: the weight of an Embedding named like ``position_embeddings`` (``[P, D]``). A text
  position means "the i-th token" whatever the length: a shorter table keeps the first rows, a longer one is stretched
  linearly over the new length (position interpolation); rows up to an Embedding's ``padding_idx`` are kept as
  they are (RoBERTa's offset).
* **The first convolution** (in module order, not a transposed one) with another number of input channels (timm's
  ``adapt_input_conv``).
* **Embeddings and output layers with more rows** than the source (a grown vocabulary): an Embedding's weight, and
  the weight and bias of an output-embedding Linear (named ``lm_head`` / ``embed_out``, tied to an Embedding, or
  the model's ``get_output_embeddings()``): the old rows copied, the new ones the mean of the old. A Linear's rows are
  its outputs: the weight's axis 0 in torch, axis 1 in Paddle (``Naming.linear_layout``). Never fewer rows.
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np

from ..backends.naming import naming
from ..core import tensors as _tensors
from ..core.tensors import BIT_CARRIERS, FLOAT_DTYPES
from . import resample

POSITION_NAMES = (
    "pos_embed",
    "pos_embedding",
    "pos_embeddings",
    "position_embeddings",
    "position_embedding",
    "absolute_pos_embed",
    "wpe",
)
OUTPUT_NAMES = ("lm_head", "embed_out")
MAX_PREFIX = 16  # prefix tokens tried when a model does not say (class + distillation + registers)


class Adaptations:
    """Decides and computes adaptations for one ``load_matched`` call (reads the model view once, lazily)."""

    def __init__(self, view):
        self.view = view
        self.adapter = view.adapter

    def adapt(self, key: str, value, shape: tuple):
        """``(new value, how)`` for the source ``value`` at model key ``key`` of model shape ``shape``, or None
        when the mismatch is not one of the adapted cases."""
        if _tensors.dtype_name(value) not in FLOAT_DTYPES:
            return None
        have = _tensors.shape_of(value)
        for case in (self._grid, self._sequence, self._first_conv, self._rows):
            found = case(key, shape, have)
            if found is not None:
                compute, how = found
                return self._run(value, compute, key), how
        return None

    # --- the cases: (compute(array) -> array, how) or None -------------------------------------------------------
    def _grid(self, key, shape, have):
        path, _, leaf = key.rpartition(".")
        if leaf not in POSITION_NAMES or len(shape) != len(have) or len(shape) not in (3, 4):
            return None
        if shape[0] != 1 or have[0] != 1 or shape[-1] != have[-1]:
            return None
        if len(shape) == 4:
            old, new = tuple(have[1:3]), tuple(shape[1:3])
            return (lambda a: resample.resample_grid(a, 0, old, new)), _grid_how(old, new, 0)
        found = self._grids(path, have[1], shape[1])
        if found is None:
            return None
        prefix, old, new = found
        return (lambda a: resample.resample_grid(a, prefix, old, new)), _grid_how(old, new, prefix)

    def _grids(self, path: str, have: int, want: int):
        """(prefix, source grid, model grid) for token counts ``have`` -> ``want``, or None."""
        owner = self._attribute_owner(path, "num_prefix_tokens")
        if owner is not None:
            prefix = 0 if getattr(owner, "no_embed_class", False) else _int(owner.num_prefix_tokens)
            candidates = [prefix] if prefix is not None else []
        else:
            candidates = list(range(min(MAX_PREFIX, have, want) + 1))
        for prefix in candidates:
            old, new = _square(have - prefix), self._model_grid(path, want - prefix)
            if old is not None and new is not None:
                return prefix, old, new
        return None

    def _model_grid(self, path: str, tokens: int):
        owner = self._attribute_owner(path, "patch_embed")
        size = getattr(getattr(owner, "patch_embed", None), "grid_size", None)
        if isinstance(size, (tuple, list)) and len(size) == 2 and all(_int(n) for n in size):
            grid = (int(size[0]), int(size[1]))
            if grid[0] * grid[1] == tokens:
                return grid
        return _square(tokens)

    def _sequence(self, key, shape, have):
        path, _, leaf = key.rpartition(".")
        if leaf != "weight" or path.rpartition(".")[2] not in POSITION_NAMES or self._kind(path) != "embedding":
            return None
        if len(shape) != 2 or len(have) != 2 or shape[1] != have[1]:
            return None
        padding = self.adapter.padding_idx(self._module(path))
        prefix = padding + 1 if padding is not None and 0 <= padding < min(shape[0], have[0]) - 1 else 0
        rows = shape[0]
        how = (
            f"position table {have[0]} -> {rows} rows: "
            + ("the first rows kept" if rows < have[0] else "stretched linearly")
            + (f", {prefix} padding rows kept" if prefix else "")
        )
        return (lambda a: resample.resample_sequence(a, prefix, rows)), how

    def _first_conv(self, key, shape, have):
        path, _, leaf = key.rpartition(".")
        if leaf != "weight" or path != self._first_conv_path or len(shape) < 3 or len(shape) != len(have):
            return None
        if shape[0] != have[0] or shape[2:] != have[2:] or shape[1] == have[1]:
            return None
        channels, source = shape[1], have[1]
        how = (
            f"input channels {source} -> {channels}: "
            + ("summed" if channels == 1 else f"repeated, scaled by {source}/{channels}")
            + " (timm adapt_input_conv)"
        )
        return (lambda a: resample.adapt_input_channels(a, channels)), how

    def _rows(self, key, shape, have):
        path, _, leaf = key.rpartition(".")
        kind = self._kind(path)
        if kind == "embedding" and leaf == "weight" and path.rpartition(".")[2] not in POSITION_NAMES:
            axis = 0
        elif kind == "linear" and path in self._output_layers and leaf in ("weight", "bias"):
            axis = 0 if leaf == "bias" or naming(self.adapter.name).linear_layout == "out_in" else 1
        else:
            return None
        if len(shape) != len(have) or axis >= len(shape) or shape[axis] <= have[axis]:
            return None
        if any(a != b for i, (a, b) in enumerate(zip(shape, have)) if i != axis):
            return None
        rows = shape[axis]
        how = f"{have[axis]} -> {rows} rows: {rows - have[axis]} new rows, the mean of the old ones"
        return (lambda a: resample.grow_rows(a, axis, rows)), how

    # --- the model, read once ------------------------------------------------------------------------------------
    def _module(self, path: str):
        index = self.view.module_index.get(path)
        return None if index is None else self.view.modules[index]

    def _kind(self, path: str):
        index = self.view.module_index.get(path)
        return None if index is None else self.view.kinds[index]

    def _attribute_owner(self, path: str, attribute: str):
        """The nearest module at or above ``path`` that has ``attribute``."""
        index = self.view.module_index.get(path)
        chain = self.view.ancestors(index)[::-1] if index is not None else []
        return next((self.view.modules[i] for i in chain if hasattr(self.view.modules[i], attribute)), None)

    @cached_property
    def _first_conv_path(self):
        """The first convolution in module order; None when it is a transposed one (its weight is [in, out, ...])."""
        view = self.view
        index = next((i for i, k in enumerate(view.kinds) if k == "conv"), None)
        if index is None or any("Transpose" in name for name in view.type_names[index]):
            return None
        return view.paths[index]

    @cached_property
    def _output_layers(self) -> set:
        view = self.view
        found = {p for p, k in zip(view.paths, view.kinds) if k == "linear" and p.rpartition(".")[2] in OUTPUT_NAMES}
        getter = getattr(view.inner, "get_output_embeddings", None)
        try:
            layer = getter() if callable(getter) else None
        except Exception:  # a model's own method: whatever it raises, it names no output layer
            layer = None
        found |= {p for p, m in zip(view.paths, view.modules) if layer is not None and m is layer}
        for first, others in view.tied.items():  # a Linear sharing its weight with an Embedding
            group = [first, *others]
            paths = [n.rpartition(".")[0] for n in group]
            if any(self._kind(p) == "embedding" for p in paths):
                found |= {p for p in paths if self._kind(p) == "linear"}
        return found

    def _run(self, value, compute, key: str):
        """compute() on ``value`` as numpy, back to ``value``'s framework and dtype."""
        dtype = _tensors.dtype_name(value)
        backend = _tensors.backend_of(value)
        wide = self.adapter.cast(value, "float32") if dtype in BIT_CARRIERS else value
        array = _tensors.to_numpy(wide, key)
        work = np.float64 if array.dtype == np.float64 else np.float32
        out = np.ascontiguousarray(compute(array.astype(work, copy=False)).astype(work))
        result = _tensors.to_backend(out, backend, key)
        return result if _tensors.dtype_name(result) == dtype else self.adapter.cast(result, dtype)


def _grid_how(old: tuple, new: tuple, prefix: int) -> str:
    kept = f", {prefix} prefix token{'s' if prefix != 1 else ''} kept" if prefix else ""
    return f"position grid {old[0]}x{old[1]} -> {new[0]}x{new[1]}: bicubic, antialiased{kept}"


def _square(tokens: int):
    side = math.isqrt(tokens) if tokens > 0 else 0
    return (side, side) if side > 0 and side * side == tokens else None


def _int(value):
    return int(value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0 else None

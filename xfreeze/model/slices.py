"""Part of a tensor trains (issue 21): row indices on patterns, and the splits a model holds.

A pattern may end in an index on the first dimension of the *neutral* (torch) layout: ``"embed.weight[32000:]"``,
``"experts.gate_up_proj[6:8]"``, ``"lm_head.weight[1,5,9]"``, ``"w[-64:]"``, ``"w[0:100:2]"``. A Paddle Linear
weight is ``[in, out]``, so its rows are its columns (:func:`row_axis`).

A tensor whose trainable part is some of its rows is *split*: the whole tensor stays registered under its own name,
frozen (its state-dict key and values are what users expect), and a second, trainable parameter holds only the
trainable rows, registered beside it as ``<name>[<rows>]`` (so ``model.parameters()``, optimizers, DDP, ``.to()``
and EMA see it like any parameter). Forward reads the two joined (the adapter's ``split_rows`` installs the hooks);
gradients and optimizer state exist for the rows only. The frozen rows are never written.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import numpy as np

from ..backends.naming import naming
from ..core.errors import XFreezeError
from ..core.table import Counts, counts

_INDEX = re.compile(r"^(?P<base>.*[^\s\[])\[(?P<index>[\s0-9,:+\-]*)\]$")
_ITEM = re.compile(r"^\s*(-?(?:0|[1-9]\d*))\s*$")  # no leading zero: layer[01] is a glob class (layer0, layer1)
_RANGE = re.compile(r"^\s*(-?\d+)?\s*:\s*(-?\d+)?\s*(?::\s*(-?\d+)\s*)?$")


@dataclass(frozen=True)
class RowIndex:
    """The ``[...]`` of a pattern: integers and ``start:stop[:step]`` ranges, resolved per tensor."""

    text: str
    items: tuple  # (int,) or (start | None, stop | None, step | None)

    def resolve(self, length: int, pattern: str, tensor: str) -> np.ndarray:
        """The sorted row numbers on a first dimension of ``length``; an error naming ``pattern`` and ``tensor`` for
        a row outside it, a range that selects nothing, or a row named twice."""
        parts = []
        for item in self.items:
            if len(item) == 1:
                row = item[0]
                if not -length <= row < length:
                    raise _outside(pattern, tensor, length, str(row))
                parts.append(np.array([row % length], dtype=np.int64))
                continue
            start, stop, step = item
            for bound in (start, stop):
                if bound is not None and not -length <= bound <= length:
                    raise _outside(pattern, tensor, length, f"{start if start is not None else ''}:{stop or ''}")
            if step is not None and step <= 0:
                raise XFreezeError(f"Pattern {pattern!r}: a row range's step must be positive; received {step}")
            rows = np.arange(*slice(start, stop, step).indices(length), dtype=np.int64)
            if not rows.size:
                raise XFreezeError(
                    f"Pattern {pattern!r} selects no rows of {tensor} (first dimension {length}); nothing was changed"
                )
            parts.append(rows)
        rows = np.concatenate(parts)
        unique = np.unique(rows)
        if unique.size != rows.size:
            twice = sorted({int(r) for r in rows if np.count_nonzero(rows == r) > 1})[:5]
            raise XFreezeError(
                f"Pattern {pattern!r} names rows {twice} of {tensor} more than once (overlapping ranges); name "
                "each row once. Nothing was changed"
            )
        return unique


def _outside(pattern: str, tensor: str, length: int, what: str) -> XFreezeError:
    return XFreezeError(
        f"Pattern {pattern!r}: row {what} is outside {tensor}, whose first dimension has {length} rows (valid: 0 to "
        f"{length - 1}, or -{length} to -1). Nothing was changed"
    )


def split_index(text: str) -> tuple[str, RowIndex | None]:
    """``(pattern without its index, the index)``; ``(text, None)`` when it does not end in an index (a glob class
    such as ``layer[1-3]`` is not one: an index holds integers, ``:`` and ``,`` only)."""
    match = _INDEX.match(text)
    if match is None or not match.group("index").strip():
        return text, None
    items: list[tuple] = []
    for part in match.group("index").split(","):
        single, span = _ITEM.match(part), _RANGE.match(part)
        if single:
            items.append((int(single.group(1)),))
        elif span:
            items.append(tuple(None if g is None else int(g) for g in span.groups()))
        else:
            return text, None
    return match.group("base"), RowIndex(match.group("index"), tuple(items))


def canonical(rows: np.ndarray) -> str:
    """``32000:32064`` for a run, ``1,5,9`` for scattered rows, ``0:4,9``: the text a split's parameter is named by."""
    rows = np.asarray(rows, dtype=np.int64)
    if not rows.size:
        return ""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    out = []
    for run in np.split(rows, breaks):
        out.append(str(run[0]) if run.size == 1 else f"{run[0]}:{run[-1] + 1}")
    return ",".join(out)


def parse_rows(text: str) -> np.ndarray:
    """The rows of a :func:`canonical` text (also what a delta file stores)."""
    base, index = split_index(f"x[{text}]")
    if index is None:
        raise XFreezeError(f"{text!r} is not a row index (integers and start:stop ranges separated by commas)")
    rows = []
    for item in index.items:
        if len(item) == 1:
            rows.append(np.array([item[0]], dtype=np.int64))
        elif item[0] is None or item[1] is None:
            raise XFreezeError(f"{text!r}: a stored row range needs both ends")
        else:
            rows.append(np.arange(item[0], item[1], item[2] or 1, dtype=np.int64))
    return np.unique(np.concatenate(rows))


def base_name(name: str) -> str | None:
    """``w`` for a split's rows parameter ``w[0:4]``, else None."""
    if not name.endswith("]"):
        return None
    base, index = split_index(name)
    return base if index is not None else None


def row_axis(adapter_name: str, kind: str | None, local: str, ndim: int) -> int:
    """The tensor dimension that holds the neutral rows: 1 for a Linear weight of a framework that stores it
    ``[in, out]`` (Paddle), else 0."""
    transposed = naming(adapter_name).linear_layout == "in_out"
    return 1 if transposed and kind == "linear" and local == "weight" and ndim == 2 else 0


def axis_of(view, i: int) -> int:
    """:func:`row_axis` of the view's parameter ``i``."""
    local = view.names[i].rpartition(".")[2]
    return row_axis(view.adapter.name, view.kinds[view.owner[i]], local, len(view.shapes[i]))


@dataclass(frozen=True)
class Split:
    """A split tensor of a view: its whole parameter ``base`` (frozen) and ``rows`` (the trainable rows' parameter),
    as view indices, the rows and the axis they sit on, and every registration ``(module index, local name)``."""

    base: int
    rows_param: int
    rows: np.ndarray
    axis: int
    registrations: tuple


_splits: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def splits(view) -> dict[int, Split]:
    """``{base parameter index: Split}`` of the view (cached per view: a split changes the structure)."""
    cached = _splits.get(view)
    if cached is not None:
        return cached
    if not any("[" in name for name in view.names):  # a split registers its rows as "weight[...]": none here
        _splits[view] = {}
        return _splits[view]
    adapter = view.adapter
    at = {id(p): i for i, p in enumerate(view.params)}
    found: dict[int, Split] = {}
    for mi, module in enumerate(view.modules):
        records = adapter.row_splits(module)
        if not records:
            continue
        registered = adapter.registries(module).parameters
        for local, record in records.items():
            base, rows = at.get(id(registered.get(local))), at.get(id(registered.get(record.rows_local)))
            if base is None or rows is None:
                continue
            seen = found.get(base)
            regs = (seen.registrations if seen else ()) + ((mi, local),)
            found[base] = Split(base, rows, np.asarray(record.index), record.axis, regs)
    _splits[view] = found
    return found


def rows_params(view) -> dict[int, Split]:
    """``{rows parameter index: Split}`` of the view."""
    return {s.rows_param: s for s in splits(view).values()}


def effective_numels(view) -> np.ndarray:
    """Elements per parameter counting each split tensor once: its rows parameter holds the trainable rows, its
    whole parameter the other rows."""
    out = np.array(view.numels, copy=True)
    for s in splits(view).values():
        out[s.base] -= out[s.rows_param]
    return out


def effective_counts(view, trainable=None) -> Counts:
    """:func:`xfreeze.core.table.counts` with split tensors counted exactly (their rows trainable, the rest
    frozen; the whole tensor once)."""
    mask = view.trainable() if trainable is None else trainable
    found = splits(view)
    if not found:
        return counts(view, mask)
    numels = effective_numels(view)
    nbytes = numels * (view.nbytes // np.maximum(view.numels, 1))
    tensors = np.ones(len(numels), dtype=bool)
    return Counts(
        int(numels[mask].sum()),
        int(numels[~mask].sum()),
        int(nbytes[mask].sum()),
        int(nbytes[~mask].sum()),
        int((mask & tensors).sum()),
        int((~mask & tensors).sum()),
    )

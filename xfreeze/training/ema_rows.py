"""An EMA across row splits (issue 21): where part of a tensor trains, the EMA follows.

A split (:mod:`xfreeze.model.slices`) registers the trainable rows as a parameter of their own beside the whole,
frozen tensor. For the EMA that is a trainability change like any other: the rows parameter gets its own shadow at
the boundary, the whole tensor's shadow is the model's own tensor. What a split adds is continuity: rows that had an
average keep it across the boundary (a trainable tensor split into frozen rows and trained ones; rows joined back into
a trainable whole; a split whose rows change), as they would in a model that had those rows as a parameter of their
own from the start. Averages move between a whole tensor and its rows as exact bits (``xfreeze.core.tensors.Raw``),
only at boundaries, in ``state_dict`` and in ``copy_to`` into a model split otherwise: never per update.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import tensors as _tensors
from ..core.errors import XFreezeError
from ..model import slices as _slices

SHOWN = 5


@dataclass(frozen=True)
class RowsOf:
    """What a rows parameter holds: rows ``rows`` (sorted) on ``axis`` of the whole tensor ``base``."""

    base: str
    rows: np.ndarray
    axis: int


def split_names(view) -> dict[str, RowsOf]:
    """``{rows parameter name: RowsOf}`` of the view's split tensors."""
    return {
        view.names[s.rows_param]: RowsOf(view.names[s.base], np.asarray(s.rows, dtype=np.int64), int(s.axis))
        for s in _slices.splits(view).values()
    }


def check_followable(old: list, new: list, old_rows: dict, new_rows: dict, label: str) -> None:
    """Refuse a change of the model's tensors that is not a row split appearing, changing or joining back."""
    old_set, new_set = set(old), set(new)
    common = old_set & new_set
    gone = [n for n in old if n not in new_set and not (n in old_rows and old_rows[n].base in common)]
    added = [n for n in new if n not in old_set and not (n in new_rows and new_rows[n].base in common)]
    if gone or added:
        said = ([f"{n} (new)" for n in added] + [f"{n} (gone)" for n in gone])[:SHOWN]
        raise XFreezeError(
            f"EMA: the tensors of {label} changed since the EMA was built: {said}. The EMA follows trainability "
            "changes, norm locks and row splits (a pattern ending in [rows]), but not a tensor added, removed or "
            "renamed (a replaced head, a new adapter): it cannot tell which average that tensor continues. Nothing "
            "was changed. Fix: build a new EMA for the new structure, xfreeze.EMA(model) (EMA.copy_to carries the "
            "averages that still match), or make the structural change before building the EMA"
        )


def start(adapter, name: str, tensor, rows_of: dict, shadow: dict, owned: set, stash: dict):
    """The first shadow of a tensor the EMA starts holding: a copy of its value now, except rows that had an average
    until this boundary, which keep it (the rows of a trainable whole tensor now split; the rows of a split joined
    back into a trainable whole, or split again with other rows: ``stash``)."""
    split = rows_of.get(name)
    if split is not None and split.base in owned:  # the whole tensor trained: its rows' average carries on
        return take(adapter, shadow[split.base], split.rows, split.axis, tensor)
    old = stash.get(split.base if split is not None else name)
    if old is None:
        return adapter.clone(tensor)
    average, old_rows, axis = old
    if split is None:  # joined back, the whole tensor trains: its rows keep their average
        return put(adapter, tensor, old_rows, axis, _tensors.to_raw(average).bits, tensor)
    _, at_new, at_old = np.intersect1d(split.rows, old_rows, return_indices=True)
    if not at_new.size:
        return adapter.clone(tensor)
    kept = np.take(_tensors.to_raw(average).bits, at_old, axis=axis)
    return put(adapter, tensor, at_new, axis, kept, tensor)


def whole(adapter, base, rows_shadow, split: RowsOf):
    """The whole tensor's average: ``base`` (the model's frozen tensor) with the rows' shadow in place of its rows."""
    return put(adapter, base, split.rows, split.axis, _tensors.to_raw(rows_shadow).bits, base)


def take(adapter, tensor, rows: np.ndarray, axis: int, like):
    """Rows ``rows`` on ``axis`` of ``tensor`` (any framework, or numpy), bit for bit, as a new tensor in ``like``'s
    device and dtype."""
    raw = _tensors.to_raw(tensor)
    return _native(adapter, np.take(raw.bits, rows, axis=axis), raw.dtype, like)


def put(adapter, tensor, rows: np.ndarray, axis: int, bits: np.ndarray, like):
    """A copy of ``tensor`` with its rows ``rows`` on ``axis`` replaced by ``bits`` (exact bits of the same dtype),
    in ``like``'s device and dtype."""
    raw = _tensors.to_raw(tensor)
    out = np.array(raw.bits, copy=True)  # to_raw may share the tensor's memory
    index: list = [slice(None)] * out.ndim
    index[axis] = rows
    out[tuple(index)] = bits
    return _native(adapter, out, raw.dtype, like)


def _native(adapter, bits: np.ndarray, dtype: str, like):
    return adapter.as_native(adapter.from_raw(_tensors.Raw(np.ascontiguousarray(bits), dtype)), like)

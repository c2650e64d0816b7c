"""Deltas of split tensors (issue 21): only the trainable rows are saved, the frozen rows are fingerprinted.

A split tensor (some of its rows train, see :mod:`xfreeze.model.slices`) is saved under its own state key holding
only its trainable rows, in the saving framework's layout (a Paddle Linear's rows are columns: ``[in, k]``), so the
usual conversion renames and transposes it like the whole tensor. The metadata field ``slices`` says, per such key,
which rows (neutral row numbers) and on which axis of the delta framework's layout; the fingerprint's hash for the key
covers the tensor without those rows. Loading checks that hash on the base (converted to the delta's framework, as
for whole tensors), then splits the base's tensor the same way and fills its rows from the file.
"""

from __future__ import annotations

import numpy as np

from .delta_check import FrozenCheck, hashes
from ..core.hashing import digest
from ..core import tensors as _tensors
from ..core.errors import XFreezeError
from ..core.tensors import Raw
from ..model import slices as _slices
from ..model.rowplan import join_all, split_tensor

SHOWN = 5


def sliced(adapter, model, view, state: dict) -> dict:
    """``{state key: (rows, axis)}`` of the model's split tensors (the first key of each)."""
    key_of: dict = {}
    for key, tensor in state.items():
        key_of.setdefault(id(tensor), key)
    out = {}
    for split in _slices.splits(view).values():
        key = key_of.get(id(view.params[split.base]))
        if key is not None:
            out[key] = (split.rows, split.axis)
    return out


def adjust_parts(split: dict, cut: dict) -> dict:
    """:func:`~xfreeze.weights.delta_check.parts` with split tensors trained (saved: their rows) and fingerprinted
    (their frozen rows), not frozen whole."""
    if not cut:
        return split
    trainable = split["trainable"] + [k for k in split["frozen"] if k in cut]
    return {
        **split,
        "trainable": trainable,
        "delta": split["delta"] + [k for k in cut if k not in split["delta"]],
        "fingerprinted": split["frozen"],
        "frozen": [k for k in split["frozen"] if k not in cut],
    }


def rows_values(view, state: dict, cut: dict) -> dict:
    """``{state key: the rows parameter}`` of each split key (what the file carries for it)."""
    by_tensor = {id(view.params[s.base]): view.params[s.rows_param] for s in _slices.splits(view).values()}
    return {key: by_tensor[id(state[key])] for key in cut}


def frozen_hashes(state: dict, keys: list, cut: dict) -> dict:
    """:func:`~xfreeze.weights.delta_check.hashes` of ``keys``, a split key's hash covering its frozen rows only."""
    out = hashes(state, [k for k in keys if k not in cut])
    for key in cut:
        out[key] = digest(without_rows(_tensors.to_raw(state[key], key), *cut[key]))
    return {k: out[k] for k in list(keys) + [k for k in cut if k not in keys]}


def without_rows(raw: Raw, rows: np.ndarray, axis: int) -> Raw:
    """``raw`` without ``rows`` on ``axis`` (what stays frozen of a split tensor)."""
    return Raw(np.ascontiguousarray(np.delete(raw.bits, rows, axis=axis)), raw.dtype)


def metadata(cut: dict) -> dict:
    """``{key: [rows text, axis]}`` for the metadata field ``slices``."""
    return {key: [_slices.canonical(rows), int(axis)] for key, (rows, axis) in cut.items()}


def compare_rows(check: FrozenCheck, fingerprint: dict, cut: dict, state) -> FrozenCheck:
    """Add the split tensors to ``check``: the frozen rows of each, hashed in the delta's layout, against the
    fingerprint (``state``: the model in the delta's names and layouts)."""
    for name, (rows, axis) in cut.items():
        check.checked += 1
        if name not in state:
            check.missing.append(name)
            continue
        raw = _tensors.to_raw(state[name], name)
        if raw.bits.ndim <= axis or (rows.size and rows.max() >= raw.bits.shape[axis]):
            check.drifted.append(name)
        elif digest(without_rows(raw, rows, axis)) != fingerprint.get(name):
            check.drifted.append(name)
    return check


class RowsLoad:
    """What :func:`~xfreeze.weights.delta_check.place` asks about a file's split tensors (``plan.slices``)."""

    def __init__(self, adapter, view, plan, where: str):
        self.adapter, self.view, self.plan, self.where = adapter, view, plan, where

    def take(self, incoming, names: dict) -> dict:
        return take_rows(self.adapter, self.view, names, self.plan.slices, incoming, self.where)

    def compare(self, check: FrozenCheck, theirs) -> FrozenCheck:
        return compare_rows(check, self.plan.fingerprint, self.plan.slices, theirs)


def take_rows(adapter, view, names: dict, cut: dict, incoming, where: str) -> dict:
    """Remove the split keys from ``incoming`` (the file's tensors, in the model's framework) and return
    ``{model parameter name: (rows, value ready to copy into the rows parameter)}``; shape and dtype checked."""
    out, problems = {}, []
    for name, (rows, _) in cut.items():
        key = names.get(name)
        i = view.index.get(key) if key is not None else None
        value = incoming.pop(key, None) if key is not None else None
        if i is None or value is None:
            problems.append(f"{name} (not a parameter of this model, or not in the file)")
            continue
        axis = _slices.axis_of(view, i)
        shape = list(view.shapes[i])
        if rows.size and rows.max() >= shape[axis]:
            problems.append(f"{name} (rows up to {int(rows.max())}; the model's tensor has {shape[axis]})")
            continue
        shape[axis] = int(rows.size)
        value = _tensors.to_backend(value, adapter.name, str(key))
        have, want = adapter.tensor_dtype(value), view.dtypes[i]
        if list(_tensors.shape_of(value)) != shape or have != want:
            problems.append(f"{name} ({have} {list(_tensors.shape_of(value))}; expected {want} {shape})")
            continue
        out[view.names[i]] = (rows, adapter.as_native(value, view.params[i]))
    if problems:
        raise XFreezeError(f"{where}: its split tensors do not fit this model: {problems[:SHOWN]}. Nothing was changed")
    return out


def apply_rows(view, placed: dict) -> None:
    """Split each tensor of ``placed`` (``{index: (rows, value)}``) and fill its rows from the file."""
    adapter = view.adapter
    for name, (rows, value) in placed.items():
        i = view.index[name]
        param = split_tensor(view, i, rows)
        adapter.load_tensors([param], [value])
        tensor = view.params[i]
        for mi in {mi for mi, _, t in view.registered if t is tensor}:
            adapter.sync_rows(view.modules[mi])


__all__ = ["RowsLoad", "adjust_parts", "apply_rows", "compare_rows", "frozen_hashes", "join_all", "metadata", "sliced"]
__all__ += ["rows_values", "take_rows", "without_rows"]

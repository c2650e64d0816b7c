"""freeze / unfreeze when part of a tensor trains (issue 21): which rows of which tensors, checked, then applied.

Every tensor has a set of trainable rows: all of them (trainable), none (frozen), or some (split: see
:mod:`xfreeze.model.slices`). Patterns apply left to right as for whole tensors, on rows: ``freeze(model, "*",
"!embed.weight[32000:]")`` freezes everything but the new token rows. A call that leaves a tensor wholly trainable or
wholly frozen joins a split back (the rows written into the whole tensor, bit for bit). Everything is checked before
anything changes: rows outside a tensor, a tensor without rows, overlapping rows in one call, tied names given
different rows, and engines that cannot hold a split (FSDP, DeepSpeed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import select as _select
from . import slices as _slices
from ..core.errors import XFreezeError
from ..core.tensors import FLOAT_DTYPES
from .guard import guard_trainability_change
from .view import invalidate

UNCHANGED = "Nothing was changed"
# engines that shard or own parameters, where a parameter registered after they were built is not theirs to update
_ENGINES = ("FullyShardedDataParallel", "fully_shard", "DeepSpeedEngine")


def needed(view, compiled) -> bool:
    """Whether a freeze / unfreeze must plan by rows: a pattern ends in rows, or the model holds a split tensor."""
    return any(p.index is not None for p in compiled) or bool(_slices.splits(view))


@dataclass
class RowPlan:
    """The decided change: per tensor (view index) its trainable rows now and after (bool masks over its rows)."""

    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    selected: list = field(default_factory=list)  # every selected tensor, in model order
    not_trainable: list = field(default_factory=list)
    sources: dict = field(default_factory=dict)  # tensor -> the patterns that gave it rows (errors name them)

    def changed(self) -> list:
        return [i for i in self.selected if not np.array_equal(self.before[i], self.after[i])]


def plan(view, compiled, trainable: bool, norm: str) -> RowPlan:
    """What a freeze (``trainable=False``) or unfreeze does, row by row; raises before anything changes."""
    chosen, sources = _selection(view, compiled)
    out = RowPlan(sources=sources)
    live = view.trainable()
    found = _slices.splits(view)
    for i in sorted(chosen):
        current = _current(view, i, live, found)
        sel = chosen[i]
        if trainable and view.dtypes[i] not in FLOAT_DTYPES:
            out.not_trainable.append(f"{view.names[i]} ({view.dtypes[i]})")
            new = current
        elif not trainable and norm == "train" and view.kinds[view.owner[i]] == "norm":
            new = np.ones_like(current)
        else:
            new = current | sel if trainable else current & ~sel
        out.before[i], out.after[i] = current, new
        out.selected.append(i)
    if trainable and out.not_trainable and not any(out.after[i].any() for i in out.selected):
        raise XFreezeError(
            f"{view.label}: the patterns select only parameters that cannot train (their dtype is not floating "
            f"point): {out.not_trainable[:5]}; {UNCHANGED.lower()}"
        )
    _check(view, out)
    return out


def display(view, i: int, rows: np.ndarray) -> str:
    """``name`` for a whole tensor, ``name[rows]`` for some of its rows."""
    return view.names[i] if rows.all() else f"{view.names[i]}[{_slices.canonical(np.flatnonzero(rows))}]"


def apply(view, rowplan: RowPlan) -> None:
    """Write a checked plan: joins first, then whole-tensor flags, then new splits (tied names share one rows
    parameter)."""
    adapter = view.adapter
    found = _slices.splits(view)
    for i in rowplan.changed():
        if i in found:
            for mi, local in found[i].registrations:
                adapter.join_rows(view.modules[mi], local)
        new = rowplan.after[i]
        if new.all() or not new.any():
            adapter.apply_trainable([view.params[i]], bool(new.all()))
            continue
        split_tensor(view, i, np.flatnonzero(new))
    invalidate(view.model)  # also inside a batch (StagedUnfreeze): the parameters changed


def _current(view, i: int, live, found: dict) -> np.ndarray:
    mask = np.full(_length(view, i), bool(live[i]))
    if i in found:
        mask[:] = False
        mask[found[i].rows] = True
    return mask


def _length(view, i: int) -> int:
    shape = view.shapes[i]
    return int(shape[_slices.axis_of(view, i)]) if shape else 1


def _registrations(view, i: int) -> list:
    tensor = view.params[i]
    return [(mi, local) for mi, local, t in view.registered if t is tensor]


def _selection(view, compiled) -> tuple[dict, dict]:
    """``{tensor: bool mask of its selected rows}`` (only tensors with a selected row) and the slice patterns
    that named each tensor; the patterns apply left to right, a leading ``!`` starting from everything."""
    by_rows = _slices.rows_params(view)
    size = len(view.names)
    masks: dict = {}
    if compiled and compiled[0].negate:
        masks = {i: np.ones(_length(view, i), dtype=bool) for i in range(size) if i not in by_rows}
    sources: dict = {}
    for pattern in compiled:
        if pattern.index is None:
            for i in np.flatnonzero(_whole_hits(view, pattern)):
                split = by_rows.get(int(i))
                rows = split.rows if split is not None else slice(None)
                target = split.base if split is not None else int(i)
                _mark(masks, view, target, rows, not pattern.negate)
            continue
        given: dict = {}
        for i, name in _slice_targets(view, pattern, by_rows):
            if not view.shapes[i]:
                raise XFreezeError(
                    f"Pattern {pattern.text!r}: {name} is a 0-d tensor (a single value): it has no rows to choose. "
                    f"Select it whole (without [...]). {UNCHANGED}"
                )
            rows = pattern.index.resolve(_length(view, i), pattern.text, name)
            if i in given:
                continue  # matched by its own name and through its module: one selection
            given[i] = rows
            _check_overlap(view, sources.setdefault(i, []), pattern, name, rows)
            _mark(masks, view, i, rows, not pattern.negate)
    return {i: m for i, m in masks.items() if m.any()}, sources


def _mark(masks: dict, view, i: int, rows, value: bool) -> None:
    mask = masks.get(i)
    if mask is None:
        mask = masks[i] = np.zeros(_length(view, i), dtype=bool)
    mask[rows] = value


def _whole_hits(view, pattern) -> np.ndarray:
    modules = pattern.module_hits(view)
    hits = pattern.name_hits(view.names, view)
    if len(view.names):
        hits = hits | modules[view.owner_array]
    if not hits.any() and not _select._covers_stat_only(view, modules):
        raise _select.no_match(view, pattern)
    return hits


def _slice_targets(view, pattern, by_rows: dict) -> list:
    """``[(tensor index, the name it was matched by)]``: tensors by their own name, through a module, or through a
    tied name (``lm_head.weight`` tied to ``embed_tokens.weight``); rows parameters are never targets."""
    hits = pattern.name_hits(view.names, view)
    modules = pattern.module_hits(view)
    if len(view.names):
        hits = hits | modules[view.owner_array]
    out = [(int(i), view.names[i]) for i in np.flatnonzero(hits) if int(i) not in by_rows]
    for first, others in view.tied.items():
        for alias in others:
            owner = view.module_index.get(alias.rpartition(".")[0], -1)
            if _select._matches(pattern, alias) or (owner >= 0 and modules[owner]):
                out.append((view.index[first], alias))
    if not out:
        raise _select.no_match(view, pattern)
    return out


def _check_overlap(view, given: list, pattern, name: str, rows: np.ndarray) -> None:
    """Rows named twice in one call (by two patterns of the same sign), or a tied tensor given other rows under
    its other name: refused, naming both patterns."""
    for other, other_name, other_rows in given:
        if other.negate != pattern.negate:
            continue
        if other_name != name and not np.array_equal(other_rows, rows):
            raise XFreezeError(
                f"Patterns {other.text!r} and {pattern.text!r} give different rows to one tied tensor ({other_name} "
                f"and {name} are the same weight): a tied weight is split the same way under each of its names. "
                f"Name the same rows for both, or only one of them. {UNCHANGED}"
            )
        common = np.intersect1d(other_rows, rows)
        if other_name == name and common.size:
            raise XFreezeError(
                f"Patterns {other.text!r} and {pattern.text!r} overlap on {name}: rows {common[:5].tolist()}"
                f"{' ...' if common.size > 5 else ''} are named twice in one call. Name each row once. {UNCHANGED}"
            )
    given.append((pattern, name, rows))


def _check(view, rowplan: RowPlan) -> None:
    """Refuse, before anything changes, a split an engine cannot hold, a tied weight whose names need other axes,
    and a change a gradient-syncing wrapper cannot follow."""
    changed = rowplan.changed()
    found = _slices.splits(view)
    splitting = [i for i in changed if i in found or not (rowplan.after[i].all() or not rowplan.after[i].any())]
    if splitting:
        engine = _engine(view)
        if engine:
            names = [_shown(view, rowplan, i) for i in splitting]
            raise XFreezeError(
                f"Training part of a tensor ({names[:3]}) is not supported under {engine}: it shards or owns the "
                f"parameters, and the trainable rows are a parameter of their own that {engine} never registered. "
                f"{UNCHANGED}. Fix: choose the rows before wrapping with DDP (supported), or train the whole tensor"
            )
    for i in splitting:
        new = rowplan.after[i]
        if new.all() or not new.any():
            continue
        axes = {
            _slices.row_axis(view.adapter.name, view.kinds[mi], local, len(view.shapes[i]))
            for mi, local in _registrations(view, i)
        }
        if len(axes) > 1:
            raise XFreezeError(
                f"{_shown(view, rowplan, i)}: a tied weight whose names hold it in different layouts ({view.names[i]} "
                f"and {view.tied.get(view.names[i])}): its rows cannot be split the same way under both. {UNCHANGED}"
            )
    to_train = [display(view, i, rowplan.after[i]) for i in changed if (rowplan.after[i] & ~rowplan.before[i]).any()]
    to_train += [display(view, i, rowplan.after[i]) for i in changed if i in found and rowplan.after[i].any()]
    to_frozen = [view.names[i] for i in changed if (rowplan.before[i] & ~rowplan.after[i]).any()]
    guard_trainability_change(view, sorted(set(to_train)), to_frozen)


def _engine(view) -> str | None:
    sharding = view.adapter.sharding(view.model)
    if sharding:
        return {"fsdp1": "FSDP (FullyShardedDataParallel)", "fsdp2": "FSDP2 (fully_shard)"}.get(sharding, sharding)
    for name in view.wrappers:
        if name in _ENGINES:
            return name
    classes = set(view.adapter.class_names(view.model)) | set(view.adapter.class_names(view.inner))
    return next((c for c in _ENGINES if c in classes), None)


def _shown(view, rowplan: RowPlan, i: int) -> str:
    patterns = [p.text for p, _, _ in rowplan.sources.get(i, [])]
    return f"pattern {patterns[0]!r}" if patterns else view.names[i]


def join_all(view) -> None:
    """Join every split tensor of the view back (its rows written into the whole tensor, which stays frozen)."""
    for split in _slices.splits(view).values():
        for mi, local in split.registrations:
            view.adapter.join_rows(view.modules[mi], local)
    invalidate(view.model)


def split_tensor(view, i: int, rows: np.ndarray):
    """Split the view's tensor ``i`` (not split now): rows ``rows`` train in a parameter of their own, shared by
    every name of a tied tensor. Returns that parameter."""
    rows = np.asarray(rows, dtype=np.int64)
    shared = None
    for mi, local in _registrations(view, i):
        rows_local = f"{local}[{_slices.canonical(rows)}]"
        shared = view.adapter.split_rows(view.modules[mi], local, rows_local, rows, _slices.axis_of(view, i), shared)
    invalidate(view.model)
    return shared

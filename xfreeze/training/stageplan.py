"""What a stage plan will do, worked out before anything changes: which parameters each stage makes trainable, the
rate the plan gives them, and an optimizer that could not give a stage's parameters that rate.

A parameter that joins the optimizer at a stage gets a group of its own at the stage's rate. One the optimizer held
all along (an optimizer built over ``model.parameters()`` before the first stage froze them) cannot: it trains in
the group it was in, at that group's rate (issue 18). ``StagedUnfreeze`` refuses such an optimizer up front.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..core.errors import XFreezeError
from ..model.select import select_indices
from .check import RTOL
from .optim import lr_scales


def check_lr(where: str, lr) -> None:
    """A stage's rate: None (the optimizer's base rate) or a finite number > 0."""
    if lr is None:
        return
    if (
        isinstance(lr, (bool, np.bool_))
        or not isinstance(lr, numbers.Real)
        or not math.isfinite(lr)
        or not float(lr) > 0
    ):
        raise XFreezeError(
            f"{where} must be a finite number > 0 (or None: the optimizer's base rate). Received: lr={lr!r}"
        )


def simulate(view, stages, trainable):
    """For each of ``stages`` in order, without applying any: ``(offset, stage, newly trainable indices, trainable
    indices after it)``, starting from the ``trainable`` indices; the same rules as ``freeze`` / ``unfreeze``."""
    trainable = set(trainable)
    for offset, stage in enumerate(stages):
        before = set(trainable)
        if stage.freeze:
            keep_norms = stage.norm == "train"
            trainable -= {
                int(p)
                for p in select_indices(view, stage.freeze)
                if not (keep_norms and view.kinds[view.owner[p]] == "norm")
            }
        if stage.unfreeze:
            trainable |= {int(p) for p in select_indices(view, stage.unfreeze)}
        yield offset, stage, sorted(trainable - before), set(trainable)


def trainable_indices(view) -> set[int]:
    return {int(i) for i in np.flatnonzero(view.trainable())}


def planned_rates(view, indices, lr: float, config) -> dict[int, float]:
    """The rate the plan gives each of ``indices`` at a stage of rate ``lr``: scaled as the optimizer's base rate
    is, by its ``lr_mult`` and ``layer_decay``."""
    scales = lr_scales(view, list(indices), config.lr_mult or {}, config.layer_decay)
    return {i: float(lr) * scales[i] for i in indices}


def nominal_rates(adapter, optimizer) -> dict[int, float]:
    """``id(parameter)`` -> the nominal rate of the group that holds it."""
    nominal = adapter.group_nominal_lrs(optimizer)
    return {pid: float(nominal[g]) for g, (ids, _, _) in enumerate(adapter.group_rows(optimizer)) for pid in ids}


def held_conflicts(view, adapter, optimizer, config, stages, first: int) -> list[tuple]:
    """``(stage index, stage, [(name, held rate, planned rate)])`` for each stage from ``first`` on that makes
    trainable a parameter ``optimizer`` already holds in a group of another rate, and that has not trained since the
    first of these stages (so it never had a rate of its own: it was built before the stage froze it)."""
    rate_of = nominal_rates(adapter, optimizer)
    trained: set[int] = set()
    out = []
    for offset, stage, newly, after in simulate(view, stages[first:], trainable_indices(view)):
        held = [i for i in newly if id(view.params[i]) in rate_of and i not in trained]
        if held:
            planned = planned_rates(view, held, stage.lr or config.lr, config)
            wrong = [
                (view.names[i], rate_of[id(view.params[i])], planned[i])
                for i in held
                if not math.isclose(rate_of[id(view.params[i])], planned[i], rel_tol=RTOL)
            ]
            if wrong:
                out.append((first + offset, stage, wrong))
        trained |= after
    return out


def refuse_held(view, adapter, optimizer, config, stages, first: int = 0) -> None:
    """Refuse an optimizer that holds parameters a stage unfreezes at another rate (see :func:`held_conflicts`).

    Raises:
        XFreezeError: naming the stage, the parameters and both rates, with the fix.
    """
    conflicts = held_conflicts(view, adapter, optimizer, config, stages, first)
    if not conflicts:
        return
    k, stage, wrong = conflicts[0]
    name, held, planned = wrong[0]
    names = ", ".join(n for n, _, _ in wrong[:3]) + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "")
    rate = f"stages[{k}].lr={stage.lr!r}" if stage.lr is not None else "the optimizer's base rate"
    raise XFreezeError(
        f"StagedUnfreeze: {type(optimizer).__name__} already holds {len(wrong)} parameters of {view.label} that "
        f"stages[{k}] unfreezes ({names}), frozen until then: they would train in the group they are in, at "
        f"{held:.6g} ({name}), not at {planned:.6g} ({rate}).\nHINT: build the optimizer after the first stage's "
        "freeze, so that it holds only what trains: xfreeze.freeze(model, *stages[0].freeze), then "
        "xfreeze.optimizer(model, ...) (or StagedUnfreeze(model, None, stages), .step(0), then "
        ".attach(xfreeze.optimizer(model, ...))); StagedUnfreeze then adds these parameters as a group at the "
        "stage's rate"
    )


def held_after(view, adapter, optimizer, stages, first: int, applied: int) -> int:
    """How many parameters ``optimizer`` will hold after the stages ``first..applied``, without applying any."""
    held = adapter.optimizer_param_ids(optimizer)
    ever = {i for i, p in enumerate(view.params) if id(p) in held}
    for _, _, _, after in simulate(view, stages[first:applied], trainable_indices(view)):
        ever |= after
    return len(ever)

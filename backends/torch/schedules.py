"""Torch LR schedulers that grow with their optimizer.

A torch scheduler sizes its per-group state when it is built (``base_lrs``, ``lr_lambdas``, CyclicLR's
``max_lrs``, OneCycleLR's per-group keys, ReduceLROnPlateau's ``min_lrs``), so a group added later is ignored, or
crashes the next ``step()`` (pytorch #79888, #104361). :func:`grow` gives a group a stage adds the state it would
have had in the optimizer from the start, with the stage's rate as its *nominal* rate: the rate the user names
when building the schedule (``max_lr`` for OneCycleLR, ``base_lr`` for CyclicLR, the optimizer's rate otherwise),
and sets its current rate to what the schedule gives such a group now. Paddle needs none of this: one global
schedule multiplies every group's rate there.
"""

from __future__ import annotations

from bisect import bisect_right

from torch.optim import lr_scheduler as S

COMPOSITES = (S.SequentialLR, S.ChainedScheduler)
# momentum-cycling schedulers write these group keys on every step; a new group starts with the first group's
_MOMENTUM_KEYS = ("momentum", "betas", "base_momentum", "max_momentum")


def leaves(scheduler) -> list:
    """The schedulers that hold per-group state (a SequentialLR / ChainedScheduler's children, recursively)."""
    if isinstance(scheduler, COMPOSITES):
        return [leaf for child in scheduler._schedulers for leaf in leaves(child)]
    return [scheduler]


def problem(scheduler, optimizer) -> str | None:
    """Why ``scheduler`` cannot drive groups added to ``optimizer`` later, or None."""
    for leaf in leaves(scheduler):
        if getattr(leaf, "optimizer", None) is not optimizer:
            return f"{type(leaf).__name__} drives another optimizer than the one given"
        if not isinstance(leaf, S.ReduceLROnPlateau) and not isinstance(getattr(leaf, "base_lrs", None), list):
            return f"{type(leaf).__name__} keeps no per-group base_lrs, so a group added later would not follow it"
    return None


def prepare(scheduler, optimizer) -> None:
    """Before any group is added: record each group's nominal rate where the scheduler itself does not
    (ReduceLROnPlateau keeps none), so that later groups can follow the reductions made so far."""
    if any(isinstance(leaf, S.ReduceLROnPlateau) for leaf in leaves(scheduler)):
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])


def grow(scheduler, optimizer, new: dict) -> None:
    """``new`` (already in ``optimizer.param_groups``, ``new["lr"]`` its nominal rate) joins every per-group list
    of ``scheduler``; its rate becomes the one the schedule gives it now."""
    first, nominal = optimizer.param_groups[0], new["lr"]
    for leaf in leaves(scheduler):
        _add(leaf, first, new, nominal / _nominal(leaf, first))
    new["lr"] = _now(scheduler, first, new, nominal)
    for s in [scheduler, *leaves(scheduler)]:
        if isinstance(getattr(s, "_last_lr", None), list):
            s._last_lr.append(new["lr"])


def _nominal(leaf, first: dict) -> float:
    """The first group's nominal rate under ``leaf``."""
    if isinstance(leaf, S.OneCycleLR):
        return first["max_lr"]
    if isinstance(leaf, S.ReduceLROnPlateau):
        return first["initial_lr"]
    return leaf.base_lrs[0]


def _add(leaf, first: dict, new: dict, ratio: float) -> None:
    if isinstance(leaf, S.ReduceLROnPlateau):
        new.setdefault("initial_lr", new["lr"])
        if leaf.default_min_lr is None:  # a per-group list: the new group gets the first group's floor
            leaf.min_lrs.append(leaf.min_lrs[0])
        return
    if isinstance(leaf, S.OneCycleLR):
        for key in ("initial_lr", "max_lr", "min_lr"):
            new[key] = first[key] * ratio
    else:
        new.setdefault("initial_lr", new["lr"])
    leaf.base_lrs.append(new["initial_lr"])
    if isinstance(getattr(leaf, "lr_lambdas", None), list):  # LambdaLR / MultiplicativeLR: one lambda per group
        leaf.lr_lambdas.append(leaf.lr_lambdas[0])
    if isinstance(leaf, S.CyclicLR):
        leaf.max_lrs.append(leaf.max_lrs[0] * ratio)
        if leaf.cycle_momentum:
            leaf.base_momentums.append(leaf.base_momentums[0])
            leaf.max_momentums.append(leaf.max_momentums[0])
    if getattr(leaf, "cycle_momentum", False):
        new.update({k: first[k] for k in _MOMENTUM_KEYS if k in first})


def _now(scheduler, first: dict, new: dict, nominal: float) -> float:
    """The rate the schedule gives the new group at its current position."""
    if isinstance(scheduler, S.SequentialLR):  # the child in force decides
        active = scheduler._schedulers[bisect_right(scheduler._milestones, scheduler.last_epoch)]
        return _now(active, first, new, nominal)
    if isinstance(scheduler, S.ReduceLROnPlateau):  # the reductions so far, floored like the others
        return max(nominal * first["lr"] / first["initial_lr"], scheduler.min_lrs[-1])
    if isinstance(scheduler, S.LambdaLR):
        return nominal * scheduler.lr_lambdas[-1](scheduler.last_epoch)
    if hasattr(scheduler, "_get_closed_form_lr") and not isinstance(scheduler, COMPOSITES):
        return float(scheduler._get_closed_form_lr()[-1])
    if isinstance(scheduler, (S.OneCycleLR, S.CyclicLR, S.CosineAnnealingWarmRestarts)):  # closed-form get_lr
        with S._enable_get_lr_call(scheduler):
            return float(scheduler.get_lr()[-1])
    # multiplicative schedules without a closed form (MultiplicativeLR, ChainedScheduler of such): the first
    # group's factor so far
    return nominal * first["lr"] / first["initial_lr"]

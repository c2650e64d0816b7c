"""The guard: is the optimizer in step with what trains? And the per-parameter table of groups, rates and decay.

Freezing and the optimizer drift apart silently: a parameter made trainable after the optimizer was built is in no
group and never moves (facebookresearch/mmf #104); a frozen parameter can keep momentum / Adam state. xfreeze knows
the live optimizer of a model when it built it (:func:`xfreeze.optimizer`) or a ``StagedUnfreeze`` holds it, kept
here in a weak registry, so ``unfreeze`` can warn at once. The plan's rates ride on the optimizer itself
(:func:`record_rates`): the rates :func:`xfreeze.optimizer` gave its groups and the stage rates ``StagedUnfreeze``
gave the parameters its stages made trainable, compared by :func:`check` with the rates the optimizer applies.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from ..model.view import batched, view_of
from ..core.table import render
from ..model.live import live_optimizer, quiet, remember, warn_if_out_of_step  # noqa: F401  (re-exported)
from ..model.params import ParamRow, ParamTable, _check_optimizer, param_table  # noqa: F401  (re-exported)


PLAN_ATTRIBUTE = "_xfreeze_plan"  # on the optimizer: {parameter name: (planned rate, where the plan says so)}
OPTIMIZER_PLAN = "xfreeze.optimizer"  # its rates are relative: a schedule may scale all of them alike
RTOL = 1e-6  # Paddle keeps rates as float32 attributes


def record_rates(optimizer, rates: dict, source: str) -> None:
    """Record on ``optimizer`` the rate the plan gives each named parameter (``source``: ``"xfreeze.optimizer"`` or
    the stage, e.g. ``"stages[1].lr"``); a later record for a name replaces the earlier one."""
    plan = getattr(optimizer, PLAN_ATTRIBUTE, None)
    if plan is None:
        plan = {}
        try:
            setattr(optimizer, PLAN_ATTRIBUTE, plan)
        except (AttributeError, TypeError):  # an optimizer without a __dict__: nothing to compare against later
            return
    plan.update({name: (float(rate), source) for name, rate in rates.items()})


@dataclass(frozen=True)
class RateDifference:
    """A parameter that trains at another rate than the plan gave it.

    Attributes:
        name: the parameter.
        lr: its group's nominal rate (the rate a schedule scales: torch ``initial_lr``, OneCycleLR's ``max_lr``;
            Paddle: the group's multiplier times the base rate).
        planned: the rate the plan gives it.
        source: where the plan says so: ``"stages[k].lr"``, or ``"xfreeze.optimizer"``.
    """

    name: str
    lr: float
    planned: float
    source: str

    def __str__(self) -> str:
        return f"{self.name} at {self.lr:.6g}, planned {self.planned:.6g} ({self.source})"


@dataclass
class CheckReport:
    """What :func:`check` found.

    Attributes:
        model: the model's class and framework.
        untrained: trainable parameters in no optimizer group (they will not move).
        stale_state: frozen parameters that still hold optimizer state (momentum, Adam moments).
        frozen_in_groups: frozen parameters still listed in a group (harmless while frozen; if a later unfreeze
            makes them trainable they train at that group's rate, not a rate of their own).
        off_plan: trainable parameters whose optimizer rate differs from the rate the plan gave them (a
            ``StagedUnfreeze`` stage rate, the group rates of :func:`xfreeze.optimizer`).
    """

    model: str
    untrained: list[str] = field(default_factory=list)
    stale_state: list[str] = field(default_factory=list)
    frozen_in_groups: list[str] = field(default_factory=list)
    off_plan: list[RateDifference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No trainable parameter is left out, none trains at another rate than planned, no frozen one holds
        state."""
        return not self.untrained and not self.stale_state and not self.off_plan

    def __str__(self) -> str:
        rows = [
            ["trainable, in no optimizer group", len(self.untrained), ", ".join(self.untrained[:4])],
            ["frozen, holding optimizer state", len(self.stale_state), ", ".join(self.stale_state[:4])],
            ["frozen, still in a group", len(self.frozen_in_groups), ", ".join(self.frozen_in_groups[:4])],
            ["trainable, at another rate than planned", len(self.off_plan), "; ".join(map(str, self.off_plan[:3]))],
        ]
        hints = []
        if self.untrained or self.stale_state:
            hints.append(
                "HINT: rebuild the optimizer with xfreeze.optimizer(model, ...) after freezing, or grow it with "
                "StagedUnfreeze"
            )
        if self.off_plan:
            hints.append(
                "HINT: a parameter in a group built before its stage keeps that group's rate: build the optimizer "
                "after the first stage's freeze (it then holds only what trains) so StagedUnfreeze adds it at the "
                "stage's rate; and keep the group rates (a schedule that sets one rate for every group flattens them)"
            )
        verdict = hints or ["ok: the optimizer is in step with what trains"]
        return render(f"xfreeze.check: {self.model}", ["finding", "tensors", "examples"], rows, verdict)

    __repr__ = __str__


@batched
def check(model, optimizer, *, backend: str | None = None) -> CheckReport:
    """Check that ``optimizer`` is in step with what trains in ``model``.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        optimizer: the framework's optimizer used to train ``model``.
        backend: force ``"torch"`` or ``"paddle"``.

    Rates are compared where xfreeze knows the plan: a parameter a ``StagedUnfreeze`` stage made trainable must train
    at the stage's rate (``Stage.lr``, scaled by the optimizer's ``lr_mult`` / ``layer_decay``; compared with its
    group's nominal rate, the one a schedule scales), and the groups :func:`xfreeze.optimizer` built must keep the
    ratios it gave them (a schedule may scale every group alike). An optimizer built by hand has no plan of its own.

    Returns:
        CheckReport: trainable parameters in no group, frozen ones holding state, trainable ones at another rate
        than planned (naming both rates); prints as a table.

    Raises:
        XFreezeError: ``optimizer`` is not an optimizer of the model's framework.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> _ = xfreeze.freeze(model, "0")
        >>> opt = xfreeze.optimizer(model, "sgd", lr=0.1)
        >>> _ = xfreeze.unfreeze(model, "0")  # warns: 0.weight, 0.bias are in no group
        >>> xfreeze.check(model, opt).untrained
        ['0.weight', '0.bias']
    """
    view = view_of(model, backend)
    adapter = view.adapter
    _check_optimizer(adapter, optimizer)
    held = adapter.optimizer_param_ids(optimizer)
    report = CheckReport(view.label)
    for name, param, trainable in zip(view.names, view.params, view.trainable()):
        if trainable and id(param) not in held:
            report.untrained.append(name)
        elif not trainable and id(param) in held:
            report.frozen_in_groups.append(name)
        if not trainable and adapter.has_optimizer_state(optimizer, param):
            report.stale_state.append(name)
    report.off_plan = rate_differences(view, optimizer)
    return report


def rate_differences(view, optimizer) -> list[RateDifference]:
    """The trainable parameters of ``view`` whose nominal rate in ``optimizer`` differs from the recorded plan."""
    plan = getattr(optimizer, PLAN_ATTRIBUTE, None)
    if not plan:
        return []
    adapter = view.adapter
    nominal = adapter.group_nominal_lrs(optimizer)
    rate_of = {pid: float(nominal[g]) for g, (ids, _, _) in enumerate(adapter.group_rows(optimizer)) for pid in ids}
    rows = [
        (name, rate_of[id(param)], *plan[name])
        for name, param, trains in zip(view.names, view.params, view.trainable())
        if trains and name in plan and id(param) in rate_of
    ]
    factor = _common_factor([lr / planned for _, lr, planned, source in rows if source == OPTIMIZER_PLAN])
    out = []
    for name, lr, planned, source in rows:
        expected = planned * factor if source == OPTIMIZER_PLAN else planned
        if not math.isclose(lr, expected, rel_tol=RTOL):
            out.append(RateDifference(name, lr, expected, source))
    return out


def _common_factor(ratios: list[float]) -> float:
    """The factor a schedule applies to every group :func:`xfreeze.optimizer` built (1 without one): the one most
    of its parameters share, so that the groups that lost their ratio to the others are the ones reported."""
    if not ratios:
        return 1.0
    first: dict[str, float] = {}
    for r in ratios:
        first.setdefault(f"{r:.6g}", r)
    return first[Counter(f"{r:.6g}" for r in ratios).most_common(1)[0][0]]

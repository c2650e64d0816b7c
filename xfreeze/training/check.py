"""The guard: is the optimizer in step with what trains? And the per-parameter table of groups, rates and decay.

Freezing and the optimizer drift apart silently: a parameter made trainable after the optimizer was built is in no
group and never moves (facebookresearch/mmf #104); a frozen parameter can keep momentum / Adam state. xfreeze knows
the live optimizer of a model when it built it (:func:`xfreeze.optimizer`) or a ``StagedUnfreeze`` holds it, kept
here in a weak registry, so ``unfreeze`` can warn at once.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import dataclass, field

from . import _select
from ._view import batched
from ._backend import adapter_for
from ._errors import XFreezeError
from ._table import render

_live: dict[int, tuple] = {}  # id(model) -> (weakref to model, weakref to optimizer)
_quiet = [0]


def remember(model, optimizer) -> None:
    """Record ``optimizer`` as the live optimizer of ``model`` (weakly: neither is kept alive)."""
    for key in [k for k, (m, o) in _live.items() if m() is None or o() is None]:
        del _live[key]
    try:
        _live[id(model)] = (weakref.ref(model), weakref.ref(optimizer))
    except TypeError:  # an object without weak references: no warning for it, nothing else changes
        return


def live_optimizer(model):
    """The optimizer xfreeze last built or attached for ``model``, if both are still alive."""
    refs = _live.get(id(model))
    if refs is None or refs[0]() is not model:
        return None
    return refs[1]()


@contextlib.contextmanager
def quiet():
    """No warning while xfreeze itself changes trainability and then grows the optimizer (StagedUnfreeze)."""
    _quiet[0] += 1
    try:
        yield
    finally:
        _quiet[0] -= 1


def warn_if_out_of_step(model, changed: list[str], backend: str | None = None) -> None:
    """Called by ``unfreeze`` with the parameters it made trainable: warn when the live optimizer lacks them."""
    opt = live_optimizer(model)
    if opt is None or _quiet[0] or not changed:
        return
    adapter = adapter_for(model, backend)
    held = adapter.optimizer_param_ids(opt)
    params = {e.name: e.param for e in _select.walk(adapter, model)}
    missing = [n for n in changed if n in params and id(params[n]) not in held]
    if missing:
        warnings.warn(
            f"{len(missing)} parameters were made trainable but are in no group of the model's optimizer "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): they will not train.\n"
            "HINT: rebuild the optimizer (xfreeze.optimizer(model, ...)), or let StagedUnfreeze / the "
            "xfreeze callbacks unfreeze them, which adds them as a new group",
            UserWarning,
            stacklevel=3,
        )


@dataclass
class CheckReport:
    """What :func:`check` found.

    Attributes:
        model: the model's class and framework.
        untrained: trainable parameters in no optimizer group (they will not move).
        stale_state: frozen parameters that still hold optimizer state (momentum, Adam moments).
        frozen_in_groups: frozen parameters still listed in a group (harmless while frozen; if a later unfreeze
            makes them trainable they train at that group's rate, not a rate of their own).
    """

    model: str
    untrained: list[str] = field(default_factory=list)
    stale_state: list[str] = field(default_factory=list)
    frozen_in_groups: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No trainable parameter is left out and no frozen one holds state."""
        return not self.untrained and not self.stale_state

    def __str__(self) -> str:
        rows = [
            ["trainable, in no optimizer group", len(self.untrained), ", ".join(self.untrained[:4])],
            ["frozen, holding optimizer state", len(self.stale_state), ", ".join(self.stale_state[:4])],
            ["frozen, still in a group", len(self.frozen_in_groups), ", ".join(self.frozen_in_groups[:4])],
        ]
        verdict = (
            "ok: the optimizer is in step with what trains"
            if self.ok
            else (
                "HINT: rebuild the optimizer with xfreeze.optimizer(model, ...) after freezing, or grow it with "
                "StagedUnfreeze"
            )
        )
        return render(f"xfreeze.check: {self.model}", ["finding", "tensors", "examples"], rows, [verdict])

    __repr__ = __str__


@batched
def check(model, optimizer, *, backend: str | None = None) -> CheckReport:
    """Check that ``optimizer`` is in step with what trains in ``model``.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        optimizer: the framework's optimizer used to train ``model``.
        backend: force ``"torch"`` or ``"paddle"``.

    Returns:
        CheckReport: trainable parameters in no group, frozen ones holding state; prints as a table.

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
    adapter = adapter_for(model, backend)
    _check_optimizer(adapter, optimizer)
    held = adapter.optimizer_param_ids(optimizer)
    report = CheckReport(_select.model_name(adapter, model))
    for e in _select.walk(adapter, model):
        trainable = adapter.is_trainable(e.param)
        if trainable and id(e.param) not in held:
            report.untrained.append(e.name)
        elif not trainable and id(e.param) in held:
            report.frozen_in_groups.append(e.name)
        if not trainable and adapter.has_optimizer_state(optimizer, e.param):
            report.stale_state.append(e.name)
    return report


@dataclass(frozen=True)
class ParamRow:
    """One parameter in the optimizer: its group, absolute learning rate and weight decay (None: in no group)."""

    name: str
    trainable: bool
    group: int | None
    lr: float | None
    weight_decay: float | None


@dataclass
class ParamTable:
    """What :func:`param_table` shows, as data."""

    model: str
    rows: list[ParamRow] = field(default_factory=list)

    def __str__(self) -> str:
        def fmt(value):
            return "-" if value is None else f"{value:.6g}"

        rows = [
            [
                r.name,
                "yes" if r.trainable else "no",
                "-" if r.group is None else r.group,
                fmt(r.lr),
                fmt(r.weight_decay),
            ]
            for r in self.rows
        ]
        return render(
            f"xfreeze.param_table: {self.model}", ["parameter", "trains", "group", "lr", "weight decay"], rows
        )

    __repr__ = __str__


@batched
def param_table(model, optimizer, *, backend: str | None = None) -> ParamTable:
    """Per parameter: trainable or not, optimizer group, absolute learning rate and weight decay (audit layer decay).

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        optimizer: its optimizer (rates are read from it as they are now, schedules included).
        backend: force ``"torch"`` or ``"paddle"``.

    Returns:
        ParamTable: one :class:`ParamRow` per parameter, in model order; prints as a table.

    Raises:
        XFreezeError: ``optimizer`` is not an optimizer of the model's framework.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> opt = xfreeze.optimizer(model, "adamw", lr=0.1, weight_decay=0.01, lr_mult={"1": 10})
        >>> [(r.name, r.group, r.lr, r.weight_decay) for r in xfreeze.param_table(model, opt).rows][2]
        ('1.weight', 2, 1.0, 0.01)
    """
    adapter = adapter_for(model, backend)
    _check_optimizer(adapter, optimizer)
    where: dict[int, tuple] = {}
    for index, (ids, lr, decay) in enumerate(adapter.group_rows(optimizer)):
        for pid in ids:
            where.setdefault(pid, (index, float(lr), float(decay)))
    rows = [
        ParamRow(e.name, adapter.is_trainable(e.param), *where.get(id(e.param), (None, None, None)))
        for e in _select.walk(adapter, model)
    ]
    return ParamTable(_select.model_name(adapter, model), rows)


def _check_optimizer(adapter, optimizer) -> None:
    if not adapter.is_optimizer(optimizer):
        raise XFreezeError(
            f"optimizer must be an optimizer of the model's framework ({adapter.name}). "
            f"Received: {type(optimizer).__name__}"
        )

"""The guard: is the optimizer in step with what trains? And the per-parameter table of groups, rates and decay.

Freezing and the optimizer drift apart silently: a parameter made trainable after the optimizer was built is in no
group and never moves (facebookresearch/mmf #104); a frozen parameter can keep momentum / Adam state. xfreeze knows
the live optimizer of a model when it built it (:func:`xfreeze.optimizer`) or a ``StagedUnfreeze`` holds it, kept
here in a weak registry, so ``unfreeze`` can warn at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.view import batched, view_of
from ..core.table import render
from ..model.live import live_optimizer, quiet, remember, warn_if_out_of_step  # noqa: F401  (re-exported)
from ..model.params import ParamRow, ParamTable, _check_optimizer, param_table  # noqa: F401  (re-exported)


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
    return report

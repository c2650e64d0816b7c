"""The per-parameter table of a model against its optimizer: group, absolute learning rate and weight decay."""

from __future__ import annotations

from dataclasses import dataclass, field

from .view import batched, view_of
from ..core.errors import XFreezeError
from ..core.table import render


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

    def render(self, width: int | None = None) -> str:
        """The table, at most ``width`` wide (default: the terminal's), one line per parameter: a long name loses
        middle segments, never its module and tensor names (``encoder.….attention.query.weight``)."""

        def fmt(value):
            return "-" if value is None else f"{value:.6g}"

        rows = [
            [r.name, "yes" if r.trainable else "no", "-" if r.group is None else r.group, fmt(r.lr)]
            + [fmt(r.weight_decay)]
            for r in self.rows
        ]
        columns = ["parameter", "trains", "group", "lr", "weight decay"]
        return render(f"xfreeze.param_table: {self.model}", columns, rows, width=width, elide=2)

    def __str__(self) -> str:
        return self.render()

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
    view = view_of(model, backend)
    adapter = view.adapter
    _check_optimizer(adapter, optimizer)
    where: dict[int, tuple] = {}
    for index, (ids, lr, decay) in enumerate(adapter.group_rows(optimizer)):
        for pid in ids:
            where.setdefault(pid, (index, float(lr), float(decay)))
    rows = [
        ParamRow(name, bool(trains), *where.get(id(param), (None, None, None)))
        for name, param, trains in zip(view.names, view.params, view.trainable())
    ]
    return ParamTable(view.label, rows)


def _check_optimizer(adapter, optimizer) -> None:
    if not adapter.is_optimizer(optimizer):
        raise XFreezeError(
            f"optimizer must be an optimizer of the model's framework ({adapter.name}). "
            f"Received: {type(optimizer).__name__}"
        )

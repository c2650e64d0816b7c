"""summary: a Keras-style table of what trains, per module, with the norm layers' state."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import _select
from ._backend import adapter_for
from ._table import Counts, count, render


@dataclass(frozen=True)
class ModuleRow:
    """One module that owns parameters or norm statistics directly."""
    name: str
    type: str
    parameters: int
    trainable: int
    norm: str  # "locked" | "train" | "eval" for norm layers with running statistics, "" otherwise

    @property
    def frozen(self) -> int:
        return self.parameters - self.trainable


@dataclass
class Summary:
    """What :func:`summary` shows, as data: ``rows`` per module and the whole model's ``counts``."""
    model: str
    rows: list[ModuleRow] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)

    def __str__(self) -> str:
        table = [[r.name or "(root)", r.type, f"{r.parameters:,}", f"{r.trainable:,}", r.norm] for r in self.rows]
        return render(f"xfreeze.summary: {self.model}", ["module", "type", "parameters", "trainable", "norm"],
                      table, self.counts.lines())

    __repr__ = __str__


def summary(model, *, print_table: bool = True, backend: str | None = None) -> Summary:
    """Show what will train: per module its type, parameters, trainable parameters and norm state.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        print_table: print the table (the returned object prints the same table).
        backend: force ``"torch"`` or ``"paddle"``.

    Returns:
        Summary: ``rows`` (one :class:`ModuleRow` per module owning parameters or statistics) and ``counts``.

    Raises:
        XFreezeError: ``model`` is not a model of a supported framework.

    Example:
        >>> import torch, xfreeze
        >>> s = xfreeze.summary(torch.nn.Linear(3, 2), print_table=False)
        >>> s.counts.trainable
        8
    """
    adapter = adapter_for(model, backend)
    rows = [_row(adapter, path, module) for path, module in adapter.named_modules(model)]
    result = Summary(_select.model_name(adapter, model), [r for r in rows if r is not None],
                     count(adapter, _select.walk(adapter, model)))
    if print_table:
        print(result)
    return result


def _row(adapter, path: str, module) -> ModuleRow | None:
    params = [p for _, p in adapter.direct_parameters(module)]
    stats = adapter.norm_statistics(module)
    if not params and not stats:
        return None
    norm = ""
    if stats:
        norm = "locked" if adapter.is_norm_locked(module) else ("train" if module.training else "eval")
    return ModuleRow(path, type(module).__name__, sum(adapter.numel(p) for p in params),
                     sum(adapter.numel(p) for p in params if adapter.is_trainable(p)), norm)

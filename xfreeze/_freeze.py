"""freeze / unfreeze: trainability, dropped gradients and locked norm statistics, as one decision."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import _select
from ._backend import adapter_for
from ._errors import check_choice
from ._table import Counts, count, render

NORM_MODES = ("freeze", "train")


@dataclass
class FreezeReport:
    """What a :func:`freeze` or :func:`unfreeze` call did, and the model's state afterwards.

    Attributes:
        action: ``"freeze"`` or ``"unfreeze"``.
        model: the model's class and framework, e.g. ``"ResNet (torch)"``.
        changed: parameters whose trainability this call changed.
        unchanged: parameters the patterns selected that were already in that state.
        norms_locked / norms_unlocked: norm layers whose running statistics this call locked or released.
        counts: trainable / frozen parameter counts and bytes of the whole model after the call.
    """
    action: str
    model: str
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    norms_locked: list[str] = field(default_factory=list)
    norms_unlocked: list[str] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    sizes: dict[str, int] = field(default_factory=dict, repr=False)  # elements per changed parameter

    @property
    def selected(self) -> list[str]:
        return self.changed + self.unchanged

    def __str__(self) -> str:
        state = "frozen" if self.action == "freeze" else "trainable"
        groups: dict[str, list[int]] = {}
        for name in self.changed:
            top = name.split(".")[0] if "." in name else "(root)"
            groups.setdefault(top, [0, 0, 0])
            groups[top][0] += 1
            groups[top][1] += self.sizes.get(name, 0)
        for name in self.norms_locked + self.norms_unlocked:
            groups.setdefault(name.split(".")[0], [0, 0, 0])[2] += 1
        norm = "norm stats locked" if self.action == "freeze" else "norm stats released"
        rows = [[top, n, f"{size:,}", norms] for top, (n, size, norms) in groups.items()]
        footer = [f"{len(self.changed)} tensors now {state}; {len(self.unchanged)} selected were already {state}"]
        return render(f"xfreeze.{self.action}: {self.model}", ["module", "tensors changed", "parameters", norm],
                      rows, footer + self.counts.lines())

    __repr__ = __str__


def freeze(model, *patterns, norm: str = "freeze", backend: str | None = None) -> FreezeReport:
    """Freeze the parameters the patterns select, so that they stay bit-for-bit unchanged in training.

    Freezing sets ``requires_grad=False`` (torch) / ``stop_gradient=True`` (Paddle) and drops any gradient the
    parameter already holds, so momentum, weight decay and Adam state cannot move it. With ``norm="freeze"`` a
    BatchNorm layer whose parameters are all frozen also keeps its running statistics fixed (it runs in eval
    mode, even after ``model.train()``); ``norm="train"`` keeps norm layers in the region fully trainable.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        *patterns: selector patterns (see :func:`select`).
        norm: ``"freeze"`` (default) or ``"train"``.
        backend: force ``"torch"`` or ``"paddle"`` (it must agree with the model).

    Returns:
        FreezeReport: what changed and the trainable / frozen totals; prints as a table.

    Raises:
        XFreezeError: unknown option, no patterns, a pattern matching nothing, an invalid regex, or not a model.
            Nothing is changed then.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
        >>> report = xfreeze.freeze(model, "*", "!2.*")
        >>> report.counts.trainable
        10
    """
    return _set_trainable(model, patterns, False, norm, backend)


def unfreeze(model, *patterns, backend: str | None = None) -> FreezeReport:
    """Make the parameters the patterns select trainable, and release the statistics of their norm layers.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        *patterns: selector patterns (see :func:`select`).
        backend: force ``"torch"`` or ``"paddle"``.

    Returns:
        FreezeReport

    Raises:
        XFreezeError: as :func:`freeze`; nothing is changed then.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> _ = xfreeze.freeze(model, "*")
        >>> xfreeze.unfreeze(model, "1").changed
        ['1.weight', '1.bias']
    """
    return _set_trainable(model, patterns, True, "freeze", backend)


def _set_trainable(model, patterns, trainable: bool, norm: str, backend) -> FreezeReport:
    adapter = adapter_for(model, backend)
    check_choice("norm", norm, NORM_MODES)
    compiled = _select.compile_patterns(patterns)
    entries = _select.walk(adapter, model)
    selected = _select.resolve(adapter, model, compiled, entries)  # raises before anything changes
    report = FreezeReport("unfreeze" if trainable else "freeze", _select.model_name(adapter, model))
    for e in selected:
        target = trainable or (norm == "train" and adapter.module_kind(e.module) == "norm")
        if adapter.is_trainable(e.param) != target:
            report.changed.append(e.name)
            report.sizes[e.name] = adapter.numel(e.param)
        else:
            report.unchanged.append(e.name)
        adapter.set_trainable(e.param, target)
        if not target:
            adapter.drop_grad(e.param)
    for module in {id(e.module): e.module for e in selected}.values():
        adapter.sync_grads(module)
    _update_norm_locks(adapter, model, compiled, selected, report, lock=not trainable and norm == "freeze")
    report.counts = count(adapter, entries)
    return report


def _update_norm_locks(adapter, model, compiled, selected, report: FreezeReport, lock: bool) -> None:
    """Lock (or release) the stat-keeping norm layers the call touched, by the state of their parameters."""
    touched = {id(e.module): e.module for e in selected}
    touched.update({id(e.module): e.module for e in _select.covered_modules(adapter, model, compiled)
                    if not adapter.direct_parameters(e.module)})
    names = {id(m): path for path, m in adapter.named_modules(model)}
    for module in touched.values():
        if not adapter.norm_statistics(module):
            continue
        params = [p for _, p in adapter.direct_parameters(module)]
        all_frozen = not any(adapter.is_trainable(p) for p in params)
        if lock and all_frozen and not adapter.is_norm_locked(module):
            adapter.lock_norm(module)
            report.norms_locked.append(names[id(module)])
        elif not (lock and all_frozen) and adapter.is_norm_locked(module):
            adapter.unlock_norm(module, training=model.training)
            report.norms_unlocked.append(names[id(module)])

"""freeze / unfreeze: trainability, dropped gradients and locked norm statistics, as one decision."""

from __future__ import annotations

import threading
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np

from . import provenance as _provenance
from . import rowplan as _rowplan
from . import select as _select
from . import slices as _slices
from .guard import guard_trainability_change
from .live import warn_if_out_of_step
from ..core.errors import XFreezeError, check_choice
from ..core.table import Counts, render
from ..core.tensors import FLOAT_DTYPES
from .view import view_of

NORM_MODES = ("freeze", "train")
SHOWN = 5  # tensors named in a warning before "and N more"


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
    not_trainable: list[str] = field(default_factory=list)  # selected to train, but not floating point: left frozen

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
        if self.not_trainable:
            footer.append(
                f"left frozen, not floating point: {', '.join(self.not_trainable[:5])}"
                + (" ..." if len(self.not_trainable) > 5 else "")
            )
        return render(
            f"xfreeze.{self.action}: {self.model}",
            ["module", "tensors changed", "parameters", norm],
            rows,
            footer + self.counts.lines(),
        )

    __repr__ = __str__


def freeze(model, *patterns, norm: str = "freeze", backend: str | None = None) -> FreezeReport:
    """Freeze the parameters the patterns select, so that they stay bit-for-bit unchanged in training.

    Freezing sets ``requires_grad=False`` (torch) / ``stop_gradient=True`` (Paddle) and drops any gradient the
    parameter already holds, so momentum, weight decay and Adam state cannot move it. With ``norm="freeze"`` a
    BatchNorm layer whose parameters are all frozen also keeps its running statistics fixed (it runs in eval
    mode, even after ``model.train()``); ``norm="train"`` keeps norm layers in the region fully trainable.

    A pattern ending in an index freezes rows of a tensor (``"embed.weight[0:32000]"``): the rest of it trains, in
    a parameter of its own (``docs/guide/slices.md``).

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        *patterns: selector patterns (see :func:`select`), each optionally ending in rows (``[32000:]``, ``[1,5]``).
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

    A pattern ending in an index makes rows of a tensor trainable (``"embed.weight[32000:]"``, ``"lm_head[1,5]"``,
    ``"experts.gate_up_proj[6:8]"``; a Paddle Linear's rows are its columns): the rest stays frozen, bit for bit,
    and gradients and optimizer state exist for those rows only (``docs/guide/slices.md``). Unfreezing the whole
    tensor later joins it back.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        *patterns: selector patterns (see :func:`select`), each optionally ending in rows (``[32000:]``, ``[1,5]``).
        backend: force ``"torch"`` or ``"paddle"``.

    Returns:
        FreezeReport

    Raises:
        XFreezeError: as :func:`freeze`, and for rows outside a tensor, a 0-d tensor, rows named twice in one
            call, a tied weight given other rows under its other name, or a model under FSDP / DeepSpeed; nothing
            is changed then.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> _ = xfreeze.freeze(model, "*")
        >>> xfreeze.unfreeze(model, "1").changed
        ['1.weight', '1.bias']
    """
    report = _set_trainable(model, patterns, True, "freeze", backend)
    warn_if_out_of_step(model, report.changed, backend)  # issue 12: the live optimizer lacks what now trains
    return report


def _set_trainable(model, patterns, trainable: bool, norm: str, backend) -> FreezeReport:
    check_choice("norm", norm, NORM_MODES)
    compiled = _select.compile_patterns(patterns)
    with model_lock(model):  # a second thread's freeze/unfreeze of this model waits (norm hooks, grads, flags)
        report = _apply(model, compiled, trainable, norm, backend)
    if not trainable:
        _warn_if_never_loaded(model, report)
    return report


def _apply(model, compiled, trainable: bool, norm: str, backend) -> FreezeReport:
    view = view_of(model, backend)
    if _rowplan.needed(view, compiled):  # a pattern ends in [rows], or a tensor is split already (issue 21)
        return _apply_rows(model, view, compiled, trainable, norm, backend)
    adapter = view.adapter
    selected = np.flatnonzero(_select.select_mask(view, compiled))  # raises before anything changes
    before = view.trainable()
    target = np.full(len(selected), trainable)
    if not trainable and norm == "train":
        target = np.fromiter((view.kinds[view.owner[i]] == "norm" for i in selected), dtype=bool, count=len(selected))
    report = FreezeReport("unfreeze" if trainable else "freeze", view.label)
    untrainable = [int(i) for i, t in zip(selected, target) if t and view.dtypes[i] not in FLOAT_DTYPES]
    if untrainable:
        report.not_trainable = [f"{view.names[i]} ({view.dtypes[i]})" for i in untrainable]
        target[np.isin(selected, untrainable)] = False
        if not target.any() and trainable:
            raise XFreezeError(
                f"{view.label}: the patterns select only parameters that cannot train (their dtype is "
                f"not floating point): {report.not_trainable[:5]}; nothing was changed"
            )
    changed = selected[target != before[selected]]
    guard_trainability_change(
        view, [view.names[i] for i in changed if not before[i]], [view.names[i] for i in changed if before[i]]
    )
    params, names, chosen, wanted = view.params, view.names, selected.tolist(), target.tolist()
    adapter.apply_trainable([params[i] for i, t in zip(chosen, wanted) if t], True)
    adapter.apply_trainable([params[i] for i, t in zip(chosen, wanted) if not t], False)
    changed_set = set(changed.tolist())
    for i in chosen:
        (report.changed if i in changed_set else report.unchanged).append(names[i])
    report.sizes = dict(zip([names[i] for i in changed.tolist()], view.numels[changed].tolist()))
    touched = set(view.owner_array[selected].tolist())
    adapter.sync_grads(view.modules[mi] for mi in touched)  # lazily: most frameworks need nothing
    after = before.copy()  # what is trainable now, without reading every flag again
    after[selected] = target
    _update_norm_locks(view, compiled, touched, report, lock=not trainable and norm == "freeze", live=after)
    report.counts = _slices.effective_counts(view, after)
    return report


def _apply_rows(model, view, compiled, trainable: bool, norm: str, backend) -> FreezeReport:
    """``_apply`` by rows: split tensors, and patterns that end in ``[rows]``."""
    plan = _rowplan.plan(view, compiled, trainable, norm)  # raises before anything changes
    report = FreezeReport("unfreeze" if trainable else "freeze", view.label, not_trainable=plan.not_trainable)
    changed = set(plan.changed())
    for i in plan.selected:
        before, after = plan.before[i], plan.after[i]
        if i in changed:
            report.changed.append(_rowplan.display(view, i, before != after))  # the rows whose state changed
            report.sizes[report.changed[-1]] = int(view.numels[i] // len(after) * np.count_nonzero(before != after))
        else:
            report.unchanged.append(view.names[i])
    touched = {int(view.owner[i]) for i in plan.selected}
    _rowplan.apply(view, plan)
    view = view_of(model, backend)  # a split or a join changed the parameters
    view.adapter.sync_grads(view.modules[mi] for mi in touched)
    _update_norm_locks(view, compiled, touched, report, lock=not trainable and norm == "freeze")
    report.counts = _slices.effective_counts(view)
    return report


# model -> its lock: freeze and unfreeze of one model from two threads run one after the other (torch's and Paddle's
# hook and parameter dicts are plain OrderedDicts: changed by one thread while another iterates, they raise)
_locks: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model) -> threading.RLock:
    """The lock that serialises xfreeze's changes to ``model`` (reentrant: a staged schedule may nest calls).

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.

    Returns:
        threading.RLock: the same lock for the same model object, for as long as the model lives.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 2)
        >>> with model_lock(model):
        ...     pass
    """
    with _locks_guard:
        try:
            lock = _locks.get(model)
            if lock is None:
                lock = _locks[model] = threading.RLock()
        except TypeError:  # an object that cannot be weakly referenced: it is refused later as "not a model"
            lock = threading.RLock()
    return lock


def _warn_if_never_loaded(model, report: FreezeReport) -> None:
    """Warn when this freeze fixed tensors that the last load left at their initialisation (issue 18, item 2)."""
    if not (report.changed or report.norms_locked):
        return
    untouched = _provenance.untouched(model)  # {} at once when no load was recorded
    if not untouched:
        return
    view = view_of(model)
    fixed = {id(view.params[view.index[n]]) for n in report.changed if n in view.index}
    for path in report.norms_locked:
        fixed.update(id(view.stat_tensors[i]) for i in view.statistics(view.module_index[path]))
    names = [key for key, tensor in untouched.items() if id(tensor) in fixed]
    if not names:
        return
    shown = ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
    first = next((n for n in names if n in view.index), names[0])
    warnings.warn(
        f"xfreeze.freeze: {len(names)} tensor(s) of {report.model} that the last load did not reach (missing from "
        f"the source or of another shape) are now frozen at their initialisation: {shown}. They will not train.\n"
        "HINT: load them first (load_matched adapts position embeddings, input convs and larger embeddings to the "
        f'new shape), or keep them trainable: freeze(model, ..., "!{first}")',
        UserWarning,
        stacklevel=4,
    )


def _update_norm_locks(view, compiled, touched: set, report: FreezeReport, lock: bool, live=None) -> None:
    """Lock (or release) the stat-keeping norm layers the call touched, by the state of their parameters (``live``:
    the trainable mask, read when not given)."""
    adapter = view.adapter
    covered = _select.module_mask(view, compiled)
    stat_only = {i for i in view.stat_modules if covered[i] and not view.direct(i)}
    live = view.trainable() if live is None else live
    training = adapter.module_training(view.inner)
    for mi in sorted((touched & view.stat_modules) | stat_only):
        module = view.modules[mi]
        all_frozen = not any(live[i] for i in view.direct(mi))
        if lock and all_frozen and not adapter.is_norm_locked(module):
            adapter.lock_norm(module)
            report.norms_locked.append(view.paths[mi])
        elif not (lock and all_frozen) and adapter.is_norm_locked(module):
            adapter.unlock_norm(module, training=training)
            report.norms_unlocked.append(view.paths[mi])

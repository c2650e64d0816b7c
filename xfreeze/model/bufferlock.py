"""Locked buffers: the buffers of frozen modules restored to their locked value around every forward.

The norm lock keeps a norm layer in eval mode, so its statistics are never written. Other buffers have no such
switch: IBert's ``QuantAct`` assigns new ``x_min`` / ``x_max`` tensors in every training forward, an MoE router's
bias is moved from token counts, an fp8 recipe rolls its amax history in place. :func:`lock_buffers` snapshots the
buffers of each frozen module and registers a forward pre-hook and a forward post-hook on it that put the locked
value back: a buffer *assigned* anew is replaced by the locked tensor (the new one, which autograd may hold, is left
alone), one *written in place* (its version counter moved) is copied back. Unchanged buffers cost a version check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import select as _select
from .buffers import frozen_modules, module_buffers
from .freeze import model_lock
from ..core.errors import XFreezeError
from ..core.table import render
from .view import view_of


class BufferLock:
    """The forward pre-hook (and, through ``post``, the post-hook) that holds one module's buffers at their locked
    values; found again in the module's pre-hooks by its type."""

    def __init__(self, adapter, module, buffers: dict):
        self.adapter = adapter
        self.locals = list(buffers)
        self.originals = [buffers[k] for k in self.locals]
        self.values = [adapter.clone(t) for t in self.originals]
        self.tokens = adapter.change_tokens(self.originals)
        self.post = None  # the post-hook's handle

    def __call__(self, module, *args) -> None:
        self.restore(module)

    def after(self, module, args, output) -> None:
        self.restore(module)  # returns None: a post-hook's result would replace the module's output

    def restore(self, module) -> int:
        """Put every locked buffer of ``module`` back; returns how many had moved."""
        registries = self.adapter.registries(module)
        moved = 0
        for i, local in enumerate(self.locals):
            where = registries.buffers if local in registries.buffers else registries.statistics
            current = where.get(local)
            original = self.originals[i]
            if current is not None and current is not original:
                if self.adapter.same_layout(current, original):  # assigned anew in a forward: the locked tensor back
                    where[local] = original
                    moved += 1
                else:  # the model was moved or cast (``model.to``): follow it, keep the locked value
                    self.values[i] = self.adapter.like(self.values[i], current)
                    self.originals[i] = original = current
                    self.tokens[i] = self.adapter.change_tokens([current])[0]
        tokens = self.adapter.change_tokens(self.originals)
        written = [i for i, (a, b) in enumerate(zip(tokens, self.tokens)) if a != b]
        if written:
            self.adapter.copy_into([self.originals[i] for i in written], [self.values[i] for i in written])
            moved += len(written)
            self.tokens = self.adapter.change_tokens(self.originals)
        return moved


def _locks(adapter, module) -> list:
    return [h for h in adapter.registries(module).hooks.values() if isinstance(h, BufferLock)]


@dataclass
class BufferLockReport:
    """What :func:`lock_buffers` or :func:`unlock_buffers` did.

    Attributes:
        action: ``"lock"`` or ``"unlock"``.
        model: the model's class and framework.
        buffers: the buffers locked (or released), ``module.local`` names.
        modules: the modules holding them.
    """

    action: str
    model: str
    buffers: list = field(default_factory=list)
    modules: list = field(default_factory=list)

    def __str__(self) -> str:
        rows = [
            [m or "(root)", ", ".join(b.rpartition(".")[2] for b in self.buffers if _owner(b) == m)]
            for m in self.modules
        ]
        verb = "locked" if self.action == "lock" else "released"
        return render(
            f"xfreeze.{self.action}_buffers: {self.model}",
            ["module", "examples"],
            rows,
            [f"{len(self.buffers)} buffers of {len(self.modules)} modules {verb}"],
        )

    __repr__ = __str__


def _owner(name: str) -> str:
    return name.rpartition(".")[0]


def lock_buffers(model, *patterns, backend: str | None = None) -> BufferLockReport:
    """Keep the buffers of frozen modules at their current values, restored around every forward of the module.

    Norm layers are left to the norm lock (:func:`xfreeze.freeze` with ``norm="freeze"``); every buffer of
    another frozen module is locked: its value now is put back before and after each forward of the
    module (a tensor assigned anew is replaced by the locked one, one written in place is copied back). Lock after
    loading weights: a later load into a locked buffer is undone at the next forward (unlock, load, lock again).

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        *patterns: modules whose buffers to lock, as :func:`xfreeze.select` patterns naming modules; none: every
            frozen module (frozen: see :mod:`xfreeze.model.buffers`).
        backend: force ``"torch"`` or ``"paddle"``.

    Returns:
        BufferLockReport: the buffers locked and their modules; prints as a table.

    Raises:
        XFreezeError: a pattern that selects no module holding buffers, an invalid pattern, or not a model. Nothing
            is changed then.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
        >>> model[0].register_buffer("scale", torch.ones(2))
        >>> _ = xfreeze.freeze(model, "0")
        >>> xfreeze.lock_buffers(model).buffers
        ['0.scale']
    """
    view = view_of(model, backend)
    chosen = _chosen(view, patterns)
    plan = []
    for mi in (int(m) for m in np.flatnonzero(chosen)):
        if mi in view.stat_modules or _locks(view.adapter, view.modules[mi]):  # norm layers: the norm lock's
            continue
        found = module_buffers(view, mi)
        if found:
            plan.append((mi, found))
    if patterns and not plan and not any(_locks(view.adapter, view.modules[int(m)]) for m in np.flatnonzero(chosen)):
        raise XFreezeError(
            f"lock_buffers: the patterns {list(patterns)!r} select no module of {view.label} that holds buffers "
            "(norm layers aside: freeze(..., norm='freeze') locks those). Nothing was changed"
        )
    report = BufferLockReport("lock", view.label)
    with model_lock(model):
        for mi, found in plan:
            module = view.modules[mi]
            lock = BufferLock(view.adapter, module, found)
            module.register_forward_pre_hook(lock)
            lock.post = view.adapter.forward_post_hook(module, lock.after)
            report.modules.append(view.paths[mi])
            report.buffers += [f"{view.paths[mi]}.{k}" if view.paths[mi] else k for k in found]
    return report


def unlock_buffers(model, *patterns, backend: str | None = None) -> BufferLockReport:
    """Release buffer locks set by :func:`lock_buffers` (all of them, or those of the modules the patterns select).

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        *patterns: modules to release, as :func:`xfreeze.select` patterns; none: every module.
        backend: force ``"torch"`` or ``"paddle"``.

    Returns:
        BufferLockReport: the buffers released.

    Raises:
        XFreezeError: an invalid pattern, or not a model. Nothing is changed then.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Linear(2, 2)
        >>> model.register_buffer("scale", torch.ones(2))
        >>> _ = xfreeze.freeze(model, "*")
        >>> _ = xfreeze.lock_buffers(model)
        >>> xfreeze.unlock_buffers(model).buffers
        ['scale']
    """
    view = view_of(model, backend)
    chosen = _select.module_mask(view, _select.compile_patterns(patterns)) if patterns else None
    report = BufferLockReport("unlock", view.label)
    with model_lock(model):
        for mi, module in enumerate(view.modules):
            if chosen is not None and not chosen[mi]:
                continue
            hooks = view.adapter.registries(module).hooks
            for key in [k for k, h in hooks.items() if isinstance(h, BufferLock)]:
                lock = hooks.pop(key)
                lock.post.remove()
                report.modules.append(view.paths[mi])
                report.buffers += [f"{view.paths[mi]}.{k}" if view.paths[mi] else k for k in lock.locals]
    return report


def locked_buffers(model, backend: str | None = None) -> list[str]:
    """Names of the buffers :func:`lock_buffers` holds now, in model order."""
    view = view_of(model, backend)
    return [
        f"{path}.{k}" if path else k
        for path, module in zip(view.paths, view.modules)
        for lock in _locks(view.adapter, module)
        for k in lock.locals
    ]


def _chosen(view, patterns) -> np.ndarray:
    if not patterns:
        return frozen_modules(view)
    compiled = _select.compile_patterns(patterns)
    chosen = _select.module_mask(view, compiled)
    return chosen

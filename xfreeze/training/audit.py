"""Proof that it trained: :func:`audit` watches a few training steps and names every tensor that did not do what the
freeze says.

Users keep finding runs where a parameter they meant to train never moved (an adapter that loads and does nothing,
a parameter left out of the optimizer) or where "frozen" state drifted through a path that is not a gradient (a
router bias updated from token counts, a quantizer's ``x_min`` / ``x_max``, a norm statistic of a frozen backbone,
weight decay over every parameter of a hand-built loop). The audit checks, around the steps it watches:

* trainable parameters that received no gradient (a hook per parameter: a flag, nothing kept), or that received one
  and did not change;
* trainable parameters in no group of the optimizer;
* frozen parameters that changed, and frozen rows of tensors that train (:mod:`xfreeze.model.buffers` regions);
* buffers inside frozen modules that changed: any buffer, by name (a forward may assign a new tensor).

Cost: one hash of each watched tensor at the start and one at the end (nothing is copied and kept), plus a
gradient hook per trainable parameter; leaving it on for a few steps is cheap.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np

from ..core import tensors as _tensors
from ..core.errors import XFreezeError
from ..core.hashing import bits_digest
from ..core.table import render
from ..model import slices as _slices
from ..model.buffers import frozen_buffers, frozen_regions, live_buffer
from ..model.live import live_optimizer
from ..model.view import view_of

SHOWN = 8  # names in a table cell before "(+N)"
FINDINGS = (
    ("no_grad", "trainable, received no gradient"),
    ("unchanged", "trainable, gradient but unchanged"),
    ("not_in_optimizer", "trainable, in no optimizer group"),
    ("frozen_changed", "frozen parameter changed"),
    ("rows_changed", "frozen rows changed"),
    ("buffers_changed", "buffer of a frozen module changed"),
)
_HINTS = {
    "no_grad": "a trainable parameter with no gradient is not in the loss's graph (an adapter that is never "
    "called, a branch the forward skips): check the forward, or freeze it",
    "unchanged": "a gradient that moves nothing: a zero learning rate, a parameter the optimizer does not step, "
    "or a gradient that is zero",
    "not_in_optimizer": "rebuild the optimizer over what trains (xfreeze.optimizer(model, ...)), or unfreeze "
    "through StagedUnfreeze / the xfreeze callbacks, which add new groups",
    "frozen_changed": "something other than a gradient moved it: weight decay or momentum in a loop over all "
    "parameters, a load, an EMA written back; build the optimizer with xfreeze.optimizer (what trains only)",
    "rows_changed": "the frozen rows moved: weight decay or momentum over the whole tensor; let xfreeze train the "
    "slice",
    "buffers_changed": "a frozen module writes its buffers in forward (or a hook does): xfreeze.lock_buffers(model) "
    "keeps them fixed; norm statistics: xfreeze.freeze(..., norm='freeze') locks them",
}


@dataclass
class AuditReport:
    """What :func:`audit` found; prints as a table.

    Attributes:
        model: the model's class and framework.
        steps: the steps :meth:`Audit.step` counted.
        no_grad: trainable parameters that received no gradient.
        unchanged: trainable parameters that received a gradient and did not change.
        not_in_optimizer: trainable parameters in no group of the optimizer (empty when no optimizer is known).
        frozen_changed: frozen parameters whose bits changed.
        rows_changed: ``name[rows]`` of tensors whose frozen rows changed.
        buffers_changed: buffers inside frozen modules whose bits changed (or that were removed).
        checked: how many tensors each check covered (``trainable``, ``frozen``, ``rows``, ``buffers``).
        optimizer_checked: whether an optimizer was known (the ``not_in_optimizer`` check ran).
        allowed: findings left out by ``allow`` patterns.
    """

    model: str
    steps: int = 0
    no_grad: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)
    not_in_optimizer: list = field(default_factory=list)
    frozen_changed: list = field(default_factory=list)
    rows_changed: list = field(default_factory=list)
    buffers_changed: list = field(default_factory=list)
    checked: dict = field(default_factory=dict)
    optimizer_checked: bool = False
    allowed: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No finding: everything trainable trained and is stepped, nothing frozen moved."""
        return not any(getattr(self, key) for key, _ in FINDINGS)

    @property
    def findings(self) -> dict:
        """``{finding: names}`` of the findings there are."""
        return {key: getattr(self, key) for key, _ in FINDINGS if getattr(self, key)}

    def __str__(self) -> str:
        rows = [[label, len(getattr(self, key)), _sample(getattr(self, key))] for key, label in FINDINGS]
        c = self.checked
        footer = [
            f"{'OK' if self.ok else 'FAULTS FOUND'} after {self.steps} step(s): checked {c.get('trainable', 0)} "
            f"trainable and {c.get('frozen', 0)} frozen parameters, {c.get('rows', 0)} frozen row sets, "
            f"{c.get('buffers', 0)} buffers of frozen modules"
        ]
        if not self.optimizer_checked:
            footer.append("no optimizer given: optimizer groups not checked (audit(model, optimizer))")
        if self.allowed:
            footer.append(f"allowed (not counted): {_sample(self.allowed)}")
        footer += [f"HINT ({label}): {_HINTS[key]}" for key, label in FINDINGS if getattr(self, key)]
        return render(f"xfreeze.audit: {self.model}", ["finding", "tensors", "examples"], rows, footer)

    __repr__ = __str__

    def raise_if_faults(self) -> None:
        """Raise an :class:`~xfreeze.XFreezeError` carrying the table when there is any finding.

        Raises:
            XFreezeError: the report is not ``ok``.
        """
        if not self.ok:
            raise XFreezeError(f"the training audit found faults:\n{self}")


class Audit:
    """Watches training steps of a model (see :func:`audit`): :meth:`start`, :meth:`step` after each optimizer step,
    :meth:`finish`; or ``with`` it around the steps."""

    def __init__(self, model, optimizer=None, *, allow=(), strict: bool = False, backend: str | None = None):
        if isinstance(allow, str):
            allow = (allow,)
        if not isinstance(allow, (list, tuple)) or not all(isinstance(a, str) and a for a in allow):
            raise XFreezeError(f"allow must be a list of name patterns (globs). Received: allow={allow!r}")
        if not isinstance(strict, bool):
            raise XFreezeError(f"strict must be True or False. Received: strict={strict!r}")
        self.view = view_of(model, backend)
        self.model, self.adapter = model, self.view.adapter
        if optimizer is not None and not self.adapter.is_optimizer(optimizer):
            raise XFreezeError(
                f"optimizer must be an optimizer of {self.adapter.name} (or None). Received: {type(optimizer).__name__}"
            )
        self.optimizer, self.allow, self.strict = optimizer, tuple(allow), strict
        self.steps = 0
        self.report: AuditReport | None = None
        self._started = False
        self._hooks: list = []
        self._grads: set = set()

    # --- the life of an audit -----------------------------------------------------------------------------------
    def start(self) -> "Audit":
        """Hash what is watched and hook the gradients; returns the audit."""
        if self._started:
            raise XFreezeError("this audit has started already; build a new xfreeze.audit(...) for another run")
        view = self.view = view_of(self.model, self.adapter.name)
        live = view.trainable()
        self._trainable = [i for i in range(len(view.params)) if live[i]]
        self._frozen = [i for i in range(len(view.params)) if not live[i]]
        self._regions = {i: (rows, 0) for i, rows in frozen_regions(view).items() if live[i]}
        for base, split in _slices.splits(view).items():  # a split tensor: its whole parameter holds the frozen rows
            if not live[base]:
                length = view.shapes[base][split.axis]
                self._regions[base] = (np.setdiff1d(np.arange(length), split.rows), split.axis)
                self._frozen.remove(base)
        self._buffers = [(name, view.modules[mi], local) for name, mi, local in frozen_buffers(view, live)]
        self._before = self._hash_all()
        for i in self._trainable:
            self._hooks.append(self.adapter.grad_hook(view.params[i], self._seen(i)))
        self._started = True
        self.report = None
        return self

    def step(self) -> None:
        """Count one optimizer step (call it after ``optimizer.step()``; the gradients are seen by hooks)."""
        self._need_started("step")
        self.steps += 1

    def finish(self) -> AuditReport:
        """Hash again, compare, remove the hooks; the report (raised as an error with ``strict=True``)."""
        self._need_started("finish")
        for handle in self._hooks:
            handle.remove()
        self._hooks, self._started = [], False
        after = self._hash_all()
        self.report = report = self._compare(after)
        if self.strict:
            report.raise_if_faults()
        return report

    def __enter__(self) -> "Audit":
        return self.start()

    def __exit__(self, kind, value, traceback) -> None:
        if not self._started:
            return
        if kind is not None:  # the steps failed: report, never mask their error
            strict, self.strict = self.strict, False
            self.finish()
            self.strict = strict
            return
        self.finish()

    # --- internals ----------------------------------------------------------------------------------------------
    def _seen(self, i: int):
        grads = self._grads

        def hook(grad) -> None:
            grads.add(i)

        return hook

    def _hash_all(self) -> dict:
        view = self.view
        out: dict = {}
        for i in self._trainable + self._frozen:
            out[("param", i)] = bits_digest(_tensors.to_raw(view.params[i], view.names[i]).bits)
        for i, (rows, axis) in self._regions.items():
            bits = _tensors.to_raw(view.params[i], view.names[i]).bits
            inside = rows[rows < bits.shape[axis]] if bits.ndim > axis else rows[:0]
            out[("rows", i)] = bits_digest(np.take(bits, inside, axis=axis) if bits.ndim > axis else bits[:0])
        for name, module, local in self._buffers:
            tensor = live_buffer(self.adapter, module, local)
            out[("buffer", name)] = None if tensor is None else bits_digest(_tensors.to_raw(tensor, name).bits)
        return out

    def _compare(self, after: dict) -> AuditReport:
        view, before = self.view, self._before
        report = AuditReport(view.label, steps=self.steps)
        moved = {key for key in before if before[key] != after.get(key)}
        for i in self._trainable:
            if i not in self._grads:
                report.no_grad.append(view.names[i])
            elif ("param", i) not in moved:
                report.unchanged.append(view.names[i])
        optimizer = self.optimizer if self.optimizer is not None else live_optimizer(self.model)
        if optimizer is not None:
            report.optimizer_checked = True
            held = self.adapter.optimizer_param_ids(optimizer)
            report.not_in_optimizer = [view.names[i] for i in self._trainable if id(view.params[i]) not in held]
            outside = set(report.not_in_optimizer)
            report.unchanged = [n for n in report.unchanged if n not in outside]
        report.frozen_changed = [view.names[i] for i in self._frozen if ("param", i) in moved]
        report.rows_changed = [
            f"{view.names[i]}[{_rows(rows)}]" for i, (rows, _) in self._regions.items() if ("rows", i) in moved
        ]
        report.buffers_changed = [name for name, _, _ in self._buffers if ("buffer", name) in moved]
        report.checked = {
            "trainable": len(self._trainable),
            "frozen": len(self._frozen),
            "rows": len(self._regions),
            "buffers": len(self._buffers),
        }
        self._apply_allow(report)
        return report

    def _apply_allow(self, report: AuditReport) -> None:
        if not self.allow:
            return
        for key, _ in FINDINGS:
            kept: list = []
            for name in getattr(report, key):
                plain = name.partition("[")[0]
                (report.allowed if any(fnmatch.fnmatchcase(plain, a) for a in self.allow) else kept).append(name)
            setattr(report, key, kept)

    def _need_started(self, what: str) -> None:
        if not self._started:
            raise XFreezeError(
                f"Audit.{what}() before start(): use `with xfreeze.audit(model, optimizer) as audit:` or call "
                "audit.start() before the first step"
            )


def audit(model, optimizer=None, *, allow=(), strict: bool = False, backend: str | None = None) -> Audit:
    """Watch a few training steps and report, tensor by tensor, what did not do what the freeze says.

    Reported: trainable parameters that received no gradient, or that received one and did not change; trainable
    parameters in no group of the optimizer; frozen parameters that changed; frozen rows that changed (of tensors
    that partly train); buffers inside frozen modules that changed (any buffer: a router bias, an fp8 amax
    history, a quantizer's range, an unlocked statistic). Trainability is read when the audit starts.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``, frozen as wanted.
        optimizer: the optimizer that steps it; default: the one :func:`xfreeze.optimizer` last built for the
            model. Without one the optimizer-group check is skipped (the report says so).
        allow: name globs (``"*.x_min"``) of tensors allowed to behave so: their findings are listed under
            ``allowed`` and do not count.
        strict: raise an :class:`~xfreeze.XFreezeError` with the report when the audit ends with findings.
        backend: force ``"torch"`` or ``"paddle"``.

    Returns:
        Audit: a context manager (``with xfreeze.audit(model, opt) as a:``); call ``a.step()`` after each optimizer
        step; ``a.report`` (an :class:`AuditReport`) once it ends, or ``a.finish()`` when driving it by hand.

    Raises:
        XFreezeError: not a model, an object that is not an optimizer, a bad ``allow``/``strict``; with
            ``strict=True``, findings when the audit ends.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> _ = xfreeze.freeze(model, "0")
        >>> opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        >>> with xfreeze.audit(model, opt) as a:
        ...     model(torch.ones(3, 4)).sum().backward()
        ...     opt.step()
        ...     a.step()
        >>> a.report.ok
        True
    """
    return Audit(model, optimizer, allow=allow, strict=strict, backend=backend)


def _rows(rows: np.ndarray) -> str:
    """``0:32000`` for a run, else the first rows listed."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return f"{rows[0]}:{rows[-1] + 1}"
    shown = ",".join(str(r) for r in rows[:4])
    return shown + (",..." if rows.size > 4 else "")


def _sample(names: list) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f", ... (+{len(names) - SHOWN})" if len(names) > SHOWN else "")

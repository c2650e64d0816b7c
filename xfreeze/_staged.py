"""StagedUnfreeze: the "train the head first, then unfreeze deeper with a smaller rate" recipe, on a live optimizer."""
from __future__ import annotations

import numbers
from dataclasses import dataclass

from . import _select
from ._backend import adapter_for
from ._errors import XFreezeError, check_choice
from ._freeze import NORM_MODES, freeze, unfreeze
from ._optim import DEFAULT_NO_DECAY, OptimizerConfig, param_groups

UNITS = ("epoch", "step")


@dataclass(frozen=True)
class Stage:
    """What happens at one boundary of a staged schedule.

    Attributes:
        at: the epoch (or step) at which the stage starts (>= 0).
        freeze: patterns to freeze (see :func:`xfreeze.select`).
        unfreeze: patterns to make trainable; newly trainable parameters join the optimizer as a new group.
        lr: absolute learning rate of that new group (default: the optimizer's base rate).
        batch_size: the batch size from this stage on, for the data loader (``StagedUnfreeze.batch_size``).
        norm: ``"freeze"`` or ``"train"``, as in :func:`xfreeze.freeze`.
    """
    at: int
    freeze: tuple = ()
    unfreeze: tuple = ()
    lr: float | None = None
    batch_size: int | None = None
    norm: str = "freeze"

    def __post_init__(self):
        for field_name in ("freeze", "unfreeze"):
            value = getattr(self, field_name)
            object.__setattr__(self, field_name, (value,) if isinstance(value, str) else tuple(value))


class StagedUnfreeze:
    """Apply :class:`Stage` boundaries during training and grow the live optimizer.

    At a boundary the stage's freeze / unfreeze is applied; parameters that became trainable and are not yet in the
    optimizer join it as a new group with the stage's learning rate and the optimizer's weight-decay rules
    (``no_decay`` groups included). Parameters already training keep their optimizer state; a re-frozen parameter
    stops moving at once (its gradient is dropped). LR schedulers keep driving every group, new ones included.
    Build the optimizer after applying the first stage's freeze, so that it holds only what trains at first: a
    parameter the optimizer already holds keeps its group (and rate) when a stage unfreezes it.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        optimizer: the live optimizer (any torch optimizer; in Paddle, one built by :func:`xfreeze.optimizer`).
        stages: :class:`Stage` objects in strictly increasing ``at`` order.
        unit: ``"epoch"`` or ``"step"``: what the numbers given to :meth:`step` count.
        scheduler: torch: the ``LRScheduler`` wrapping ``optimizer``; Paddle schedulers live inside the optimizer.
        backend: force ``"torch"`` or ``"paddle"``.

    Raises:
        XFreezeError: stages out of order or overlapping, a stage pattern that matches nothing, a non-positive
            learning rate or batch size, an unknown unit or norm mode: all at construction, before any training.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> _ = xfreeze.freeze(model, "0")                 # the first stage's freeze, before the optimizer
        >>> opt = xfreeze.optimizer(model, "sgd", lr=0.1)  # holds only what trains now
        >>> staged = xfreeze.StagedUnfreeze(model, opt, [xfreeze.Stage(0, freeze=["0"]),
        ...                                              xfreeze.Stage(2, unfreeze=["0"], lr=0.01)])
        >>> staged.step(0).at, staged.step(2).at, len(opt.param_groups)
        (0, 2, 2)
    """

    def __init__(self, model, optimizer, stages, *, unit: str = "epoch", scheduler=None, backend: str | None = None):
        self.adapter = adapter_for(model, backend)
        check_choice("unit", unit, UNITS)
        self.model, self.optimizer, self.scheduler, self.unit = model, optimizer, scheduler, unit
        self.stages = list(stages)
        self.config = self._config(optimizer)
        self._validate()
        self.applied = 0           # how many stages have been applied
        self.position: int | None = None

    @property
    def current(self) -> Stage | None:
        """The stage in force (the last one applied)."""
        return self.stages[self.applied - 1] if self.applied else None

    @property
    def batch_size(self) -> int | None:
        """The batch size the stages in force ask for (None when no stage set one)."""
        return next((s.batch_size for s in reversed(self.stages[: self.applied]) if s.batch_size), None)

    def step(self, position: int) -> Stage | None:
        """Call at the start of every epoch (or step); applies every stage whose ``at`` has come. Returns the
        stage in force."""
        if isinstance(position, bool) or not isinstance(position, numbers.Integral):
            raise XFreezeError(f"StagedUnfreeze.step takes the {self.unit} number. Received: {position!r}")
        if self.position is not None and position < self.position:
            raise XFreezeError(f"StagedUnfreeze.step({position}) after step({self.position}): {self.unit}s must not "
                               "go backwards; to resume, use load_state_dict")
        self.position = position
        while self.applied < len(self.stages) and self.stages[self.applied].at <= position:
            self._apply(self.stages[self.applied])
            self.applied += 1
        return self.current

    def state_dict(self) -> dict:
        """A snapshot of the schedule's progress and of the optimizer (and torch scheduler) state, keyed by
        structured parameter names, so a fresh model, optimizer and StagedUnfreeze can resume bit for bit."""
        return {"applied": self.applied, "position": self.position,
                "optimizer": self.adapter.optimizer_state(self.optimizer, self.model),
                "scheduler": self.adapter.scheduler_state(self.scheduler) if self.scheduler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Re-apply the stages the saved run had reached (growing the optimizer the same way), then restore the
        optimizer and scheduler state. Load the model's weights before or after: they are not touched here."""
        if not 0 <= state["applied"] <= len(self.stages) or self.applied > state["applied"]:
            raise XFreezeError(f"state reached {state['applied']} stages, this StagedUnfreeze has {len(self.stages)} "
                               f"and already applied {self.applied}: build a fresh one with the same stages")
        while self.applied < state["applied"]:
            self._apply(self.stages[self.applied])
            self.applied += 1
        self.position = state["position"]
        self.adapter.load_optimizer_state(self.optimizer, self.model, state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.adapter.load_scheduler_state(self.scheduler, state["scheduler"])

    def _apply(self, stage: Stage) -> None:
        if stage.freeze:
            freeze(self.model, *stage.freeze, norm=stage.norm, backend=self.adapter.name)
        if stage.unfreeze:
            unfreeze(self.model, *stage.unfreeze, backend=self.adapter.name)
        held = self.adapter.optimizer_param_ids(self.optimizer)
        new = [e.name for e in _select.walk(self.adapter, self.model)
               if self.adapter.is_trainable(e.param) and id(e.param) not in held]
        if new:
            groups = param_groups(self.model, lr=stage.lr or self.config.lr, weight_decay=self.config.weight_decay,
                                  no_decay=self.config.no_decay, only=new, backend=self.adapter.name)
            for group in groups:
                self.adapter.add_param_group(self.optimizer, group, self.scheduler)

    def _config(self, optimizer) -> OptimizerConfig:
        config = getattr(optimizer, "_xfreeze_config", None)
        if config is not None:
            return config
        defaults = getattr(optimizer, "defaults", None)  # a torch optimizer built by hand
        if self.adapter.name == "torch" and isinstance(defaults, dict) and "lr" in defaults:
            return OptimizerConfig("custom", float(defaults["lr"]), float(defaults.get("weight_decay", 0.0)),
                                   no_decay=DEFAULT_NO_DECAY)
        raise XFreezeError(f"StagedUnfreeze needs an optimizer it can grow; {type(optimizer).__name__} was not built "
                           f"by xfreeze. Build it with xfreeze.optimizer(model, ...)")

    def _validate(self) -> None:
        if not self.stages:
            raise XFreezeError("StagedUnfreeze needs at least one Stage")
        previous = None
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, Stage):
                raise XFreezeError(f"stages[{i}] is a {type(stage).__name__}, expected xfreeze.Stage")
            if isinstance(stage.at, bool) or not isinstance(stage.at, numbers.Integral) or stage.at < 0:
                raise XFreezeError(f"stages[{i}].at must be an integer {self.unit} >= 0. Received: at={stage.at!r}")
            if previous is not None and stage.at <= previous.at:
                word = "overlap" if stage.at == previous.at else "are out of order"
                raise XFreezeError(f"stages {word}: stages[{i - 1}].at={previous.at} and stages[{i}].at={stage.at}; "
                                   "give each stage its own, increasing start")
            if stage.lr is not None and (isinstance(stage.lr, bool) or not isinstance(stage.lr, numbers.Real)
                                         or not stage.lr > 0):
                raise XFreezeError(f"stages[{i}].lr must be > 0. Received: lr={stage.lr!r}")
            if stage.batch_size is not None and (not isinstance(stage.batch_size, numbers.Integral)
                                                 or stage.batch_size < 1):
                raise XFreezeError(f"stages[{i}].batch_size must be an integer >= 1. "
                                   f"Received: batch_size={stage.batch_size!r}")
            check_choice(f"stages[{i}].norm", stage.norm, NORM_MODES)
            entries = _select.walk(self.adapter, self.model)
            for patterns in (stage.freeze, stage.unfreeze):
                if patterns:
                    _select.resolve(self.adapter, self.model, _select.compile_patterns(patterns), entries)
            previous = stage

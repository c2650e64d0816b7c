"""StagedUnfreeze: the "train the head first, then unfreeze deeper with a smaller rate" recipe, on a live optimizer."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from . import check as _check
from . import rewrap as _distributed
from . import stageplan
from ..core.dispatch import adapter_for
from ..core.errors import XFreezeError, check_choice
from ..model.freeze import NORM_MODES, freeze, unfreeze
from .optim import DEFAULT_NO_DECAY, OptimizerConfig, param_groups
from ..model.select import select_indices
from ..model.view import batched, view_of

UNITS = ("epoch", "step")
STATE_FORMAT = "xfreeze.StagedUnfreeze"
STATE_VERSION = 1  # 0: the first release's state (no format, version, unit or plan keys); still loaded


@dataclass(frozen=True)
class Stage:
    """What happens at one boundary of a staged schedule.

    Attributes:
        at: the epoch (or step) at which the stage starts (>= 0).
        freeze: patterns to freeze (see :func:`xfreeze.select`).
        unfreeze: patterns to make trainable; newly trainable parameters join the optimizer as a new group.
        lr: absolute learning rate of that new group, a finite number > 0 (default: the optimizer's base rate);
            when the optimizer was built with ``lr_mult`` / ``layer_decay``, they scale it per parameter as they
            scale the base rate. Under an LR scheduler it is the group's nominal rate (the rate the schedule scales:
            OneCycleLR's peak, CyclicLR's base), and the schedule drives the group as one the optimizer had from the
            start. Checked when the stage is built: ``inf``, ``nan``, 0, a negative number, a bool or a non-number
            raise an ``XFreezeError``.
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
        stageplan.check_lr(f"Stage(at={self.at!r}, unfreeze={self.unfreeze!r}).lr", self.lr)
        for field_name in ("freeze", "unfreeze"):
            value = getattr(self, field_name)
            object.__setattr__(self, field_name, (value,) if isinstance(value, str) else tuple(value))


class StagedUnfreeze:
    """Apply :class:`Stage` boundaries during training and grow the live optimizer.

    At a boundary the stage's freeze / unfreeze is applied; parameters that became trainable and are not yet in the
    optimizer join it as a new group with the stage's learning rate and the optimizer's weight-decay rules
    (``no_decay`` groups included). Parameters already training keep their optimizer state; a re-frozen parameter
    stops moving at once (its gradient is dropped). LR schedulers keep driving every group, new ones included.
    Build the optimizer after applying the first stage's freeze, so that it holds only what trains at first. An
    optimizer that already holds parameters a stage unfreezes (``torch.optim.SGD(model.parameters())`` built before
    the first stage froze them) could not give them the stage's rate: they would train in the group they are in.
    Such an optimizer is refused when the rates differ. A parameter that trained since the first stage and is frozen
    and unfrozen again by later stages goes back to its own group, at that group's rate.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        optimizer: the live optimizer (any torch optimizer; in Paddle, one built by :func:`xfreeze.optimizer`), holding
            none of the parameters a stage unfreezes at another rate than its group's, or
            ``None`` to apply the first stage before the optimizer exists (a training framework's callback); give
            it later with :meth:`attach`.
        stages: :class:`Stage` objects in strictly increasing ``at`` order.
        unit: ``"epoch"`` or ``"step"``: what the numbers given to :meth:`step` count.
        scheduler: torch: the ``LRScheduler`` wrapping ``optimizer``; Paddle schedulers live inside the optimizer.
        backend: force ``"torch"`` or ``"paddle"``.
        rewrap: for a model in DDP / paddle.DataParallel, a function ``plain model -> wrapper`` (e.g.
            ``lambda m: DistributedDataParallel(m)``): the wrapper is rebuilt at each boundary that changes what
            trains (optimizer state kept); train through ``staged.wrapped``. Without it such stages are refused.

    Raises:
        XFreezeError: stages out of order or overlapping, a stage pattern that matches nothing, a learning rate
            that is not a finite number > 0, a non-positive batch size, an unknown unit or norm mode, a
            ``scheduler`` that is not a scheduler of the model's framework, an optimizer that already holds
            parameters a stage unfreezes at another rate (built before the first stage's freeze): all at
            construction, before anything changes.

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

    @batched
    def __init__(
        self, model, optimizer, stages, *, unit: str = "epoch", scheduler=None, backend: str | None = None, rewrap=None
    ):
        self.adapter = adapter_for(model, backend)
        check_choice("unit", unit, UNITS)
        self.model, self.unit = model, unit
        self.stages = list(stages)
        self._validate()
        self.applied = 0  # how many stages have been applied
        self._trained: set[str] = set()  # what trained since the first stage (keeps its group when unfrozen again)
        if optimizer is not None:  # checked before anything is built or changed
            config = self._config(optimizer)
            self._check_scheduler(scheduler)
            stageplan.refuse_held(self._view(), self.adapter, optimizer, config, self.stages)
        elif scheduler is not None:
            raise XFreezeError("scheduler= needs optimizer=: give both to StagedUnfreeze.attach")
        _distributed.attach(self, rewrap)  # under DDP / DataParallel: self.model plain, self.wrapped the live wrapper
        self.optimizer, self.scheduler, self.config = None, None, None
        self._groups_at_attach = 0  # the optimizer's groups when its scheduler was adopted (attach_scheduler)
        if optimizer is not None:
            self._adopt_scheduler(optimizer, scheduler)
            self.optimizer, self.scheduler, self.config = optimizer, scheduler, config
            _check.remember(model, optimizer)
        self.position: int | None = None

    @batched
    def attach(self, optimizer, scheduler=None) -> None:
        """Give the optimizer (and torch scheduler) built after the first stage was applied.

        Raises:
            XFreezeError: the optimizer already holds a parameter the stages applied so far froze (it was built
                before the first stage was applied, so a later stage could not give that parameter its own group
                and rate), or it cannot grow, or ``scheduler`` is not a scheduler. Nothing is changed then.
        """
        self._check_scheduler(scheduler)
        config = self._config(optimizer)
        held = self.adapter.optimizer_param_ids(optimizer)
        view = self._view()
        stale = [n for n, p, trains in zip(view.names, view.params, view.trainable()) if id(p) in held and not trains]
        if stale:
            raise XFreezeError(
                f"the optimizer holds {len(stale)} parameters that stage 0 froze ({', '.join(stale[:3])}"
                f"{', ...' if len(stale) > 3 else ''}): it was built before the stage could be applied. Build it "
                "after (xfreeze.optimizer(model, ...) holds only what trains), e.g. in configure_optimizers"
            )
        self._adopt_scheduler(optimizer, scheduler)
        self.optimizer, self.scheduler, self.config = optimizer, scheduler, config
        _check.remember(self.model, optimizer)

    @batched
    def attach_scheduler(self, scheduler) -> None:
        """Give the LR scheduler built after the optimizer was attached (a training loop that builds its schedule
        over the optimizer it was handed); it must come before a stage adds a group.

        Raises:
            XFreezeError: no optimizer yet, a stage after the first already grew the optimizer, ``scheduler`` is
                not a scheduler of that optimizer or cannot drive groups added later. Nothing is changed then.
        """
        if self.optimizer is None:
            raise XFreezeError("StagedUnfreeze.attach_scheduler before attach(optimizer)")
        if self.scheduler is not None and scheduler is not self.scheduler:
            raise XFreezeError("StagedUnfreeze already has a scheduler; give one scheduler per optimizer")
        if len(self.adapter.group_lrs(self.optimizer)) != self._groups_at_attach:
            raise XFreezeError(
                "StagedUnfreeze.attach_scheduler after a stage grew the optimizer: the scheduler was built over "
                "fewer groups than it now has; give it with attach(optimizer, scheduler)"
            )
        self._adopt_scheduler(self.optimizer, scheduler)
        self.scheduler = scheduler

    @property
    def plan(self) -> list:
        """The stages as plain data (what a saved state is checked against on load)."""
        return [[s.at, list(s.freeze), list(s.unfreeze), s.lr, s.batch_size, s.norm] for s in self.stages]

    @property
    def current(self) -> Stage | None:
        """The stage in force (the last one applied)."""
        return self.stages[self.applied - 1] if self.applied else None

    @property
    def batch_size(self) -> int | None:
        """The batch size the stages in force ask for (None when no stage set one)."""
        return next((s.batch_size for s in reversed(self.stages[: self.applied]) if s.batch_size), None)

    @batched
    def step(self, position: int) -> Stage | None:
        """Call at the start of every epoch (or step); applies every stage whose ``at`` has come. Returns the
        stage in force."""
        if isinstance(position, bool) or not isinstance(position, numbers.Integral):
            raise XFreezeError(f"StagedUnfreeze.step takes the {self.unit} number. Received: {position!r}")
        if self.position is not None and position < self.position:
            raise XFreezeError(
                f"StagedUnfreeze.step({position}) after step({self.position}): {self.unit}s must not "
                "go backwards; to resume, use load_state_dict"
            )
        if self.optimizer is None and any(s.at <= position for s in self.stages[max(self.applied, 1) :]):
            raise XFreezeError(
                f"StagedUnfreeze.step({position}) reaches a stage after the first, and no optimizer "
                "was given: build it after step(0) and give it with attach(optimizer) first"
            )
        self.position = position
        while self.applied < len(self.stages) and self.stages[self.applied].at <= position:
            self._apply(self.stages[self.applied])
            self.applied += 1
        return self.current

    @batched
    def state_dict(self, *, optimizer: bool = True) -> dict:
        """A snapshot of the schedule's progress (with the stage plan and a format version) and of the optimizer
        (and scheduler) state, keyed by structured parameter names, so a fresh model, optimizer and StagedUnfreeze
        can resume bit for bit. ``optimizer=False`` leaves the optimizer and scheduler out (a training framework
        that saves them itself)."""
        with_opt = optimizer and self.optimizer is not None
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "unit": self.unit,
            "plan": self.plan,
            "applied": self.applied,
            "position": self.position,
            "optimizer": self.adapter.optimizer_state(self.optimizer, self.model) if with_opt else None,
            "scheduler": self.adapter.scheduler_state(self.scheduler)
            if with_opt and self.scheduler is not None
            else None,
        }

    @batched
    def load_state_dict(self, state: dict) -> None:
        """Re-apply the stages the saved run had reached (growing the optimizer the same way), then restore the
        optimizer and scheduler state. Load the model's weights before or after: they are not touched here.

        Raises:
            XFreezeError: not a StagedUnfreeze state, an unknown version, a different stage plan or unit, more
                stages reached than this plan has (or fewer than already applied), or an optimizer state that
                does not fit what the stages give. Everything is checked first: nothing changes then.
        """
        state = self._checked_state(state)
        if state["optimizer"] is not None and self.optimizer is not None:
            self._check_optimizer_state(state)
        while self.applied < state["applied"]:
            self._apply(self.stages[self.applied])
            self.applied += 1
        self.position = state["position"]
        if state["optimizer"] is not None and self.optimizer is not None:
            self.adapter.load_optimizer_state(self.optimizer, self.model, state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.adapter.load_scheduler_state(self.scheduler, state["scheduler"])

    def _checked_state(self, state) -> dict:
        where = "StagedUnfreeze.load_state_dict"
        if not isinstance(state, dict) or "applied" not in state:
            raise XFreezeError(
                f"{where}: expected the dict StagedUnfreeze.state_dict() returns. Received: {type(state).__name__}"
            )
        version = state.get("version", 0)
        if state.get("format", STATE_FORMAT) != STATE_FORMAT or version not in (0, STATE_VERSION):
            raise XFreezeError(
                f"{where}: state format {state.get('format')!r} version {version!r} is not one this "
                f"xfreeze reads ({STATE_FORMAT!r} versions 0..{STATE_VERSION}); upgrade xfreeze"
            )
        if version >= 1 and state.get("unit") != self.unit:
            raise XFreezeError(
                f"{where}: the state counts {state.get('unit')}s, this StagedUnfreeze counts "
                f"{self.unit}s: build it with unit={state.get('unit')!r}"
            )
        if version >= 1 and state.get("plan") != self.plan:
            saved, now = state.get("plan") or [], self.plan
            i = next((k for k, (a, b) in enumerate(zip(saved, now)) if a != b), min(len(saved), len(now)))
            raise XFreezeError(
                f"{where}: the checkpoint was saved with a different stage plan (first difference at "
                f"stages[{i}]: saved {saved[i] if i < len(saved) else 'none'}, now "
                f"{now[i] if i < len(now) else 'none'}); resume with the stages it was saved with"
            )
        applied, position = state["applied"], state.get("position")
        if (
            isinstance(applied, bool)
            or not isinstance(applied, numbers.Integral)
            or not self.applied <= int(applied) <= len(self.stages)
        ):
            raise XFreezeError(
                f"{where}: state reached {applied!r} stages, this StagedUnfreeze has "
                f"{len(self.stages)} and already applied {self.applied}: build a fresh one with the "
                "same stages"
            )
        if position is not None and (isinstance(position, bool) or not isinstance(position, numbers.Integral)):
            raise XFreezeError(f"{where}: position must be an integer or None. Received: {position!r}")
        return {"optimizer": None, "scheduler": None, **state}

    def _check_optimizer_state(self, state: dict) -> None:
        """The saved optimizer state must fit the optimizer re-applying the stages gives, checked before growing."""
        problem = self.adapter.optimizer_state_problem(self.optimizer, self.model, state["optimizer"])
        if problem is None:
            expected = self._held_after(state["applied"])
            saved = self.adapter.saved_param_count(state["optimizer"])
            if saved is not None and saved != expected:
                problem = (
                    f"it holds {saved} parameters, re-applying {state['applied']} stages gives {expected}: it "
                    "comes from another model or stage plan"
                )
        if problem is not None:
            raise XFreezeError(f"StagedUnfreeze.load_state_dict: the optimizer state does not fit: {problem}")

    def _held_after(self, applied: int) -> int:
        """How many parameters the optimizer will hold after the stages up to ``applied``, without applying any."""
        return stageplan.held_after(self._view(), self.adapter, self.optimizer, self.stages, self.applied, applied)

    def _check_scheduler(self, scheduler) -> None:
        if scheduler is not None and not self.adapter.is_scheduler(scheduler):
            raise XFreezeError(
                f"scheduler must be a learning-rate scheduler object of the model's framework (or "
                f"None). Received: scheduler={scheduler!r}"
            )

    def _adopt_scheduler(self, optimizer, scheduler) -> None:
        """Checked, then recorded by the adapter: a group a stage adds follows the schedule as a group the
        optimizer had from the start, with the stage's rate as its nominal rate."""
        groups, problem = len(self.adapter.group_lrs(optimizer)), None
        if scheduler is not None:
            self._check_scheduler(scheduler)
            problem = self.adapter.adopt_scheduler(optimizer, scheduler)
        if problem is not None:
            raise XFreezeError(
                f"StagedUnfreeze cannot grow this schedule: {problem}.\nHINT: give the scheduler built over this "
                "optimizer (a built-in LRScheduler, ReduceLROnPlateau, or a SequentialLR / ChainedScheduler of them)"
            )
        self._groups_at_attach = groups

    def _apply(self, stage: Stage) -> None:
        before = set(self._trainable_names())
        with _distributed.stage_boundary(self, stage):  # rewrap: rebuilds the wrapper when what trains changed
            if stage.freeze:
                freeze(self.model, *stage.freeze, norm=stage.norm, backend=self.adapter.name)
            if stage.unfreeze:
                with _check.quiet():  # the new parameters join the optimizer just below
                    unfreeze(self.model, *stage.unfreeze, backend=self.adapter.name)
        after = self._trainable_names()
        if self.optimizer is not None and self.config is not None:  # else the first stage, before the optimizer
            self._grow(stage, self.config, after, [n for n in after if n not in before and n not in self._trained])
        self._trained |= set(after)

    def _grow(self, stage: Stage, config: OptimizerConfig, trainable: list, unfrozen: list) -> None:
        """Trainable parameters the optimizer lacks join it as new groups at the stage's rate; the plan records that
        rate for them and for ``unfrozen`` ones it already held (they keep their group: see stageplan)."""
        view = self._view()
        held = self.adapter.optimizer_param_ids(self.optimizer)
        new = [n for n in trainable if id(view.params[view.index[n]]) not in held]
        if not new and not unfrozen:
            return
        groups = param_groups(
            self.model,
            lr=stage.lr or config.lr,
            weight_decay=config.weight_decay,
            no_decay=config.no_decay,
            lr_mult=config.lr_mult,
            layer_decay=config.layer_decay,
            no_decay_1d=config.no_decay_1d,
            model_no_decay=config.model_no_decay,
            only=set(new) | set(unfrozen),
            backend=self.adapter.name,
        )
        k = self.applied  # the index of the stage being applied
        source = f"stages[{k}].lr" if stage.lr is not None else f"stages[{k}]: the optimizer's base rate"
        _check.record_rates(self.optimizer, {n: g["lr"] for g in groups for n in g["names"]}, source)
        for group in groups:
            keep = [j for j, p in enumerate(group["params"]) if id(p) not in held]
            if keep:
                group = {
                    **group,
                    "params": [group["params"][j] for j in keep],
                    "names": [group["names"][j] for j in keep],
                }
                self.adapter.add_param_group(self.optimizer, group, self.scheduler)

    def _trainable_names(self) -> list:
        view = self._view()
        return [n for n, trains in zip(view.names, view.trainable()) if trains]

    def _config(self, optimizer) -> OptimizerConfig:
        config = getattr(optimizer, "_xfreeze_config", None)
        if config is not None:
            return config
        defaults = self.adapter.optimizer_defaults(optimizer)  # an optimizer built by hand, where it can grow
        if defaults is not None:
            return OptimizerConfig(
                "custom", float(defaults["lr"]), float(defaults.get("weight_decay", 0.0)), no_decay=DEFAULT_NO_DECAY
            )
        raise XFreezeError(
            f"StagedUnfreeze needs an optimizer it can grow; {type(optimizer).__name__} was not built "
            f"by xfreeze. Build it with xfreeze.optimizer(model, ...)"
        )

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
                raise XFreezeError(
                    f"stages {word}: stages[{i - 1}].at={previous.at} and stages[{i}].at={stage.at}; "
                    "give each stage its own, increasing start"
                )
            stageplan.check_lr(f"stages[{i}].lr", stage.lr)
            if stage.batch_size is not None and (
                not isinstance(stage.batch_size, numbers.Integral) or stage.batch_size < 1
            ):
                raise XFreezeError(
                    f"stages[{i}].batch_size must be an integer >= 1. Received: batch_size={stage.batch_size!r}"
                )
            check_choice(f"stages[{i}].norm", stage.norm, NORM_MODES)
            for patterns in (stage.freeze, stage.unfreeze):
                if patterns:
                    select_indices(self._view(), patterns)  # raises for a pattern matching nothing
            previous = stage

    def _view(self):
        return view_of(self.model, self.adapter.name)

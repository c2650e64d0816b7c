"""What every integration shares: apply stage 0 before the optimizer exists, attach it, step, keep an EMA, resume.

Framework-free: the callbacks in the sibling modules only decide *when* to call these methods.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings

from ..training import rewrap as _distributed
from ..training.audit import Audit, AuditReport
from ..training.ema import EMA
from ..core.errors import XFreezeError, check_choice
from ..training.optim import check_group_options, no_decay_patterns, param_groups
from ..training.staged import UNITS, Stage, StagedUnfreeze

STATE_FORMAT = "xfreeze.integrations.Staging"
STATE_VERSION = 1
STATE_KEY = "xfreeze"  # the key under which the staging state rides inside an optimizer's state dict
AUDIT_STEPS = 3  # audit=True: the first optimizer steps watched by xfreeze.audit


class Staging:
    """A :class:`~xfreeze.StagedUnfreeze` (and an optional :class:`~xfreeze.EMA`) driven by a training framework.

    The life of a fit: :meth:`prepare` (the model is known: stages are checked and the first stage's freeze is
    applied, before the optimizer is built), :meth:`attach` (the optimizer exists: checked to hold nothing stage 0
    froze), :meth:`step` at every epoch or step, :meth:`after_optimizer_step` (EMA), :meth:`state_dict` /
    :meth:`load_state_dict` (resume: the stages reached are re-applied, growing the optimizer the same way, before
    the framework loads the optimizer state).

    Args:
        stages: :class:`xfreeze.Stage` objects in increasing ``at`` order.
        unit: ``"epoch"`` or ``"step"`` (optimizer steps, the framework's global step).
        ema: ``None`` or an EMA decay in (0, 1).
        backend: force ``"torch"`` or ``"paddle"``.
        groups: ``lr_mult`` / ``no_decay`` / ``layer_decay`` / ``no_decay_1d`` / ``model_no_decay`` for the groups
            stages add to an optimizer xfreeze did not build (one written by hand in ``configure_optimizers``, the
            Trainer's own); an optimizer built by :func:`xfreeze.optimizer` carries its own, so giving them here too
            is refused.
        audit: ``False``, ``True`` (3 steps) or a number of optimizer steps: :func:`xfreeze.audit` watches the
            first steps of the fit (until a stage boundary at the latest); its report is ``audit_report``, and a
            report with findings is also warned.

    Raises:
        XFreezeError: an unknown unit, a bad ``ema``, no/invalid stages, a stage with a ``batch_size`` (the
            framework owns the data loader); pattern checks come at :meth:`prepare`.
    """

    def __init__(
        self,
        stages,
        *,
        unit: str = "epoch",
        ema: float | None = None,
        backend: str | None = None,
        audit: bool | int = False,
        **groups,
    ):
        check_choice("unit", unit, UNITS)
        if isinstance(audit, bool):
            audit = AUDIT_STEPS if audit else 0
        if not isinstance(audit, int) or audit < 0:
            raise XFreezeError(f"audit must be True, False or a number of optimizer steps. Received: audit={audit!r}")
        self.audit_steps = audit
        self.audit: Audit | None = None  # watching the first steps
        self.audit_report: AuditReport | None = None
        unknown = sorted(set(groups) - {"lr_mult", "no_decay", "layer_decay", "no_decay_1d", "model_no_decay"})
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown}")
        for flag in ("no_decay_1d", "model_no_decay"):
            if flag in groups and not isinstance(groups[flag], bool):
                raise XFreezeError(f"{flag} must be True or False. Received: {flag}={groups[flag]!r}")
        check_group_options(groups.get("lr_mult"), groups.get("no_decay"), groups.get("layer_decay"))
        stages = list(stages) if isinstance(stages, (list, tuple)) else stages
        if not isinstance(stages, list) or not stages or not all(isinstance(s, Stage) for s in stages):
            raise XFreezeError(f"stages must be a non-empty list of xfreeze.Stage. Received: stages={stages!r}")
        sized = [f"stages[{i}].batch_size={s.batch_size}" for i, s in enumerate(stages) if s.batch_size is not None]
        if sized:
            raise XFreezeError(
                f"{', '.join(sized)}: the training framework builds the data loader, so a callback cannot change its "
                "batch size mid-fit.\nHINT: leave batch_size out of the stages and set the loader's batch size "
                "yourself; a hand-written loop can follow it with StagedUnfreeze(...).batch_size"
            )
        if ema is not None and (isinstance(ema, bool) or not isinstance(ema, numbers.Real) or not 0 < ema < 1):
            raise XFreezeError(f"ema must be None or a decay in (0, 1). Received: ema={ema!r}")
        self.stages, self.unit, self.decay, self.backend = stages, unit, ema, backend
        self.groups = {k: v for k, v in groups.items() if v is not None or k == "no_decay"}  # no_decay=None: none
        self.staged: StagedUnfreeze | None = None
        self.ema: EMA | None = None
        self.pending: dict | None = None  # a state loaded before the optimizer existed
        self.restored: int | None = None  # the position a restored state had reached

    @property
    def prepared(self) -> bool:
        return self.staged is not None

    @property
    def attached(self) -> bool:
        return self.staged is not None and self.staged.optimizer is not None

    def prepare(self, model) -> None:
        """Check the stages against ``model`` and apply what is due at 0 (before the optimizer is built)."""
        if self.staged is not None and self.staged.model is model:
            return
        staged = StagedUnfreeze(model, None, self.stages, unit=self.unit, backend=self.backend)
        staged.step(0)
        if self.groups:  # their patterns, checked against the model before training
            param_groups(model, lr=1.0, **self.groups, backend=staged.adapter.name)
        self.staged = staged
        if self.decay is not None:
            self.ema = EMA(model, self.decay, backend=self.backend)

    def adopt_wrapper(self, wrapper, rewrap) -> None:
        """The framework wrapped the model (DDP) after :meth:`prepare`: later stages rebuild ``wrapper`` through
        ``rewrap(plain model) -> new wrapper``; call before :meth:`attach` so that a resume rewraps too.

        Raises:
            XFreezeError: ``wrapper`` does not wrap the prepared model, or a stage still to come is one the wrapper
                cannot follow even when rebuilt. Nothing is changed then.
        """
        _distributed.adopt(self._need_prepared("adopt_wrapper"), wrapper, rewrap)

    def attach(self, optimizer, scheduler=None) -> None:
        """Give the live optimizer (and scheduler); a state loaded earlier is applied now (groups regrown).

        Raises:
            XFreezeError: as :meth:`xfreeze.StagedUnfreeze.attach`; group options given both here and to
                :func:`xfreeze.optimizer`. Nothing is changed then.
        """
        staged = self._need_prepared("attach")
        if self.groups and getattr(optimizer, "_xfreeze_config", None) is not None:
            raise XFreezeError(
                f"group options {sorted(self.groups)} were given to the callback, but the optimizer was built by "
                "xfreeze.optimizer, which has its own.\nHINT: give lr_mult / no_decay / layer_decay in one place: "
                "to xfreeze.optimizer (its groups and the ones stages add), or to the callback for an optimizer "
                "built by hand"
            )
        staged.attach(optimizer, scheduler)
        if self.groups and staged.config is not None:
            staged.config = dataclasses.replace(staged.config, **self._config_options())
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self._restore(pending)
        if self.audit_steps and self.audit_report is None and self.audit is None:
            self.audit = Audit(staged.model, optimizer, backend=staged.adapter.name).start()

    def _config_options(self) -> dict:
        options = dict(self.groups)
        if "no_decay" in options:
            options["no_decay"] = no_decay_patterns(options["no_decay"])
        if "lr_mult" in options:
            options["lr_mult"] = dict(options["lr_mult"])
        return options

    def attach_scheduler(self, scheduler) -> None:
        """The schedule a training loop built over the attached optimizer (see
        :meth:`xfreeze.StagedUnfreeze.attach_scheduler`)."""
        self._need_prepared("attach_scheduler").attach_scheduler(scheduler)

    @property
    def optimizer(self):
        return self.staged.optimizer if self.staged is not None else None

    def follow_wrapper(self) -> None:
        """When the training loop has wrapped the model in DDP / DataParallel since :meth:`prepare` and holds that
        wrapper (the Hugging Face and PaddleNLP Trainers, ``paddle.Model``): keep it, and give parameters a later
        stage unfreezes an averaging hook (:data:`xfreeze.training.rewrap.KEEP`). Call when training begins so that a
        stage the wrapper cannot follow (a freeze after wrapping) is refused before the first step.

        Raises:
            XFreezeError: a stage still to come freezes parameters, or the ranks froze different tensors.
        """
        _distributed.follow_wrapper(self._need_prepared("follow_wrapper"))

    def step(self, position: int) -> None:
        """At the start of every epoch (or step): apply the stages that have come."""
        staged = self._need_prepared("step")
        if staged.position is None or position > staged.position:
            if any(s.at <= position for s in staged.stages[staged.applied :]):
                self._finish_audit()  # the audit reads trainability at its start: it ends before a boundary
                _distributed.follow_wrapper(staged)  # a wrapper built since (once; nothing without a process group)
            staged.step(position)
            if self.ema is not None:
                self.ema.refresh()  # a tensor a stage just released starts its average at the boundary's value

    def after_optimizer_step(self) -> None:
        if self.ema is not None:
            self.ema.update()
        if self.audit is not None:
            self.audit.step()
            if self.audit.steps >= self.audit_steps:
                self._finish_audit()

    def _finish_audit(self) -> None:
        """End the audit: keep its report, and warn it when it has findings."""
        if self.audit is None:
            return
        audit, self.audit = self.audit, None
        self.audit_report = report = audit.finish()
        if not report.ok:
            warnings.warn(f"xfreeze audit of the first {report.steps} optimizer step(s):\n{report}", stacklevel=2)

    def state_dict(self) -> dict:
        """Progress of the stages (plan and version included) and the EMA; not the optimizer, which the
        framework saves itself."""
        staged = self._need_prepared("state_dict")
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "staged": staged.state_dict(optimizer=False),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, state) -> None:
        """Check ``state`` at once (format, version, stage plan); apply it now if the optimizer is attached, else
        when it is."""
        staged = self._need_prepared("load_state_dict")
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise XFreezeError(
                f"not an xfreeze staging state (expected format {STATE_FORMAT!r}); was the checkpoint "
                "written with the xfreeze callback?"
            )
        if state.get("version") != STATE_VERSION:
            raise XFreezeError(
                f"staging state version {state.get('version')!r} is not one this xfreeze reads "
                f"({STATE_VERSION}); upgrade xfreeze"
            )
        staged._checked_state(state["staged"])  # a different stage plan fails here, before training starts
        if (state.get("ema") is None) != (self.ema is None):
            saved = "None" if state.get("ema") is None else "a decay"
            raise XFreezeError(f"the checkpoint was saved with ema={saved}, this callback has ema={self.decay}")
        if self.attached:
            self._restore(state)
        else:
            self.pending = state

    def ride_in_optimizer_state(self) -> None:
        """Save this state inside the optimizer's own state dict and restore it first when that is loaded, for
        frameworks that save and load the optimizer but offer callbacks no hook in between."""

        def save(state):
            state[STATE_KEY] = {**self.state_dict(), "keys": sorted(state)}
            return state

        def load(state):
            state = dict(state)
            saved = state.pop(STATE_KEY, None)
            if saved is not None:
                # only what was saved: paddle.Model.load adds guessed accumulator names, and Paddle then refuses
                # to create any accumulator missing from a loaded state (a group grown after the checkpoint)
                keys = set(saved.pop("keys", state))
                state = {k: v for k, v in state.items() if k in keys}
                self.load_state_dict(saved)
            return state

        staged = self._need_prepared("ride_in_optimizer_state")
        staged.adapter.register_state_hooks(staged.optimizer, save, load)

    def _restore(self, state: dict) -> None:
        staged = self._need_prepared("load_state_dict")
        if state["staged"].get("applied", 0) > staged.applied:
            _distributed.follow_wrapper(staged)  # the framework may have wrapped the model before loading state
        staged.load_state_dict(state["staged"])
        self.restored = staged.position
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    def _need_prepared(self, what: str) -> StagedUnfreeze:
        if self.staged is None:
            raise XFreezeError(f"Staging.{what} before prepare(model): the callback has not seen the model yet")
        return self.staged


class TrainerEvents:
    """The callback events of the Hugging Face ``Trainer`` and of PaddleNLP's port of it (same names, same
    arguments); the framework modules mix this into their ``TrainerCallback``."""

    staging: Staging
    input_grads_for_checkpointing = False  # transformers #21381, see xfreeze.integrations.transformers

    @staticmethod
    def unwrap(optimizer):
        return optimizer

    @property
    def ema(self):
        return self.staging.ema

    def on_init_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if model is None:
            raise XFreezeError("xfreeze Finetuning needs the Trainer's model; build the Trainer with model=...")
        self.staging.prepare(model)
        if (
            self.input_grads_for_checkpointing
            and getattr(args, "gradient_checkpointing", False)
            and hasattr(model, "enable_input_require_grads")
        ):
            model.enable_input_require_grads()
        if optimizer is not None and not self.staging.attached:
            self.staging.attach(self.unwrap(optimizer), lr_scheduler)

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self.staging.follow_wrapper()  # the Trainer wrapped the model in DDP / DataParallel (several processes)
        if not self.staging.attached:  # the Trainer built its default optimizer after stage 0
            self.staging.attach(self.unwrap(optimizer), lr_scheduler)
            self._warn_unresumable(args)
        elif self.staging.staged.scheduler is None and lr_scheduler is not None and self.staging.staged.applied <= 1:
            self.adopt_trainer_scheduler(lr_scheduler)

    def _warn_unresumable(self, args) -> None:
        # the Trainer loads a checkpoint's optimizer state before any callback event of train(), so its own
        # optimizer cannot be regrown first: resuming after a boundary fails in torch ("different number of
        # parameter groups"). Said before training, only when this run saves checkpoints and a stage grows it.
        grows = [s.at for s in self.staging.stages[1:] if s.unfreeze]
        saving = getattr(args, "save_strategy", "no")
        if grows and getattr(saving, "value", saving) != "no":  # an enum in transformers 4.x
            warnings.warn(
                f"the Trainer built its own optimizer, which the stages at {self.staging.unit}s {grows} grow: a "
                "checkpoint saved after a boundary cannot be resumed (the Trainer loads the optimizer state before "
                "xfreeze can regrow it).\nHINT: build the Trainer with optimizers=staging.optimizers(model, "
                "'adamw', lr=..., num_training_steps=...), which resumes exactly",
                stacklevel=2,
            )

    def adopt_trainer_scheduler(self, scheduler) -> None:
        """The Trainer built its schedule after the optimizer it was given: grow that schedule at boundaries."""
        self.staging.attach_scheduler(scheduler)

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.staging.unit == "epoch":
            self.staging.step(int(math.floor((state.epoch or 0.0) + 1e-6)))

    def on_step_begin(self, args, state, control, **kwargs):
        if self.staging.unit == "step":
            self.staging.step(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.staging.after_optimizer_step()

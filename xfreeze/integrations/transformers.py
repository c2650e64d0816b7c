"""Hugging Face ``Trainer``: ``Finetuning``, a ``TrainerCallback``, and its optimizer factory.

Where it hooks in (transformers 4.x ``Trainer``): ``on_init_end`` runs in ``Trainer.__init__``, before the Trainer
builds its optimizer, so stage 0 is applied there. The Trainer loads a checkpoint's optimizer state before any
callback event of ``train()``, so the staging state rides *inside* the optimizer's state dict (a torch state-dict
hook on the optimizer :meth:`Finetuning.optimizers` builds): loading it re-applies the stages the saved run had
reached, growing optimizer and scheduler the same way, just before torch checks the groups.

Gradient checkpointing with frozen embeddings (transformers #21381): with the default reentrant checkpointing, a
checkpointed block whose inputs need no gradient gives its parameters none; frozen embeddings are such an input.
With ``args.gradient_checkpointing`` the callback calls the model's ``enable_input_require_grads()`` (the
embeddings' output then requires a gradient, the embeddings themselves stay frozen).
"""

from __future__ import annotations

from transformers import TrainerCallback

from ..core.errors import XFreezeError
from ..training.optim import check_arguments
from ..training.optim import optimizer as build_optimizer
from ._staging import Staging, TrainerEvents


class Finetuning(TrainerEvents, TrainerCallback):
    """Staged unfreezing by epoch or step for the Hugging Face ``Trainer``, with xfreeze groups and exact resume.

    Args:
        stages: :class:`xfreeze.Stage` objects; patterns name the model's parameters (``"bert.embeddings"``).
        unit: ``"epoch"`` or ``"step"`` (``state.global_step``, optimizer steps).
        ema: ``None`` or a decay in (0, 1): an :class:`xfreeze.EMA` updated after every optimizer step
            (``callback.ema``; it is saved with the optimizer state).
        audit: ``False``, ``True`` (3 optimizer steps) or a number of steps: :func:`xfreeze.audit` watches the
            first steps of the fit; its report is ``callback.staging.audit_report`` (a warning when it finds faults).
        lr_mult, no_decay, layer_decay, no_decay_1d, model_no_decay: as :func:`xfreeze.param_groups`, for the
            groups stages add to the Trainer's own optimizer; with :meth:`optimizers` give them there.

    Raises:
        XFreezeError: when the Trainer is built: a stage pattern that matches nothing, an optimizer passed to the
            Trainer that was built before stage 0 was applied; when ``train()`` begins on several processes (the
            Trainer's DDP is kept: parameters a stage unfreezes get their gradients averaged by hooks) a stage after
            the first that freezes, when ``ddp_find_unused_parameters=False``; on
            ``train(resume_from_checkpoint=...)``: a checkpoint from a different stage plan. All before the first
            training step.

    Example:
        >>> from xfreeze import Stage
        >>> from xfreeze.integrations.transformers import Finetuning
        >>> staging = Finetuning([Stage(0, freeze=["bert.embeddings"]), Stage(1, unfreeze=["bert"], lr=1e-5)])
        >>> staging.staging.unit
        'epoch'
    """

    input_grads_for_checkpointing = True

    def __init__(self, stages, *, unit: str = "epoch", ema: float | None = None, audit: bool | int = False, **groups):
        self.staging = Staging(stages, unit=unit, ema=ema, audit=audit, backend="torch", **groups)

    @staticmethod
    def unwrap(optimizer):
        """The torch optimizer inside accelerate's ``AcceleratedOptimizer``."""
        return getattr(optimizer, "optimizer", optimizer)

    def optimizers(
        self,
        model,
        name="adamw",
        *,
        lr: float,
        scheduler: str | None = "linear",
        num_training_steps: int | None = None,
        warmup_steps: int = 0,
        scheduler_kwargs: dict | None = None,
        **options,
    ):
        """``(optimizer, scheduler)`` for ``Trainer(optimizers=...)``: stage 0 applied first, then
        :func:`xfreeze.optimizer` (``lr_mult``, ``no_decay``, ``layer_decay``, any optimizer class) and a
        ``transformers.get_scheduler`` schedule; both grow at stage boundaries and resume exactly.

        Args:
            model: the model given to the Trainer.
            name, lr, **options: as :func:`xfreeze.optimizer`.
            scheduler: a ``transformers.SchedulerType`` name, or ``None`` for none.
            num_training_steps, warmup_steps: for the schedule (``num_training_steps`` is required by most).
            scheduler_kwargs: the schedule's own options (``{"num_decay_steps": 100}`` for
                ``"warmup_stable_decay"``), as ``TrainingArguments.lr_scheduler_kwargs``.

        Returns:
            tuple: ``(optimizer, scheduler)``.

        Raises:
            XFreezeError: a bad optimizer argument, an unknown ``scheduler``, a schedule that needs
                ``num_training_steps`` without it, a stage pattern that matches nothing: all before stage 0 changes
                the model.
        """
        import torch
        from transformers import get_scheduler

        def schedule(opt):
            return get_scheduler(
                scheduler,
                opt,
                num_warmup_steps=warmup_steps,
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs=scheduler_kwargs,
            )

        check_arguments(model, name, lr=lr, backend="torch", **options)  # all first: a bad one changes nothing
        if scheduler is not None:
            try:  # the schedule's arguments, on a stand-in optimizer
                schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0))
            except (ValueError, TypeError) as exc:
                raise XFreezeError(f"scheduler={scheduler!r} cannot be built: {exc}") from None
        self.staging.prepare(model)
        opt = build_optimizer(model, name, lr=lr, backend="torch", **options)
        sched = schedule(opt) if scheduler is not None else None
        self.staging.attach(opt, sched)
        self.staging.ride_in_optimizer_state()
        return opt, sched

"""PaddleNLP and PaddleFormers ``Trainer``: ``Finetuning``, their ``TrainerCallback``, and its optimizer factory.

PaddleFormers (PaddleNLP's successor for LLMs) keeps PaddleNLP's Trainer: the same callback events with the same
arguments, ``optimizers=``, the same checkpoint folders. ``Finetuning`` subclasses the ``TrainerCallback`` of the
trainer package the process has imported (both, when both are), so one class serves either Trainer; only when
neither is imported yet does it import one, the one installed (PaddleNLP first where both are): importing
PaddleFormers has process-wide effects (it patches ``paddle.Tensor`` methods and, imported before torch, hides torch
from transformers), so xfreeze never imports it beside a PaddleNLP the user chose.

PaddleNLP's Trainer is a port of the Hugging Face one: the same callback events (``on_init_end`` before the
optimizer is built, ``on_epoch_begin``, ``on_step_begin``...), and the optimizer state is loaded before any callback
event of ``train()``. So, as with :mod:`xfreeze.integrations.transformers`, stage 0 is applied in ``on_init_end`` and
the staging state rides inside the state dict of the optimizer :meth:`Finetuning.optimizers` builds (Paddle has no
state-dict hooks: that instance's ``state_dict`` / ``set_state_dict`` are wrapped).

PaddleNLP's default optimizer is built over ``model.parameters()``, frozen ones included, so it cannot be grown
stage by stage; pass ``optimizers=staging.optimizers(...)``. On several processes the Trainer wraps the model in
DataParallel inside ``train()`` and holds it: xfreeze keeps it and averages the gradients of parameters a later stage
unfreezes by hooks (a later freeze is refused when training begins). Not covered: sharding / hybrid parallel
(PaddleNLP refuses ``optimizers=`` there) and unified checkpoints.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings

import paddle

from ..training.optim import check_arguments
from ..training.optim import optimizer as build_optimizer
from ._staging import Staging, TrainerEvents

# the trainer packages whose Trainer drives this callback, PaddleNLP first (this module's first user)
TRAINERS = ("paddlenlp", "paddleformers")


def trainer_callbacks() -> tuple:
    """The ``TrainerCallback`` classes ``Finetuning`` subclasses: of each trainer package already imported, else of
    the first one installed."""
    names = [name for name in TRAINERS if name in sys.modules] or [
        next((name for name in TRAINERS if importlib.util.find_spec(name) is not None), "")
    ]
    if not names[0]:
        raise ImportError(
            "xfreeze.integrations.paddlenlp drives the Trainer of PaddleFormers or PaddleNLP, and neither is "
            "installed: pip install paddleformers (or paddlenlp)"
        )
    return tuple(importlib.import_module(f"{name}.trainer").TrainerCallback for name in names)


class Finetuning(TrainerEvents, *trainer_callbacks()):  # type: ignore[misc]
    """Staged unfreezing by epoch or step for PaddleNLP's or PaddleFormers' ``Trainer``, with xfreeze groups and
    exact resume.

    Args:
        stages: :class:`xfreeze.Stage` objects; patterns name the model's parameters (``"ernie.embeddings"``).
        unit: ``"epoch"`` or ``"step"`` (``state.global_step``).
        ema: ``None`` or a decay in (0, 1): an :class:`xfreeze.EMA` updated after every optimizer step.
        audit: ``False``, ``True`` (3 optimizer steps) or a number of steps: :func:`xfreeze.audit` watches the
            first steps of the fit; its report is ``callback.staging.audit_report`` (a warning when it finds faults).

    Raises:
        XFreezeError: when the Trainer is built: a stage pattern that matches nothing, an optimizer built before
            stage 0 was applied (PaddleNLP's default one, too); on ``train(resume_from_checkpoint=...)``: a
            checkpoint from a different stage plan.

    Example:
        >>> from xfreeze import Stage
        >>> from xfreeze.integrations.paddlenlp import Finetuning
        >>> Finetuning([Stage(0, freeze=["ernie.embeddings"])]).staging.unit
        'epoch'
    """

    def __init__(self, stages, *, unit: str = "epoch", ema: float | None = None, audit: bool | int = False):
        self.staging = Staging(stages, unit=unit, ema=ema, audit=audit, backend="paddle")

    @staticmethod
    def unwrap(optimizer):
        return getattr(optimizer, "_inner_opt", optimizer)  # fleet's HybridParallelOptimizer

    def adopt_trainer_scheduler(self, scheduler) -> None:
        # PaddleNLP / PaddleFormers build their default schedule to be the learning rate of the optimizer they build;
        # beside an optimizer passed in with a fixed rate it drives nothing (their behaviour, with or without xfreeze)
        if scheduler is not getattr(self.staging.optimizer, "_learning_rate", None):
            warnings.warn(
                f"The Trainer built a {type(scheduler).__name__} schedule, but the optimizer it was given has "
                "a fixed rate, so the schedule changes nothing (the rate stays fixed).\nHINT: pass the schedule as "
                "the rate: staging.optimizers(model, ..., lr=paddle.optimizer.lr.LinearWarmup(...))",
                stacklevel=2,
            )
            return
        super().adopt_trainer_scheduler(scheduler)

    def optimizers(self, model, name="adamw", *, lr, **options):
        """``(optimizer, scheduler)`` for ``Trainer(optimizers=...)``: stage 0 applied first, then
        :func:`xfreeze.optimizer` over what trains. ``lr`` is a number or a ``paddle.optimizer.lr.LRScheduler``
        (returned as the scheduler; the Trainer steps it)."""
        check_arguments(model, name, lr=lr, backend="paddle", **options)  # all first: a bad one changes nothing
        self.staging.prepare(model)
        opt = build_optimizer(model, name, lr=lr, backend="paddle", **options)
        sched = lr if isinstance(lr, paddle.optimizer.lr.LRScheduler) else None
        self.staging.attach(opt, sched)
        self.staging.ride_in_optimizer_state()
        return opt, sched

"""PaddleNLP ``Trainer``: ``Finetuning``, a ``paddlenlp.trainer.TrainerCallback``, and its optimizer factory.

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

import warnings

import paddle
from paddlenlp.trainer import TrainerCallback

from ..training.optim import check_arguments
from ..training.optim import optimizer as build_optimizer
from ._staging import Staging, TrainerEvents


class Finetuning(TrainerEvents, TrainerCallback):
    """Staged unfreezing by epoch or step for PaddleNLP's ``Trainer``, with xfreeze groups and exact resume.

    Args:
        stages: :class:`xfreeze.Stage` objects; patterns name the model's parameters (``"ernie.embeddings"``).
        unit: ``"epoch"`` or ``"step"`` (``state.global_step``).
        ema: ``None`` or a decay in (0, 1): an :class:`xfreeze.EMA` updated after every optimizer step.

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

    def __init__(self, stages, *, unit: str = "epoch", ema: float | None = None):
        self.staging = Staging(stages, unit=unit, ema=ema, backend="paddle")

    @staticmethod
    def unwrap(optimizer):
        return getattr(optimizer, "_inner_opt", optimizer)  # fleet's HybridParallelOptimizer

    def adopt_trainer_scheduler(self, scheduler) -> None:
        # PaddleNLP builds its default schedule to be the learning rate of the optimizer it builds; beside an
        # optimizer passed in with a fixed rate it drives nothing (PaddleNLP's behaviour, with or without xfreeze)
        if scheduler is not getattr(self.staging.optimizer, "_learning_rate", None):
            warnings.warn(
                f"PaddleNLP's Trainer built a {type(scheduler).__name__} schedule, but the optimizer it was given has "
                "a fixed rate, so the schedule changes nothing (the rate stays fixed).\nHINT: pass the schedule as "
                "the rate: staging.optimizers(model, ..., lr=paddle.optimizer.lr.LinearWarmup(...))",
                stacklevel=2,
            )
            return
        super().adopt_trainer_scheduler(scheduler)

    def optimizers(self, model, name="adamw", *, lr, **options):
        """``(optimizer, scheduler)`` for ``Trainer(optimizers=...)``: stage 0 applied first, then
        :func:`xfreeze.optimizer` over what trains. ``lr`` is a number or a ``paddle.optimizer.lr.LRScheduler``
        (returned as the scheduler; PaddleNLP steps it)."""
        check_arguments(model, name, lr=lr, backend="paddle", **options)  # all first: a bad one changes nothing
        self.staging.prepare(model)
        opt = build_optimizer(model, name, lr=lr, backend="paddle", **options)
        sched = lr if isinstance(lr, paddle.optimizer.lr.LRScheduler) else None
        self.staging.attach(opt, sched)
        self.staging.ride_in_optimizer_state()
        return opt, sched

"""PyTorch Lightning: ``Finetuning``, a callback that replaces ``BaseFinetuning`` / ``BackboneFinetuning``.

Where it hooks in (Lightning 2.x ``Trainer._run``): ``setup`` runs before the checkpoint's callback states are
restored and before ``configure_optimizers``; so stage 0 is applied in ``setup`` and the optimizer built in
``configure_optimizers`` holds only what trains. ``load_state_dict`` (callback state) comes next and is checked
against the stage plan; ``on_fit_start`` runs after the optimizer exists and *before* Lightning loads the
optimizer and scheduler state, so the stages the saved run had reached are re-applied there (groups regrown in the
same order), and Lightning's own restore then fits. BaseFinetuning instead re-applies nothing (Lightning #21901).
"""

from __future__ import annotations

import pytorch_lightning as pl

from .._errors import XFreezeError
from ._staging import Staging


class Finetuning(pl.Callback):
    """Staged unfreezing, growing the optimizer and its LR scheduler, optional EMA, exact resume.

    Args:
        stages: :class:`xfreeze.Stage` objects; patterns name parameters of the ``LightningModule``
            (``"backbone.*"``).
        unit: ``"epoch"`` (``trainer.current_epoch``) or ``"step"`` (``trainer.global_step``).
        ema: ``None`` or a decay in (0, 1): an :class:`xfreeze.EMA` of the module, updated after every optimizer
            step, saved in checkpoints, available as ``callback.ema``.

    Raises:
        XFreezeError: at ``setup``: a stage pattern that matches nothing, a stage after the first that unfreezes
            under a multi-process strategy (DDP, FSDP, DeepSpeed: see the HINT); at ``on_fit_start``: an optimizer built
            before stage 0 was applied (it holds parameters stage 0 froze), more than one optimizer; on resume:
            a checkpoint from a different stage plan. All before the first training step.

    Example:
        >>> from xfreeze import Stage
        >>> from xfreeze.integrations.lightning import Finetuning
        >>> callback = Finetuning([Stage(0, freeze=["backbone"]), Stage(2, unfreeze=["backbone.layer4"], lr=1e-4)])
        >>> callback.staging.unit
        'epoch'
    """

    def __init__(self, stages, *, unit: str = "epoch", ema: float | None = None):
        self.staging = Staging(stages, unit=unit, ema=ema, backend="torch")
        self._step_seen = 0

    @property
    def ema(self):
        return self.staging.ema

    @property
    def state_key(self) -> str:
        return "xfreeze.Finetuning"

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        later = [s for s in self.staging.stages[1:] if s.unfreeze]
        if later and isinstance(trainer.strategy, pl.strategies.ParallelStrategy):
            # the wrapper (DDP, FSDP, DeepSpeed) fixes at wrap time which parameters it reduces: a parameter
            # unfrozen later would train on each rank without its gradients being averaged
            raise XFreezeError(
                f"xfreeze Finetuning cannot unfreeze parameters mid-run under {type(trainer.strategy).__name__} "
                f"(stages at {[s.at for s in later]} unfreeze): the wrapper would not reduce their gradients.\n"
                "HINT: run the staged schedule on one device (devices=1, strategy='auto'); under DDP, unfreeze "
                "between fits instead (xfreeze.unfreeze, then a new Trainer, which wraps the model anew)"
            )
        self.staging.prepare(pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        if len(trainer.optimizers) != 1:
            raise XFreezeError(
                f"xfreeze Finetuning drives one optimizer; configure_optimizers returned {len(trainer.optimizers)}"
            )
        optimizer = trainer.optimizers[0]
        configs = [c for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
        self.staging.attach(optimizer, configs[0].scheduler if configs else None)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.staging.unit == "epoch":
            self.staging.step(trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.staging.unit == "step":
            self.staging.step(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._step_seen != trainer.global_step:  # an optimizer step happened (not a gradient accumulation)
            self._step_seen = trainer.global_step
            self.staging.after_optimizer_step()

    def on_train_start(self, trainer, pl_module) -> None:
        self._step_seen = trainer.global_step

    def state_dict(self) -> dict:
        return self.staging.state_dict() if self.staging.prepared else {}

    def load_state_dict(self, state_dict) -> None:
        if state_dict:
            self.staging.load_state_dict(state_dict)

"""PyTorch Lightning: ``Finetuning``, a callback that replaces ``BaseFinetuning`` / ``BackboneFinetuning``.

Both Lightning packages: the unified ``lightning`` (``lightning.pytorch.Trainer``) and the standalone
``pytorch_lightning``, whose classes are distinct (neither subclasses the other). The callbacks here subclass the
``Callback`` of each one installed (importing this module imports those, and needs neither in particular), and
every strategy check accepts either package's classes: the one the running Trainer belongs to decides.

Where it hooks in (Lightning 2.x ``Trainer._run``): ``setup`` runs before the checkpoint's callback states are
restored and before ``configure_optimizers``; so stage 0 is applied in ``setup`` and the optimizer built in
``configure_optimizers`` holds only what trains. ``load_state_dict`` (callback state) comes next and is checked
against the stage plan; ``on_fit_start`` runs after the optimizer exists and *before* Lightning loads the
optimizer and scheduler state, so the stages the saved run had reached are re-applied there (groups regrown in the
same order), and Lightning's own restore then fits. BaseFinetuning instead re-applies nothing (Lightning #21901).

Under the DDP strategy the module is wrapped between ``setup`` and ``on_fit_start``, with what trains at stage 0.
A DDP registers the parameters that train when it is built, so at every later boundary that changes what trains
the callback builds a new one the way the strategy built the first (``strategy._setup_model``: same device ids and
DDP arguments) and makes it ``strategy.model``; optimizer state is kept and the ranks stay identical. A resumed fit
re-applies the stages reached through the same rebuild. FSDP, DeepSpeed (a ``DDPStrategy`` subclass that builds its
own engine), model-parallel and XLA strategies cannot be rebuilt: refused at ``setup``.
"""

from __future__ import annotations

import importlib

from torch.nn.parallel import DistributedDataParallel

from ..core.errors import XFreezeError
from ..training.cache import FeatureCache
from ._staging import Staging

_PACKAGES = ("lightning.pytorch", "pytorch_lightning")  # the unified package first, then the standalone one


def _installed() -> tuple:
    """The Lightning packages installed, imported (a package that is present but fails to import raises)."""
    found = []
    for name in _PACKAGES:
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name not in (name, name.split(".")[0]):  # installed, but something it needs is missing
                raise
    if not found:
        raise ModuleNotFoundError(
            "xfreeze.integrations.lightning needs Lightning: neither lightning nor pytorch_lightning is installed.\n"
            "HINT: pip install lightning (or pip install pytorch-lightning)",
            name="lightning",
        )
    return tuple(found)


_LIGHTNING = _installed()


def _classes(name: str) -> tuple:
    """``strategies.<name>`` of every Lightning package installed: a Trainer's strategy is of its own package."""
    return tuple(getattr(package.strategies, name) for package in _LIGHTNING)


def lightning_callbacks() -> tuple:
    """The ``Callback`` classes the callbacks here subclass: one of each Lightning package installed.

    Returns:
        ``(lightning.pytorch.Callback, pytorch_lightning.Callback)`` where both are installed, else the one that is.
    """
    return tuple(package.Callback for package in _LIGHTNING)


class Finetuning(*lightning_callbacks()):  # type: ignore[misc]
    """Staged unfreezing, growing the optimizer and its LR scheduler, optional EMA, exact resume.

    A ``Callback`` of each Lightning package installed: a ``lightning.pytorch.Trainer`` and a
    ``pytorch_lightning.Trainer`` both take it.

    Args:
        stages: :class:`xfreeze.Stage` objects; patterns name parameters of the ``LightningModule``
            (``"backbone.*"``).
        unit: ``"epoch"`` (``trainer.current_epoch``) or ``"step"`` (``trainer.global_step``).
        ema: ``None`` or a decay in (0, 1): an :class:`xfreeze.EMA` of the module, updated after every optimizer
            step, saved in checkpoints, available as ``callback.ema``.
        audit: ``False``, ``True`` (3 optimizer steps) or a number of steps: :func:`xfreeze.audit` watches the
            first steps of the fit; its report is ``callback.staging.audit_report`` (a warning when it finds faults).
        lr_mult, no_decay, layer_decay, no_decay_1d, model_no_decay: as :func:`xfreeze.param_groups`, for the
            groups stages add when ``configure_optimizers`` builds the optimizer by hand
            (``torch.optim.AdamW(filter(...), ...)``); an optimizer from :func:`xfreeze.optimizer` takes them there
            instead (both: refused at fit start).

    Raises:
        XFreezeError: at ``setup``: a stage pattern that matches nothing, a stage after the first that freezes or
            unfreezes under a strategy whose wrapper cannot be rebuilt (FSDP, DeepSpeed, model-parallel, XLA: see
            the HINT; DDP is supported); at
            ``on_fit_start``: an optimizer built before stage 0 was applied (it holds parameters stage 0 froze),
            more than one optimizer or more than one LR scheduler for it, a scheduler that cannot drive the groups
            a stage adds, ranks that froze different tensors; on resume: a checkpoint from a different
            stage plan. All before the first training step.

    Example:
        >>> from xfreeze import Stage
        >>> from xfreeze.integrations.lightning import Finetuning
        >>> callback = Finetuning([Stage(0, freeze=["backbone"]), Stage(2, unfreeze=["backbone.layer4"], lr=1e-4)])
        >>> callback.staging.unit
        'epoch'
    """

    def __init__(self, stages, *, unit: str = "epoch", ema: float | None = None, audit: bool | int = False, **groups):
        self.staging = Staging(stages, unit=unit, ema=ema, audit=audit, backend="torch", **groups)
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
        strategy = trainer.strategy
        later = [s for s in self.staging.stages[1:] if s.unfreeze or s.freeze]
        if later and isinstance(strategy, _classes("ParallelStrategy")) and not _rebuilds_ddp(strategy):
            # FSDP / DeepSpeed fix at wrap time which parameters they shard, reduce and step: a parameter whose
            # trainability changes mid-run would train on each rank without averaged gradients, or not at all
            raise XFreezeError(
                f"xfreeze Finetuning cannot change what trains mid-run under {type(strategy).__name__} "
                f"(stages at {[s.at for s in later]} freeze or unfreeze): its wrapper cannot be rebuilt.\n"
                "HINT: use strategy='ddp' (the callback rebuilds the DDP wrapper at each boundary), or run the "
                "staged schedule on one device (devices=1, strategy='auto'), or change what trains between fits "
                "(xfreeze.unfreeze, then a new Trainer, which wraps the model anew)"
            )
        self.staging.prepare(pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        if len(trainer.optimizers) != 1:
            raise XFreezeError(
                f"xfreeze Finetuning drives one optimizer; configure_optimizers returned {len(trainer.optimizers)}"
            )
        strategy = trainer.strategy
        if _rebuilds_ddp(strategy) and isinstance(strategy.model, DistributedDataParallel):
            # the DDP strategy wrapped the module after stage 0: each later boundary that changes what trains
            # builds a new DDP (it registers the parameters that train then) the way the strategy built the first
            self.staging.adopt_wrapper(strategy.model, _ddp_builder(strategy))
        optimizer = trainer.optimizers[0]
        configs = [c for c in trainer.lr_scheduler_configs if getattr(c.scheduler, "optimizer", None) is optimizer]
        if len(configs) > 1:
            raise XFreezeError(
                f"configure_optimizers returned {len(configs)} LR schedulers for the optimizer; xfreeze Finetuning "
                "grows one schedule with the optimizer.\nHINT: combine them into one, e.g. "
                "torch.optim.lr_scheduler.SequentialLR (warm-up, then decay) or ChainedScheduler"
            )
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


def _rebuilds_ddp(strategy) -> bool:
    """Lightning's DDP strategies (ddp, ddp_spawn, ddp_fork, ddp_notebook: one class in Lightning 2.x, in either
    package) build their wrapper in ``_setup_model``, which the callback calls again at a boundary. Subclasses that
    build something else there (DeepSpeed's engine, XLA) cannot be rebuilt so."""
    return any(
        isinstance(strategy, ddp) and getattr(type(strategy), "_setup_model", None) is ddp._setup_model
        for ddp in _classes("DDPStrategy")
    )


def _ddp_builder(strategy):
    """``plain module -> DDP`` as the strategy builds it (its device ids and DDP keyword arguments), made the live
    model of the strategy: Lightning reads ``strategy.model`` at every forward and backward."""

    def build(module):
        wrapper = strategy._setup_model(module)
        strategy.model = wrapper
        strategy._register_ddp_hooks()  # the communication hooks the user configured (CUDA only), on the new one
        return wrapper

    return build


class CachedPrefix(*lightning_callbacks()):  # type: ignore[misc]
    """Train a LightningModule's head on a :class:`xfreeze.FeatureCache` of its frozen prefix.

    At ``on_train_start`` (after :class:`Finetuning` applied stage 0 and Lightning moved the module to its device)
    the cache is built over the module, set as ``pl_module.<attribute>`` and, with ``fill=True``, filled from the
    training data loader with a progress bar, so every epoch trains on stored features; ``training_step`` calls
    ``self.<attribute>(x, indices)`` in place of ``self(x)``. Each epoch starts with the cache's cheap check: a stage
    that unfreezes part of the prefix drops the cache and the module runs live from then on.

    Args:
        head: the head's module name inside the LightningModule (``"net.fc"``), or ``"auto"``.
        size: the training set's length (the data loader yields each sample's index).
        attribute: the module attribute the cache is set as.
        fill: fill the cache from ``trainer.train_dataloader`` before the first epoch.
        select: ``batch -> (inputs, indices)``; default: the batch's first and last items.
        **options: ``storage``, ``dtype``, ``memory_limit``, ``verify_every``, ``progress`` of the cache.

    Raises:
        XFreezeError: at ``on_train_start``: what :class:`xfreeze.FeatureCache` refuses (a prefix that trains, an
            unlocked norm, an active dropout), an index outside the cache while filling.

    Example:
        >>> from xfreeze.integrations.lightning import CachedPrefix
        >>> callback = CachedPrefix("net.fc", size=1000)
        >>> callback.attribute
        'feature_cache'
    """

    def __init__(
        self, head="auto", *, size: int, attribute: str = "feature_cache", fill: bool = True, select=None, **options
    ):
        self.head, self.size, self.attribute, self.fill, self.select = head, size, attribute, fill, select
        self.options = options
        self.cache: FeatureCache | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        if self.cache is None or self.cache.model is not pl_module:
            self.cache = FeatureCache(pl_module, self.head, size=self.size, backend="torch", **self.options)
            setattr(pl_module, self.attribute, self.cache)
        if self.fill and not self.cache.dropped:
            self.cache.fill(trainer.train_dataloader, select=self.select)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.cache is not None:
            self.cache.check()

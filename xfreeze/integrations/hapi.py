"""paddle.hapi: ``Finetuning``, a ``paddle.callbacks.Callback`` for ``paddle.Model.fit``.

``paddle.Model.prepare`` takes an optimizer the user already built, so stage 0 must be applied before that:
:meth:`Finetuning.optimizer` applies it and builds the optimizer. ``paddle.Model.save`` writes the optimizer's
state dict (``.pdopt``); the staging state rides inside it and ``paddle.Model.load`` restores it (re-applying the
stages reached, growing the optimizer) before the optimizer state loads. ``fit`` counts epochs from 0 on every
call; the callback keeps its own count, carried over by ``load``, so a resumed ``fit`` continues the schedule.
"""

from __future__ import annotations

import paddle

from ..core.dispatch import adapter_for
from ..core.errors import XFreezeError
from ..training.optim import check_arguments
from ..training.optim import optimizer as build_optimizer
from ._staging import Staging


class Finetuning(paddle.callbacks.Callback):
    """Staged unfreezing by epoch or step for ``paddle.Model.fit``, with xfreeze groups, EMA and exact resume.

    Args:
        stages: :class:`xfreeze.Stage` objects; patterns name the network's parameters.
        unit: ``"epoch"`` or ``"step"`` (optimizer steps, counted across ``fit`` calls).
        ema: ``None`` or a decay in (0, 1): an :class:`xfreeze.EMA` updated after every optimizer step
            (``callback.ema``; saved with the optimizer state).
        audit: ``False``, ``True`` (3 optimizer steps) or a number of steps: :func:`xfreeze.audit` watches the
            first steps of the fit; its report is ``callback.staging.audit_report`` (a warning when it finds faults).

    Raises:
        XFreezeError: in :meth:`optimizer` or when ``fit`` starts: a stage pattern that matches nothing, an
            optimizer built before stage 0 was applied (or not by xfreeze), a network ``paddle.Model`` already
            wrapped in DataParallel, on several processes a stage after the first that freezes (the DataParallel is
            kept; parameters a stage unfreezes get their gradients averaged by hooks); in ``paddle.Model.load``: a
            checkpoint from a different stage plan. All before training starts.

    Example:
        >>> import paddle
        >>> from xfreeze import Stage
        >>> from xfreeze.integrations.hapi import Finetuning
        >>> net = paddle.nn.Sequential(paddle.nn.Linear(4, 4), paddle.nn.ReLU(), paddle.nn.Linear(4, 2))
        >>> staging = Finetuning([Stage(0, freeze=["0"]), Stage(2, unfreeze=["0"], lr=0.01)])
        >>> opt = staging.optimizer(net, "sgd", lr=0.1, momentum=0.9)   # only "2" trains at first
        >>> [p.name == q.name for p, q in zip(opt._param_groups[0]["params"], net[2].parameters())]
        [True, True]
    """

    def __init__(self, stages, *, unit: str = "epoch", ema: float | None = None, audit: bool | int = False):
        super().__init__()
        self.staging = Staging(stages, unit=unit, ema=ema, audit=audit, backend="paddle")
        self.epochs = 0  # epochs (or steps) trained so far, across fit calls and restores
        self.steps = 0

    @property
    def ema(self):
        return self.staging.ema

    def optimizer(self, network, name="adamw", *, lr, **options):
        """Apply stage 0 to ``network``, then build :func:`xfreeze.optimizer` over what trains (``lr`` may be a
        ``paddle.optimizer.lr.LRScheduler``; ``lr_mult``, ``no_decay``, ``layer_decay``, optimizer classes as
        there). Build it before ``paddle.Model(network)``, which wraps the network in DataParallel when several
        processes train; give the result to ``paddle.Model.prepare``.

        Raises:
            XFreezeError: ``network`` is already inside a DataParallel that syncs gradients (``paddle.Model(net)``
                came first), a stage pattern that matches nothing. Nothing is changed then.
        """
        wrappers = adapter_for(network, "paddle").syncing_wrappers(network)
        if wrappers and not self.staging.prepared:
            raise XFreezeError(
                f"stage 0 cannot be applied: paddle.Model(net) already wrapped the network in "
                f"{type(wrappers[0]).__name__} ({wrappers[0]._strategy.nranks} processes), which registered every "
                "parameter it would freeze. Nothing was changed.\nHINT: build the optimizer before "
                "paddle.Model(net): opt = staging.optimizer(net, ...); model = paddle.Model(net); "
                "model.prepare(opt, loss)"
            )
        check_arguments(network, name, lr=lr, backend="paddle", **options)  # all first: a bad one changes nothing
        self.staging.prepare(network)
        opt = build_optimizer(network, name, lr=lr, backend="paddle", **options)
        self._attach(opt)
        return opt

    def on_train_begin(self, logs=None):
        self.staging.prepare(self.model.network)
        if not self.staging.attached:
            self._attach(self.model._optimizer)
        self.staging.follow_wrapper()  # paddle.Model wrapped the network in DataParallel (several processes)

    def on_epoch_begin(self, epoch, logs=None):
        self._catch_up()
        if self.staging.unit == "epoch":
            self.staging.step(self.epochs)

    def on_train_batch_begin(self, step, logs=None):
        if self.staging.unit == "step":
            self._catch_up()
            self.staging.step(self.steps)

    def on_train_batch_end(self, step, logs=None):
        self.staging.after_optimizer_step()
        self.steps += 1

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1

    def _catch_up(self) -> None:
        """After ``paddle.Model.load`` restored a state, count on from where that run stopped."""
        if self.staging.restored is not None:
            done = self.staging.restored + 1
            if self.staging.unit == "epoch":
                self.epochs = done
            else:
                self.steps = done
            self.staging.restored = None

    def _attach(self, opt) -> None:
        learning_rate = getattr(opt, "_learning_rate", None)
        scheduler = learning_rate if isinstance(learning_rate, paddle.optimizer.lr.LRScheduler) else None
        self.staging.attach(opt, scheduler)
        self.staging.ride_in_optimizer_state()
        _minimize_by_groups(opt)


def _minimize_by_groups(opt) -> None:
    # paddle.Model.fit calls optimizer.minimize(loss); in Paddle 3.3 minimize hands the list of group dicts to
    # core.eager.get_all_grads and fails ("must be list of Tensor, but got dict"), so no grouped optimizer can
    # train under hapi. step() walks the groups (gradients are already there: hapi ran loss.backward()).
    if opt._param_groups and isinstance(opt._param_groups[0], dict):

        def minimize(loss, startup_program=None, parameters=None, no_grad_set=None):
            opt.step()
            return [], []

        opt.minimize = minimize

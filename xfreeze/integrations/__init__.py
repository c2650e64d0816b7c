"""xfreeze where users train: callbacks for PyTorch Lightning, the Hugging Face ``Trainer`` and ``paddle.Model.fit``.

Each integration lives in its own module and imports its framework there, so ``import xfreeze.integrations``
imports no framework:

* :mod:`xfreeze.integrations.lightning`: ``Finetuning``, a ``Callback`` of ``lightning`` and of
  ``pytorch_lightning``, whichever are installed (replaces ``BaseFinetuning`` / ``BackboneFinetuning``);
* :mod:`xfreeze.integrations.transformers`: ``Finetuning``, a ``transformers.TrainerCallback``, with an optimizer
  factory for ``Trainer(optimizers=...)``;
* :mod:`xfreeze.integrations.hapi`: ``Finetuning``, a ``paddle.callbacks.Callback`` for ``paddle.Model.fit``;
* :mod:`xfreeze.integrations.paddlenlp`: ``Finetuning``, a ``paddlenlp.trainer.TrainerCallback``, with an optimizer
  factory for ``Trainer(optimizers=...)``.

All three run the same :class:`xfreeze.StagedUnfreeze` (and optionally :class:`xfreeze.EMA`) through
:class:`Staging`; they differ only in where the framework lets them hook in.
"""

from __future__ import annotations

from ._staging import Staging

__all__ = ["Staging"]

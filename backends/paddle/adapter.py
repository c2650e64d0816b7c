"""The Paddle adapter: the parts of ``backends/paddle/`` put together.

``model.py`` (structure, trainability, heads), ``tensors.py`` (dtypes, exact bits, state, EMA), ``optim.py``
(optimizers and the global LR scheduler) and ``distributed.py`` (DataParallel, ranks); ``names.py`` and
``formats.py`` are data. ``backends/contract.py`` says what each method must do.
"""

from __future__ import annotations

from paddle import nn

from ..contract import Adapter, relock_after
from .distributed import PaddleDistributed
from .model import PaddleModel
from .optim import PaddleOptim
from .rows import PaddleRows
from .tensors import PaddleTensors


class PaddleAdapter(PaddleModel, PaddleTensors, PaddleOptim, PaddleDistributed, PaddleRows, Adapter):
    name = "paddle"


ADAPTER = PaddleAdapter()

# convert_sync_batchnorm builds new norm layers without the lock's forward pre-hook: lock them again (issue 10)
if not hasattr(nn.SyncBatchNorm.convert_sync_batchnorm, "__wrapped__"):
    _converter = staticmethod(relock_after(ADAPTER, nn.SyncBatchNorm.convert_sync_batchnorm))
    nn.SyncBatchNorm.convert_sync_batchnorm = _converter  # type: ignore[method-assign]

"""The PyTorch adapter: the parts of ``backends/torch/`` put together.

``model.py`` (structure, trainability, heads), ``tensors.py`` (dtypes, exact bits, state, EMA, ``torch.save``
files), ``optim.py`` (optimizers and growing schedulers) and ``distributed.py`` (DDP / FSDP, ranks); ``names.py`` and
``formats.py`` are data. ``backends/contract.py`` says what each method must do.
"""

from __future__ import annotations

from torch import nn

from ..contract import Adapter, relock_after
from .distributed import TorchDistributed
from .model import TorchModel
from .optim import TorchOptim
from .rows import TorchRows
from .tensors import TorchTensors


class TorchAdapter(TorchModel, TorchTensors, TorchOptim, TorchDistributed, TorchRows, Adapter):
    name = "torch"


ADAPTER = TorchAdapter()

# convert_sync_batchnorm builds new norm modules without the lock's forward pre-hook: lock them again (issue 10)
if not hasattr(nn.SyncBatchNorm.convert_sync_batchnorm, "__wrapped__"):
    _converter = staticmethod(relock_after(ADAPTER, nn.SyncBatchNorm.convert_sync_batchnorm))
    nn.SyncBatchNorm.convert_sync_batchnorm = _converter  # type: ignore[method-assign]

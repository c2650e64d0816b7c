"""torch: a parameter split by rows (issue 21). The whole parameter stays registered, frozen; a trainable parameter
holds the trainable rows; forward reads the two joined.

The mechanism is torch's old ``weight_norm``'s (a forward pre-hook that sets the computed weight as a plain
attribute, which ``module.weight`` finds before the registered parameter) with PEFT ``TrainableTokensLayer``'s
join (``W.index_copy(dim, idx, rows)``, out of place: autograd reaches the rows only). A forward hook (``always_call``)
removes the attribute again, so ``module.weight`` is the registered parameter outside forward. The rows are written
into the whole parameter (in place, without autograd) at every forward and before every ``state_dict``; the rows'
key is left out of state dicts, and ``load_state_dict`` refreshes the rows from what it loaded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..contract import Adapter, Module, Tensor
from ...core.errors import XFreezeError
from ..defaults import ROWS_ATTR, RowSplit


class TorchRows(Adapter):
    """Split parameters (``RowSplits``) in torch."""

    def split_rows(
        self, module: Module, local: str, rows_local: str, index: Any, axis: int, rows: Any = None
    ) -> Tensor:
        return split(module, local, rows_local, index, axis, rows)

    def join_rows(self, module: Module, local: str) -> None:
        join(module, local)

    def sync_rows(self, module: Module) -> None:
        sync(module)

    def reload_rows(self, module: Module) -> None:
        reload(module)


def split(module: Any, local: str, rows_local: str, index: np.ndarray, axis: int, rows: Any = None) -> Any:
    """See ``RowSplits.split_rows``."""
    base = module._parameters[local]
    record = RowSplit(rows_local, np.asarray(index, dtype=np.int64), int(axis), {})
    if rows is None:
        with torch.no_grad():
            rows = nn.Parameter(base.detach().index_select(axis, _index(record, base)).clone())
    base.requires_grad_(False)
    base.grad = None
    module.register_parameter(rows_local, rows)
    module.__dict__.setdefault(ROWS_ATTR, {})[local] = record
    if not any(h is _combine for h in module._forward_pre_hooks.values()):
        module.register_forward_pre_hook(_combine)
        module.register_forward_hook(_release, always_call=True)
        module.register_state_dict_pre_hook(_before_save)
        module.register_state_dict_post_hook(_hide)
        module.register_load_state_dict_post_hook(_after_load)
    return rows


def join(module: Any, local: str) -> None:
    """See ``RowSplits.join_rows``."""
    records = module.__dict__.get(ROWS_ATTR) or {}
    record = records.pop(local)
    _write(module, local, record)
    module.__dict__.pop(local, None)
    del module._parameters[record.rows_local]
    if not records:
        module.__dict__.pop(ROWS_ATTR, None)
        for hooks in (
            module._forward_pre_hooks,
            module._forward_hooks,
            module._state_dict_pre_hooks,
            module._state_dict_hooks,
            module._load_state_dict_post_hooks,
        ):
            for key in [k for k, h in hooks.items() if any(h is mine for mine in _HOOKS)]:
                del hooks[key]
                module._forward_hooks_always_called.pop(key, None)


def sync(module: Any) -> None:
    """See ``RowSplits.sync_rows``."""
    for local, record in (module.__dict__.get(ROWS_ATTR) or {}).items():
        _write(module, local, record)


def _index(record: RowSplit, like: Any) -> Any:
    index = record.cache.get(like.device)
    if index is None:
        index = record.cache[like.device] = torch.as_tensor(record.index, device=like.device)
    return index


def _write(module: Any, local: str, record: RowSplit) -> None:
    base, rows = module._parameters[local], module._parameters[record.rows_local]
    with torch.no_grad():
        base.index_copy_(record.axis, _index(record, base), rows.detach().to(base.dtype))


def _combine(module: Any, args: Any) -> None:
    for local, record in (module.__dict__.get(ROWS_ATTR) or {}).items():
        base, rows = module._parameters[local], module._parameters[record.rows_local]
        if hasattr(base, "device_mesh") or _fully_sharded(module):  # sharded after the split: rows not ours to join
            raise XFreezeError(
                f"{type(module).__name__}.{local} trains rows {record.rows_local} but was sharded by FSDP2 after they "
                "were chosen: a split tensor cannot be sharded. Train the whole tensor under FSDP2, or use DDP"
            )
        index = _index(record, base)
        with torch.no_grad():  # the whole parameter follows the rows (what a user reading it directly sees)
            base.index_copy_(record.axis, index, rows.detach())
        module.__dict__[local] = base.detach().index_copy(record.axis, index, rows)


def _fully_sharded(module: Any) -> bool:
    """Whether FSDP2 manages the module's parameters: ``fully_shard`` registers a load-state-dict post hook (a lambda
    of ``FSDPParam.__init__``) on every module whose parameters it shards; inside forward they are unsharded copies,
    so the parameter's type no longer tells."""
    return any(
        getattr(h, "__qualname__", "").startswith("FSDPParam.") for h in module._load_state_dict_post_hooks.values()
    )


def _release(module: Any, args: Any, output: Any) -> None:
    for local in module.__dict__.get(ROWS_ATTR) or {}:
        module.__dict__.pop(local, None)


def _before_save(module: Any, prefix: str, keep_vars: bool) -> None:
    sync(module)


def _hide(module: Any, state: dict, prefix: str, local_metadata: Any) -> None:
    for record in (module.__dict__.get(ROWS_ATTR) or {}).values():
        state.pop(prefix + record.rows_local, None)


def _after_load(module: Any, incompatible: Any) -> None:
    records = module.__dict__.get(ROWS_ATTR) or {}
    mine = {r.rows_local for r in records.values()}
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k.rpartition(".")[2] not in mine]
    reload(module)  # the rows take what was loaded into the whole parameter


def reload(module: Any) -> None:
    """See ``RowSplits.reload_rows``."""
    for local, record in (module.__dict__.get(ROWS_ATTR) or {}).items():
        base, rows = module._parameters[local], module._parameters[record.rows_local]
        with torch.no_grad():
            rows.copy_(base.index_select(record.axis, _index(record, base)))


_HOOKS = (_combine, _release, _before_save, _hide, _after_load)

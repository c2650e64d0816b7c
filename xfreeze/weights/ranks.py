"""Rank-aware reads and writes of weights: one rank writes a gathered state, every rank places its own shard."""

from __future__ import annotations

import sys

from ..backends import ADAPTERS
from ..core.dispatch import adapter_for, adapter_named, tensor_backend
from ..core.errors import XFreezeError


def save_on_rank(obj, rank: int, write):
    """All ranks gather the full state (FSDP shards included), rank ``rank`` writes it with ``write(state)``, then
    every rank waits at a barrier. Returns what ``write`` returned on the writing rank, None elsewhere."""
    adapter = _adapter_of(obj)
    if adapter is None:  # no process group: one process, it writes
        return write(obj)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < adapter.world_size():
        raise XFreezeError(f"rank must be an integer in [0, {adapter.world_size()}). Received: rank={rank!r}")
    state = obj if isinstance(obj, dict) else adapter.full_state(obj)  # a collective for sharded models
    try:
        return write(state) if adapter.rank() == rank else None
    finally:
        adapter.barrier()


def load_tensors(adapter, model, targets: dict, plan: dict) -> None:
    """The write step of ``load_matched``, after every value was validated: plain models copy in place; an FSDP2
    model (validated against the DTensors' global shapes) loads through torch.distributed.checkpoint's
    ``set_model_state_dict`` so that every rank keeps its own shard (every rank must call it); FSDP1 is refused
    (its tensors are flat local shards: shapes cannot be validated) before anything is written."""
    sharding = adapter.sharding(model)
    if sharding is None:
        adapter.load_tensors([targets[k] for k in plan], list(plan.values()))
    elif sharding == "fsdp2":
        adapter.load_full_state(model, dict(plan))
    else:
        raise XFreezeError(
            f"load_matched into a {sharding.upper()}-sharded {type(model).__name__} refused: each "
            "rank holds flat shards, so names and shapes cannot be checked; nothing was changed. "
            "Fixes: call load_matched on the model before wrapping it in FullyShardedDataParallel, or "
            "use fully_shard (FSDP2), which load_matched supports"
        )


def _adapter_of(obj):
    if not isinstance(obj, dict):
        adapter = adapter_for(obj)
    else:
        names = {n for n in (tensor_backend(v) for v in obj.values()) if n is not None}
        names = names or {n for n, spec in ADAPTERS.items() if spec.module in sys.modules}
        adapters = [adapter_named(n) for n in sorted(names)]
        adapter = next((a for a in adapters if a.world_size() > 1), None)
    return adapter if adapter is not None and adapter.world_size() > 1 else None

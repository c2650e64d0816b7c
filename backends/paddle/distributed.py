"""Paddle distributed training: ``paddle.DataParallel``, ranks and collectives (issue 10). Paddle's sharded training
(fleet group_sharded) is not covered yet: the single-process defaults of the contract say "not sharded"."""

from __future__ import annotations

from typing import Any, Callable

import paddle

from ..contract import Adapter, Module, Tensor, owners
from ...core.errors import XFreezeError


class PaddleDistributed(Adapter):
    """Wrapper and rank facts for xfreeze.model.guard, training.rewrap and weights.ranks."""

    # Rebuilding paddle.DataParallel after a freeze crashes (SIGSEGV in EagerReducer::AddDistHook), and a rebuilt one
    # does not all-reduce the parameters that became trainable (measured, Paddle 3.3.1, gloo): see rebuild_wrapper.
    rewrap_can_freeze = False

    # --- wrappers ----------------------------------------------------------------------------------------------
    def syncing_wrappers(self, model: Module) -> list:
        out, m = [], model
        while isinstance(m, paddle.DataParallel):
            if _syncs(m):
                out.append(m)
            m = m._layers
        return out + [w for w in self._enclosing(m) if w not in out]

    def _enclosing(self, layer: Module) -> list:
        if not self.world_size() > 1:
            return []
        found = [o for o in owners(layer) if isinstance(o, paddle.DataParallel) and o._layers is layer and _syncs(o)]
        return list({id(w): w for w in found}.values())

    def rebuild_wrapper(self, old: Module | None, inner: Module, build: Callable, newly_trainable: list) -> Module:
        """Keep the live DataParallel and average the gradients of the newly trainable parameters with a gradient
        hook (one all-reduce each, in backward order, the same on every rank): a second DataParallel over the same
        parameters leaves them un-reduced (measured), and dropping the first one after a freeze crashes."""
        if old is None:
            return build(inner)
        self.sync_gradients_of(old, newly_trainable)
        return old

    def tolerates_missing_gradients(self, wrapper: Module) -> bool:
        """No: a DataParallel whose registered parameters are frozen later is the path that crashes (issue 10); not
        relied on even with ``find_unused_parameters=True``, which is untested here."""
        return False

    def sync_gradients_of(self, wrapper: Module, params: list[Tensor]) -> None:
        """A gradient hook per parameter averages it over the ranks (in backward order, the same on every rank);
        the DataParallel stays as it is."""
        world = self.world_size()
        for param in params:
            if not getattr(param, "_xfreeze_grad_sync", False):
                param.register_hook(_averaging_hook(world))
                param._xfreeze_grad_sync = True

    # --- ranks and collectives ---------------------------------------------------------------------------------
    def world_size(self) -> int:
        return paddle.distributed.get_world_size() if paddle.distributed.is_initialized() else 1

    def rank(self) -> int:
        return paddle.distributed.get_rank() if paddle.distributed.is_initialized() else 0

    def all_reduce_max(self, values: list[int]) -> list[int]:
        t = paddle.to_tensor(values, dtype="int64")
        paddle.distributed.all_reduce(t, op=paddle.distributed.ReduceOp.MAX)
        return [int(v) for v in t.numpy()]

    def all_gather_object(self, obj: Any) -> list:
        out: list = []
        paddle.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size() > 1:
            paddle.distributed.barrier()

    # --- sharding: none yet ------------------------------------------------------------------------------------
    def full_state(self, model: Module) -> dict[str, Tensor]:
        return {k: v.detach().cpu() for k, v in self.unwrap(model)[0].state_dict().items()}

    def load_full_state(self, model: Module, state: dict[str, Tensor]) -> None:
        raise XFreezeError("sharded Paddle models are not supported by xfreeze yet: load before sharding")


def _syncs(wrapper: Module) -> bool:
    return wrapper._strategy.nranks > 1 and getattr(wrapper, "_reducer", None) is not None


def _averaging_hook(world: int) -> Callable:
    def average(grad):
        grad = grad.clone()
        paddle.distributed.all_reduce(grad)
        return grad / world

    return average

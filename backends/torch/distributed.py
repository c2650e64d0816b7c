"""torch distributed training: DDP / DataParallel / torch.compile / FSDP1 wrappers, FSDP2 shards, ranks and
collectives (issue 10)."""

from __future__ import annotations

import sys
import weakref
from typing import Any, Callable

import torch
from torch import nn

from ..contract import Adapter, Module, Tensor, owners
from .tensors import local
from ...core.errors import XFreezeError


class TorchDistributed(Adapter):
    """Wrapper and rank facts for xfreeze.model.guard, training.rewrap and weights.ranks."""

    rewrap_can_freeze = True  # a rebuilt DDP registers exactly the trainable parameters, whatever changed
    freeze_after_wrap_hint = (
        "; or build the DDP with find_unused_parameters=True (Hugging Face Trainer: ddp_find_unused_parameters=True, "
        "its default without gradient checkpointing), which lets registered parameters stop getting gradients"
    )

    # --- wrappers ----------------------------------------------------------------------------------------------
    def syncing_wrappers(self, model: Module) -> list:
        """The DDP wrappers that all-reduce ``model``'s gradients: ``model`` itself, the ones it wraps, and the
        live ones that wrap it (found only while a process group is initialized)."""
        out, m = [], model
        while isinstance(m, (nn.DataParallel, nn.parallel.DistributedDataParallel)) or hasattr(m, "_orig_mod"):
            if isinstance(m, nn.parallel.DistributedDataParallel):
                out.append(m)
            inner = getattr(m, "_orig_mod", None)
            m = m.module if inner is None else inner
        return out + [w for w in self._enclosing(m) if w not in out]

    def _enclosing(self, module: Module) -> list:
        if not self.world_size() > 1:
            return []
        found = [
            o
            for o in owners(module)
            if isinstance(o, nn.parallel.DistributedDataParallel)
            and o.module is module
            and not getattr(o, "_xfreeze_retired", False)
        ]
        return list({id(w): w for w in found}.values())

    def unwrap_all(self, model: Module) -> Module:
        """The plain model under DDP / DataParallel / torch.compile / FSDP1 wrappers."""
        while True:
            inner = getattr(model, "_orig_mod", None)  # not `or`: an empty Sequential is falsy
            inner = getattr(model, "_fsdp_wrapped_module", None) if inner is None else inner
            if inner is None and isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
                inner = model.module
            if inner is None:
                return model
            model = inner

    def rebuild_wrapper(self, old: Module | None, inner: Module, build: Callable, newly_trainable: list) -> Module:
        """A fresh DDP registers what trains now; the old one is retired so that calling it raises."""
        new = build(inner)
        if old is not None and old is not new:
            _retire(old)
        return new

    def tolerates_missing_gradients(self, wrapper: Module) -> bool:
        """A DDP built with ``find_unused_parameters=True`` finds a frozen parameter unused at every step and leaves
        its gradient alone (on every rank alike); without it the reducer waits for that gradient and fails."""
        return bool(getattr(wrapper, "find_unused_parameters", False))

    def sync_gradients_of(self, wrapper: Module, params: list[Tensor]) -> None:
        """After each gradient accumulation, scale the parameter's gradient by 1/world (before the sum, as DDP's
        reducer does: the same bits) and start an asynchronous all-reduce of it, in backward order, the same on every
        rank; the end of the backward pass waits for them all (as DDP's buckets do), so communication overlaps the
        rest of the backward pass. Skipped while ``wrapper`` skips synchronization (inside ``no_sync()``: gradient
        accumulation; the accumulated gradient is averaged at the synchronizing step, as DDP does). The hooks stop
        when ``wrapper`` is gone or replaced (a DDP built later registers the parameters itself)."""
        world, live = self.world_size(), weakref.ref(wrapper)
        pending: list = []  # this backward pass's all-reduce works

        def finish():
            works = list(pending)
            pending.clear()
            for work in works:
                work.wait()

        def average(param):
            current = live()
            if current is None or getattr(current, "_xfreeze_retired", False) or param.grad is None:
                return
            if getattr(current, "require_backward_grad_sync", True):
                param.grad.mul_(1.0 / world)
                if not pending:  # the first one of this backward pass: wait for all of them at its end
                    torch.autograd.Variable._execution_engine.queue_callback(finish)
                pending.append(torch.distributed.all_reduce(param.grad, async_op=True))

        for param in params:
            if getattr(param, "_xfreeze_grad_sync", None) is None:
                param.register_post_accumulate_grad_hook(average)
                param._xfreeze_grad_sync = live

    # --- ranks and collectives ---------------------------------------------------------------------------------
    def world_size(self) -> int:
        d = torch.distributed
        return d.get_world_size() if d.is_available() and d.is_initialized() else 1

    def rank(self) -> int:
        d = torch.distributed
        return d.get_rank() if d.is_available() and d.is_initialized() else 0

    def all_reduce_max(self, values: list[int]) -> list[int]:
        t = torch.tensor(values, dtype=torch.int64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t.tolist()

    def all_gather_object(self, obj: Any) -> list:
        out = [None] * self.world_size()
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size() > 1:
            torch.distributed.barrier()

    # --- sharding (FSDP1 / FSDP2) ------------------------------------------------------------------------------
    def sharding(self, model: Module) -> str | None:
        """ "fsdp1" (FullyShardedDataParallel anywhere in the model), "fsdp2" (fully_shard), or None."""
        fsdp = sys.modules.get("torch.distributed.fsdp")  # never imported: no model can be sharded by it
        if fsdp is None or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None  # FSDP1 and fully_shard both need a process group: no walk of every module then
        if any(isinstance(m, fsdp.FullyShardedDataParallel) for m in model.modules()):
            return "fsdp1"
        fsdp2 = getattr(fsdp, "FSDPModule", None)
        return "fsdp2" if fsdp2 is not None and any(isinstance(m, fsdp2) for m in model.modules()) else None

    def full_state(self, model: Module) -> dict[str, Tensor]:
        """The whole model's state as CPU tensors under plain names: DTensor / FSDP shards are gathered (every rank
        must call this; with cpu_offload only rank 0 receives the tensors, the others get {})."""
        if self.sharding(model) is None:
            return {k: v.detach().cpu() for k, v in self.unwrap_all(model).state_dict().items()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_full_state(self, model: Module, state: dict[str, Tensor]) -> None:
        """Load full tensors into a sharded model: each rank keeps its own shard (every rank must call this)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))

    def sharded_sizes(self, model: Module) -> dict[str, tuple[int, int]]:
        """``{name: (full elements, elements on this rank)}`` of a sharded model's parameters (empty when it is
        not sharded): FSDP2 DTensors know their global shape; FSDP1 keeps the full shapes in its flat parameters."""
        sharding = self.sharding(model)
        if sharding == "fsdp2":
            return {n: (p.numel(), local(p).numel()) for n, p in self.unwrap_all(model).named_parameters()}
        if sharding != "fsdp1":
            return {}
        fsdp, out = sys.modules["torch.distributed.fsdp"].FullyShardedDataParallel, {}
        for path, module in model.named_modules():
            handle = getattr(module, "_handle", None) if isinstance(module, fsdp) else None
            if handle is None:
                continue
            prefix = ".".join(p for p in path.split(".") if p not in ("_fsdp_wrapped_module", "module", ""))
            flat = handle.flat_param  # _shard_param_infos: what this rank's shard holds of each parameter
            for fqn, shape, info in zip(flat._fqns, flat._shapes, flat._shard_param_infos):
                name = f"{prefix}.{fqn}" if prefix else fqn
                out[name] = (shape.numel(), info.numel_in_shard if info.in_shard else 0)
        return out


def _retire(old: Module) -> None:
    """Make a replaced wrapper raise when called (a loop still holding it would train what no longer syncs)."""

    def replaced(*args, **kwargs):
        raise XFreezeError(
            f"this {type(old).__name__} was replaced at a stage boundary (it no longer matches "
            "what trains); call the live wrapper, StagedUnfreeze.wrapped"
        )

    old._xfreeze_retired = True
    object.__setattr__(old, "forward", replaced)

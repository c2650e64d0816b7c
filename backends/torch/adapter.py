"""PyTorch adapter: trainability is ``requires_grad``; BatchNorm statistics are buffers."""

from __future__ import annotations

import sys
import weakref
import copy
import math
import pickle

import numpy as np

import torch
from torch import nn

from ..contract import Adapter, owners, relock_after
from .. import kinds
from . import schedules as torch_schedules
from ...core.errors import XFreezeError

_NORMS = tuple(
    c
    for c in (
        nn.modules.batchnorm._NormBase,
        nn.GroupNorm,
        nn.LayerNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if c is not None
)
_KINDS = (
    ("norm", _NORMS),
    ("conv", (nn.modules.conv._ConvNd,)),
    ("linear", (nn.Linear,)),
    ("embedding", (nn.Embedding, nn.EmbeddingBag)),
)
# neutral dtype name -> torch dtype, for the dtypes this torch build has (fp8 since 2.1)
DTYPES = {
    name: getattr(torch, attr)
    for name, attr in (
        ("float64", "float64"),
        ("float32", "float32"),
        ("float16", "float16"),
        ("bfloat16", "bfloat16"),
        ("float8_e4m3fn", "float8_e4m3fn"),
        ("float8_e5m2", "float8_e5m2"),
        ("float8_e4m3fnuz", "float8_e4m3fnuz"),
        ("float8_e5m2fnuz", "float8_e5m2fnuz"),
        ("int64", "int64"),
        ("int32", "int32"),
        ("int16", "int16"),
        ("int8", "int8"),
        ("uint8", "uint8"),
        ("bool", "bool"),
        ("complex64", "complex64"),
        ("complex128", "complex128"),
    )
    if hasattr(torch, attr)
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# dtypes numpy lacks travel as the bits of a same-width integer (view, not cast)
_BIT_VIEWS = {
    "bfloat16": (torch.int16, np.uint16),
    "float8_e4m3fn": (torch.uint8, np.uint8),
    "float8_e5m2": (torch.uint8, np.uint8),
    "float8_e4m3fnuz": (torch.uint8, np.uint8),
    "float8_e5m2fnuz": (torch.uint8, np.uint8),
}
_INITS = {
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, a=math.sqrt(5)),
    "normal": lambda w: nn.init.normal_(w, std=0.01),
    "zeros": nn.init.zeros_,
}


# Wrappers seen through, by class name -> the attribute holding the wrapped module. Their own path segment
# ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.") never reaches a name.
WRAPPERS = {
    "DataParallel": "module",
    "DistributedDataParallel": "module",
    "OptimizedModule": "_orig_mod",  # torch.compile
    "FullyShardedDataParallel": "_fsdp_wrapped_module",  # FSDP1, at the root and around inner units
    "CheckpointWrapper": "_checkpoint_wrapped_module",  # activation checkpointing
    "OffloadWrapper": "_checkpoint_wrapped_module",
}
_STATS = ("running_mean", "running_var")


class _Distributed:
    """Wrapper and rank facts for xfreeze.model.guard; a base of the torch adapter."""

    rewrap_can_freeze = True  # a rebuilt DDP registers exactly the trainable parameters, whatever changed

    def syncing_wrappers(self, model) -> list:
        """The DDP wrappers that all-reduce ``model``'s gradients: ``model`` itself, the ones it wraps, and the
        live ones that wrap it (found only while a process group is initialized)."""
        out, m = [], model
        while isinstance(m, (nn.DataParallel, nn.parallel.DistributedDataParallel)) or hasattr(m, "_orig_mod"):
            if isinstance(m, nn.parallel.DistributedDataParallel):
                out.append(m)
            inner = getattr(m, "_orig_mod", None)
            m = m.module if inner is None else inner
        return out + [w for w in self._enclosing(m) if w not in out]

    def _enclosing(self, module) -> list:
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

    def unwrap_all(self, model):
        """The plain model under DDP / DataParallel / torch.compile / FSDP1 wrappers."""
        while True:
            inner = getattr(model, "_orig_mod", None)  # not `or`: an empty Sequential is falsy
            inner = getattr(model, "_fsdp_wrapped_module", None) if inner is None else inner
            if inner is None and isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
                inner = model.module
            if inner is None:
                return model
            model = inner

    def rebuild_wrapper(self, old, inner, build, newly_trainable):
        """A fresh DDP registers what trains now; the old one is retired so that calling it raises."""
        new = build(inner)
        if old is not None and old is not new:
            self.retire_wrapper(old)
        return new

    def tolerates_missing_gradients(self, wrapper) -> bool:
        """A DDP built with ``find_unused_parameters=True`` finds a frozen parameter unused at every step and leaves
        its gradient alone (on every rank alike); without it the reducer waits for that gradient and fails."""
        return bool(getattr(wrapper, "find_unused_parameters", False))

    freeze_after_wrap_hint = (
        "; or build the DDP with find_unused_parameters=True (Hugging Face Trainer: ddp_find_unused_parameters=True, "
        "its default without gradient checkpointing), which lets registered parameters stop getting gradients"
    )

    def sync_gradients_of(self, wrapper, params) -> None:
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

    def retire_wrapper(self, old) -> None:
        from ...core.errors import XFreezeError

        def replaced(*args, **kwargs):
            raise XFreezeError(
                f"this {type(old).__name__} was replaced at a stage boundary (it no longer matches "
                "what trains); call the live wrapper, StagedUnfreeze.wrapped"
            )

        old._xfreeze_retired = True
        object.__setattr__(old, "forward", replaced)

    def world_size(self) -> int:
        d = torch.distributed
        return d.get_world_size() if d.is_available() and d.is_initialized() else 1

    def rank(self) -> int:
        d = torch.distributed
        return d.get_rank() if d.is_available() and d.is_initialized() else 0

    def all_reduce_max(self, values: list) -> list:
        t = torch.tensor(values, dtype=torch.int64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t.tolist()

    def all_gather_object(self, obj) -> list:
        out = [None] * self.world_size()
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size() > 1:
            torch.distributed.barrier()

    def sharding(self, model):
        """ "fsdp1" (FullyShardedDataParallel anywhere in the model), "fsdp2" (fully_shard), or None."""
        fsdp = sys.modules.get("torch.distributed.fsdp")  # never imported: no model can be sharded by it
        if fsdp is None:
            return None
        if any(isinstance(m, fsdp.FullyShardedDataParallel) for m in model.modules()):
            return "fsdp1"
        fsdp2 = getattr(fsdp, "FSDPModule", None)
        return "fsdp2" if fsdp2 is not None and any(isinstance(m, fsdp2) for m in model.modules()) else None

    def is_sharded(self, model) -> bool:
        return self.sharding(model) is not None

    def full_state(self, model) -> dict:
        """The whole model's state as CPU tensors under plain names: DTensor / FSDP shards are gathered (every rank
        must call this; with cpu_offload only rank 0 receives the tensors, the others get {})."""
        if not self.is_sharded(model):
            return {k: v.detach().cpu() for k, v in self.unwrap_all(model).state_dict().items()}
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_full_state(self, model, state: dict) -> None:
        """Load full tensors into a sharded model: each rank keeps its own shard (every rank must call this)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))

    def local_numel(self, param) -> int:
        """Elements this rank holds (the local shard of a DTensor)."""
        return _local(param).numel()

    def sharded_sizes(self, model) -> dict:
        """``{name: (full elements, elements on this rank)}`` of a sharded model's parameters (empty when it is
        not sharded): FSDP2 DTensors know their global shape; FSDP1 keeps the full shapes in its flat parameters."""
        sharding = self.sharding(model)
        if sharding == "fsdp2":
            return {n: (p.numel(), _local(p).numel()) for n, p in self.unwrap_all(model).named_parameters()}
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


class TorchAdapter(_Distributed, Adapter):
    name = "torch"

    # --- structure: the model view ---------------------------------------------------------------------------
    WRAPPERS = WRAPPERS

    def unwrap(self, model) -> tuple:
        inner, wrappers = super().unwrap(model)
        if any(cls.__name__ == "FSDPModule" for cls in type(inner).__mro__):  # FSDP2: the module itself, sharded
            wrappers.append("fully_shard")
        return inner, wrappers

    def children(self, module) -> list:
        return [(name, child) for name, child in module._modules.items() if child is not None]

    def _child_registry(self, module) -> dict:
        return module._modules

    def _stat_registry(self, module) -> dict:
        return module._buffers

    def like(self, value, param):
        sharded, is_sharded = hasattr(param, "device_mesh"), hasattr(value, "device_mesh")
        if sharded and not is_sharded:  # FSDP2 swapped the parameter for a DTensor after the EMA was built
            from torch.distributed.tensor import distribute_tensor

            return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
        if is_sharded and not sharded:
            return value.full_tensor()
        if not sharded and not self.same_layout(value, param):  # the model was moved or cast (Lightning, .to())
            return value.to(device=param.device, dtype=param.dtype)
        return value

    def same_layout(self, value, param) -> bool:
        return value.dtype == param.dtype and value.device == param.device

    def module_tensors(self, module) -> tuple:
        params = [(local, p) for local, p in module._parameters.items() if p is not None]
        stats = [(local, local, module._buffers[local]) for local in _STATS if module._buffers.get(local) is not None]
        return params, stats

    def state_keys(self, view) -> list:
        return [
            f"{path}.{local}" if path else local
            for path, m in zip(view.paths, view.modules)
            for local, b in m._buffers.items()
            if b is not None and local not in _STATS and local not in m._non_persistent_buffers_set
        ]

    def trainable_flags(self, params):
        return [p.requires_grad for p in params]

    def direct_parameters(self, module):
        return list(module.named_parameters(recurse=False))

    def norm_statistics(self, module):
        return [(n, b) for n, b in module.named_buffers(recurse=False) if n in _STATS and b is not None]

    def module_kind(self, module):
        own = next((kind for kind, classes in _KINDS if isinstance(module, classes)), None)
        return own or kinds.module_kind(module, self.children(module), self.direct_parameters(module))

    def is_trainable(self, param) -> bool:
        return param.requires_grad

    def set_trainable(self, param, trainable: bool) -> None:
        param.requires_grad_(trainable)

    def drop_grad(self, param) -> None:
        param.grad = None  # a zeroed grad still feeds momentum and weight decay in torch optimizers

    def numel(self, param) -> int:
        return param.numel()

    def nbytes(self, param) -> int:
        return param.numel() * param.element_size()

    def dtype_name(self, param) -> str:
        return str(param.dtype).replace("torch.", "")

    def linear_features(self, module):
        return module.in_features, module.out_features, module.bias is not None

    def update_label_count(self, model, n: int) -> None:
        # transformers: the config's num_labels setter remakes id2label / label2id; forward reads the model's copy
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "num_labels"):
            config.num_labels = n
        for attr in ("num_labels", "num_classes"):  # timm keeps num_classes
            if isinstance(getattr(model, attr, None), int) and not isinstance(getattr(model, attr), bool):
                setattr(model, attr, n)

    def conv_head_features(self, module):
        ok = isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and module.groups == 1
        return (module.in_channels, module.out_channels) if ok else None

    def new_conv_head(self, like, out_channels: int, init: str):
        w = like.weight
        layer = nn.Conv2d(like.in_channels, out_channels, 1, bias=like.bias is not None, device=w.device, dtype=w.dtype)
        if init != "default":
            with torch.no_grad():
                _INITS[init](layer.weight)
                if layer.bias is not None:
                    layer.bias.zero_()
        return layer

    def new_linear(self, like, out_features: int, init: str):
        w = like.weight
        layer = nn.Linear(like.in_features, out_features, bias=like.bias is not None, device=w.device, dtype=w.dtype)
        if init != "default":
            with torch.no_grad():
                _INITS[init](layer.weight)
                if layer.bias is not None:
                    layer.bias.zero_()
        return layer

    def to_numpy(self, tensor):
        return tensor.detach().cpu().numpy()

    # --- native tensors (dtype table, exact bits) -------------------------------------------------------------
    DTYPES = DTYPES

    def tensor_dtype(self, tensor) -> str:
        try:
            return _NAMES[tensor.dtype]
        except KeyError:
            raise XFreezeError(
                f"torch dtype {tensor.dtype} is not supported by xfreeze (supported: {', '.join(DTYPES)})"
            ) from None

    def to_raw(self, tensor):
        from ...core.tensors import Raw

        name = self.tensor_dtype(tensor)
        t = _whole(tensor).detach().cpu().contiguous()
        if name in _BIT_VIEWS:
            carrier, np_carrier = _BIT_VIEWS[name]
            return Raw(t.view(carrier).numpy().view(np_carrier), name)
        return Raw(t.numpy(), name)

    def from_raw(self, raw):
        bits = np.require(raw.bits, requirements=["C", "W"])  # from_numpy shares memory and wants it writeable
        if raw.dtype in _BIT_VIEWS:
            carrier, _ = _BIT_VIEWS[raw.dtype]
            return torch.from_numpy(bits.view(np.int16 if carrier is torch.int16 else np.uint8)).view(DTYPES[raw.dtype])
        return torch.from_numpy(bits)

    def cast(self, tensor, dtype: str):
        return tensor.to(DTYPES[dtype])

    def transpose(self, tensor):
        return tensor.t().contiguous()

    # --- named models (the command line) ----------------------------------------------------------------------
    model_zoo = "a torchvision name (or a timm name, when timm is installed)"

    def model_names(self) -> list:
        import importlib.util
        import torchvision

        names = list(torchvision.models.list_models())
        if importlib.util.find_spec("timm"):
            import timm

            names += timm.list_models()
        return names

    def build_named_model(self, name: str):
        """A torchvision model (random weights), else a timm model when timm is installed; None if unknown."""
        import torchvision

        if name in torchvision.models.list_models():
            return torchvision.models.get_model(name, weights=None)
        try:
            import timm
        except ImportError:
            return None
        return timm.create_model(name, pretrained=False) if name in timm.list_models() else None

    # --- weights ----------------------------------------------------------------------------------------------
    def padding_idx(self, module):
        return module.padding_idx if isinstance(module, nn.Embedding) else None

    def state_tensors(self, model) -> dict:
        return dict(_unwrap_root(model)[0].state_dict(keep_vars=True))

    def as_native(self, value, like):
        return value.to(device=like.device, dtype=like.dtype)

    def load_tensors(self, targets, values) -> None:
        self.copy_into(list(targets), list(values))

    def state_arrays(self, model) -> dict:
        return {k: v.detach().cpu().numpy() for k, v in _unwrap(model).state_dict().items()}

    def assign(self, tensor, array) -> None:
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(np.require(array, requirements="C")))

    def numpy_dtype(self, tensor):
        return torch.empty((), dtype=tensor.dtype).numpy().dtype

    def load_file(self, path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # weights_only refuses globals: the file asks to run code
            raise XFreezeError(
                f"checkpoint {str(path)!r}: refused to load it: it asks to run code and torch.load "
                f"ran with weights_only=True ({str(exc).splitlines()[0]})"
            ) from None

    def own_only_keys(self, names) -> set:
        """State keys with no counterpart in the other framework (not "missing" when loading from it)."""
        return {n for n in names if n.endswith("num_batches_tracked")}

    def save_file(self, tensors: dict, f) -> None:
        # native tensors, dtype kept; a view is saved alone, not with the whole storage it looks into
        torch.save({k: _whole(v).detach().cpu().contiguous().clone() for k, v in tensors.items()}, f)

    # --- optimizers -------------------------------------------------------------------------------------------
    def scheduler_base_lr(self, lr):
        return None  # torch schedulers wrap the optimizer; the base rate is always a number

    def build_optimizer(self, config, groups, lr):
        groups = [_group(g) for g in groups]
        if config.name == "sgd":
            return torch.optim.SGD(
                groups,
                lr=config.lr,
                momentum=config.momentum,
                nesterov=config.nesterov,
                weight_decay=config.weight_decay,
            )
        cls = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
        return cls(groups, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)

    def optimizer_param_ids(self, opt) -> set:
        return {id(p) for g in opt.param_groups for p in g["params"]}

    def build_optimizer_from(self, factory, config, groups, lr, kwargs):
        """Any torch optimizer class/factory over the groups; each group's ``lr`` is absolute in torch already."""
        groups, label = [_group(g) for g in groups], config.name
        try:
            opt = factory(groups, lr=config.lr, **kwargs)
        except (TypeError, ValueError) as exc:  # LBFGS: "doesn't support per-parameter options"
            raise XFreezeError(f"optimizer {label} cannot be built over xfreeze's parameter groups: {exc}") from None
        if not isinstance(opt, torch.optim.Optimizer):
            raise XFreezeError(f"optimizer {label} returned a {type(opt).__name__}, not a torch.optim.Optimizer")
        if len(opt.param_groups) != len(groups) or "lr" not in opt.defaults:
            raise XFreezeError(
                f"optimizer {label} does not keep xfreeze's {len(groups)} parameter groups with their "
                "own learning rates, so absolute group rates cannot be guaranteed"
            )
        if config.weight_decay and "weight_decay" not in opt.defaults:
            raise XFreezeError(f"optimizer {label} has no per-group weight decay; pass weight_decay=0.0")
        return opt

    def optimizer_defaults(self, opt):
        defaults = getattr(opt, "defaults", None)
        if not isinstance(defaults, dict) or "lr" not in defaults:
            return None
        # the decay the optimizer gives its decayed parameters, read from its groups: the Hugging Face Trainer
        # passes args.weight_decay in groups, so defaults hold AdamW's own 0.01 whatever the user set
        decays = [g["weight_decay"] for g in opt.param_groups if isinstance(g.get("weight_decay"), (int, float))]
        return {**defaults, "weight_decay": max(decays, default=defaults.get("weight_decay", 0.0))}

    def is_optimizer(self, obj) -> bool:
        return isinstance(obj, torch.optim.Optimizer)

    def is_scheduler(self, obj) -> bool:
        return isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau))

    def group_rows(self, opt) -> list:
        """(param ids, absolute lr, weight decay) per group."""
        return [([id(p) for p in g["params"]], g["lr"], g.get("weight_decay", 0.0)) for g in opt.param_groups]

    def has_optimizer_state(self, opt, param) -> bool:
        return bool(opt.state.get(param))

    def optimizer_state_problem(self, opt, model, state):
        if (
            not isinstance(state, dict)
            or not isinstance(state.get("param_groups"), list)
            or not isinstance(state.get("state"), dict)
        ):
            return "expected a torch optimizer state_dict with 'state' and 'param_groups'"
        if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in state["param_groups"]):
            return "a param_groups entry has no 'params' list"
        return None

    def saved_param_count(self, state):
        return sum(len(g["params"]) for g in state["param_groups"])

    def register_state_hooks(self, opt, save, load) -> None:
        """``save(state_dict)`` adds to what ``opt.state_dict()`` returns; ``load(state_dict)`` runs first in
        ``opt.load_state_dict`` (before torch checks the groups) and returns the state to load."""
        opt.register_state_dict_post_hook(lambda o, state: save(state))
        opt.register_load_state_dict_pre_hook(lambda o, state: load(state))

    def add_param_group(self, opt, group, scheduler=None) -> None:
        new = _group(group)
        opt.add_param_group(new)
        if scheduler is not None:
            torch_schedules.grow(scheduler, opt, opt.param_groups[-1])

    def adopt_scheduler(self, opt, scheduler) -> str | None:
        problem = torch_schedules.problem(scheduler, opt)
        if problem is None:
            torch_schedules.prepare(scheduler, opt)
        return problem

    def group_lrs(self, opt) -> list:
        return [g["lr"] for g in opt.param_groups]

    def optimizer_state(self, opt, model) -> dict:
        # a snapshot (torch returns live tensors); keyed by position in param_groups, which xfreeze rebuilds alike
        return copy.deepcopy(opt.state_dict())

    def load_optimizer_state(self, opt, model, state) -> None:
        opt.load_state_dict(state)

    def scheduler_state(self, scheduler) -> dict:
        return copy.deepcopy(scheduler.state_dict())

    def load_scheduler_state(self, scheduler, state) -> None:
        scheduler.load_state_dict(state)

    # --- EMA --------------------------------------------------------------------------------------------------
    def clone(self, tensor):
        return tensor.detach().clone()

    def ema_update(self, averages, values, weight: float) -> None:
        with torch.no_grad():  # one fused lerp (timm ModelEmaV3): e + w * (m - e), exactly e when m == e
            for group_a, group_v in _foreach_groups(averages, values):
                torch._foreach_lerp_(group_a, group_v, weight)

    def copy_into(self, targets, sources) -> None:
        with torch.no_grad():
            for group_t, group_s in _foreach_groups(targets, sources):
                if hasattr(group_t[0], "device_mesh"):  # DTensor has no sharding rule for _foreach_copy_
                    for target, source in zip(group_t, group_s):
                        target.copy_(source)
                else:
                    torch._foreach_copy_(group_t, group_s)


def _whole(tensor):
    """The logical (whole) value of a DTensor (FSDP2: a collective, so every rank calls it), else the tensor."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _local(tensor):
    """The local shard of a DTensor (FSDP2), the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _foreach_groups(first: list, second: list):
    """The pairs split into plain tensors and DTensors (FSDP2 parameters beside plain BatchNorm buffers): a foreach
    kernel takes one kind at a time."""
    plain = [(a, b) for a, b in zip(first, second) if not hasattr(a, "device_mesh")]
    sharded = [(a, b) for a, b in zip(first, second) if hasattr(a, "device_mesh")]
    return [tuple(map(list, zip(*pairs))) for pairs in (plain, sharded) if pairs]


def _unwrap_root(model):
    return ADAPTER.unwrap(model)


def _unwrap(model):
    return ADAPTER.unwrap(model)[0]


def _group(group: dict) -> dict:
    return {
        "params": list(group["params"]),
        "lr": group["lr"],
        "weight_decay": group["weight_decay"],
        "xfreeze_names": list(group["names"]),
    }


ADAPTER = TorchAdapter()


# --- distributed (issue 10: DDP / FSDP / torch.compile wrappers, ranks, collectives) --------------------------------


if not hasattr(nn.SyncBatchNorm.convert_sync_batchnorm, "__wrapped__"):
    _converter = staticmethod(relock_after(ADAPTER, nn.SyncBatchNorm.convert_sync_batchnorm))
    nn.SyncBatchNorm.convert_sync_batchnorm = _converter  # type: ignore[method-assign]

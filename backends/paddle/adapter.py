"""Paddle adapter: trainability is ``stop_gradient``; BatchNorm ``_mean``/``_variance`` are statistics.

Paddle registers a BatchNorm's running statistics as (stop_gradient) Parameters. xfreeze treats them as torch
treats buffers: they are never listed, selected or made trainable, so both frameworks show the same names.
"""

from __future__ import annotations

import math
import types
from typing import Any

import numpy as np

import paddle
from paddle import nn

from ..contract import Adapter, owners, relock_after
from .. import kinds
from ...core.errors import XFreezeError

_STAT_NAMES = ("_mean", "_variance")
_NEUTRAL_STAT = {"_mean": "running_mean", "_variance": "running_var"}
_NORMS = tuple(
    c
    for c in (
        nn.layer.norm._BatchNormBase,
        nn.BatchNorm,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.layer.norm._InstanceNormBase,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if c is not None
)
# Paddle 3.3's batch_norm computes the gradient of neither scale nor bias when either one is stop_gradient
# (measured: freezing a BatchNorm2D's bias leaves its weight with grad None), so BitFit-style "train only biases"
# silently trains no BatchNorm bias. See PaddleAdapter.sync_grads.
_JOINT_GRAD = (nn.layer.norm._BatchNormBase, nn.BatchNorm)
_KINDS = (
    ("norm", _NORMS),
    ("conv", (nn.layer.conv._ConvNd,)),
    ("linear", (nn.Linear,)),
    ("embedding", (nn.Embedding,)),
)
# neutral dtype name -> Paddle dtype, for the dtypes this Paddle build has (fp8 since 2.6)
DTYPES = {
    name: getattr(paddle, name)
    for name in (
        "float64",
        "float32",
        "float16",
        "bfloat16",
        "float8_e4m3fn",
        "float8_e5m2",
        "int64",
        "int32",
        "int16",
        "int8",
        "uint8",
        "bool",
        "complex64",
        "complex128",
    )
    if hasattr(paddle, name)
}
_NAMES = {str(dtype): name for name, dtype in DTYPES.items()}
# Tensor.numpy() gives bf16 as its uint16 bits and fp8 as its int8 bits; the carriers xfreeze uses are unsigned
_BIT_CARRIERS = {"bfloat16": np.uint16, "float8_e4m3fn": np.uint8, "float8_e5m2": np.uint8}
_INITS: dict[str, Any] = {
    "xavier_uniform": nn.initializer.XavierUniform,
    "xavier_normal": nn.initializer.XavierNormal,
    # torch's default Linear init (kaiming_uniform, a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    "kaiming_uniform": lambda: nn.initializer.KaimingUniform(negative_slope=math.sqrt(5), nonlinearity="leaky_relu"),
    "normal": lambda: nn.initializer.Normal(std=0.01),
    "zeros": lambda: nn.initializer.Constant(0.0),
}


# Wrappers seen through, by class name -> the attribute holding the wrapped layer (its "_layers." segment never
# reaches a name).
WRAPPERS = {"DataParallel": "_layers"}


class _Distributed:
    """Wrapper and rank facts for xfreeze.model.guard; mixed into the Paddle adapter below."""

    # Rebuilding paddle.DataParallel after a freeze crashes (SIGSEGV in EagerReducer::AddDistHook), and a rebuilt one
    # does not all-reduce the parameters that became trainable (measured, Paddle 3.3.1, gloo): see rebuild_wrapper.
    rewrap_can_freeze = False

    def syncing_wrappers(self, model) -> list:
        out, m = [], model
        while isinstance(m, paddle.DataParallel):
            if self._syncs(m):
                out.append(m)
            m = m._layers
        return out + [w for w in self._enclosing(m) if w not in out]

    def _syncs(self, wrapper) -> bool:
        return wrapper._strategy.nranks > 1 and getattr(wrapper, "_reducer", None) is not None

    def _enclosing(self, layer) -> list:
        if not self.world_size() > 1:
            return []
        found = [
            o for o in owners(layer) if isinstance(o, paddle.DataParallel) and o._layers is layer and self._syncs(o)
        ]
        return list({id(w): w for w in found}.values())

    def unwrap_all(self, model):
        return _unwrap(model)

    def rebuild_wrapper(self, old, inner, build, newly_trainable):
        """Keep the live DataParallel and average the gradients of the newly trainable parameters with a gradient
        hook (one all-reduce each, in backward order, the same on every rank): a second DataParallel over the same
        parameters leaves them un-reduced (measured), and dropping the first one after a freeze crashes."""
        if old is None:
            return build(inner)
        self.sync_gradients_of(old, newly_trainable)
        return old

    def tolerates_missing_gradients(self, wrapper) -> bool:
        """No: a DataParallel whose registered parameters are frozen later is the path that crashes (issue 10); not
        relied on even with ``find_unused_parameters=True``, which is untested here."""
        return False

    freeze_after_wrap_hint = ""

    def sync_gradients_of(self, wrapper, params) -> None:
        """A gradient hook per parameter averages it over the ranks (in backward order, the same on every rank);
        the DataParallel stays as it is."""
        world = self.world_size()
        for param in params:
            if not getattr(param, "_xfreeze_grad_sync", False):
                param.register_hook(_averaging_hook(world))
                param._xfreeze_grad_sync = True

    def world_size(self) -> int:
        return paddle.distributed.get_world_size() if paddle.distributed.is_initialized() else 1

    def rank(self) -> int:
        return paddle.distributed.get_rank() if paddle.distributed.is_initialized() else 0

    def all_reduce_max(self, values: list) -> list:
        t = paddle.to_tensor(values, dtype="int64")
        paddle.distributed.all_reduce(t, op=paddle.distributed.ReduceOp.MAX)
        return [int(v) for v in t.numpy()]

    def all_gather_object(self, obj) -> list:
        out: list = []
        paddle.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size() > 1:
            paddle.distributed.barrier()

    def sharding(self, model):
        return None  # Paddle's sharded training (fleet group_sharded) is not covered yet

    def is_sharded(self, model) -> bool:
        return False

    def full_state(self, model) -> dict:
        return {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}

    def load_full_state(self, model, state: dict) -> None:
        raise XFreezeError("sharded Paddle models are not supported by xfreeze yet: load before sharding")

    def local_numel(self, param) -> int:
        return math.prod(param.shape)

    def sharded_sizes(self, model) -> dict:
        return {}


class PaddleAdapter(_Distributed, Adapter):
    name = "paddle"

    # --- structure: the model view ---------------------------------------------------------------------------
    WRAPPERS = WRAPPERS

    def children(self, module) -> list:
        return [(name, child) for name, child in module._sub_layers.items() if child is not None]

    def _child_registry(self, module) -> dict:
        return module._sub_layers

    def _stat_registry(self, module) -> dict:
        return module._parameters  # Paddle registers running statistics as parameters

    def like(self, value, param):
        if value.dtype != param.dtype:  # the model was cast (Layer.to(dtype=...), .astype) after the EMA was built
            value = value.astype(param.dtype)
        if str(value.place) != str(param.place):
            value = value._copy_to(param.place, True)
        return value

    def same_layout(self, value, param) -> bool:
        return value.dtype == param.dtype and str(value.place) == str(param.place)

    def module_tensors(self, module) -> tuple:
        is_norm = isinstance(module, _NORMS)
        params, stats = [], []
        for local, p in module._parameters.items():
            if p is None:
                continue
            if is_norm and local in _STAT_NAMES:  # Paddle registers running statistics as Parameters
                stats.append((_NEUTRAL_STAT[local], local, p))
            else:
                params.append((local, p))
        return params, stats

    def state_keys(self, view) -> list:
        return [
            f"{path}.{local}" if path else local
            for path, m in zip(view.paths, view.modules)
            for local, b in m._buffers.items()
            if b is not None and local not in m._non_persistable_buffer_names_set
        ]

    def trainable_flags(self, params):
        return [not p.stop_gradient for p in params]

    def direct_parameters(self, module):
        stats = isinstance(module, _NORMS)
        return [(n, p) for n, p in module.named_parameters(include_sublayers=False) if not (stats and n in _STAT_NAMES)]

    def norm_statistics(self, module):
        if self.module_kind(module) != "norm":
            return []
        return [(_NEUTRAL_STAT[n], getattr(module, n)) for n in _STAT_NAMES if getattr(module, n, None) is not None]

    def module_kind(self, module):
        own = next((kind for kind, classes in _KINDS if isinstance(module, classes)), None)
        return own or kinds.module_kind(module, self.children(module), self.direct_parameters(module))

    def sync_grads(self, module) -> None:
        trainable = [not p.stop_gradient for _, p in self.direct_parameters(module)]
        partial = isinstance(module, _JOINT_GRAD) and any(trainable) and not all(trainable)
        if partial and "forward" not in module.__dict__:
            object.__setattr__(module, "forward", types.MethodType(_forward_with_live_stand_ins, module))
        elif not partial and "forward" in module.__dict__:
            object.__delattr__(module, "forward")

    def is_trainable(self, param) -> bool:
        return not param.stop_gradient

    def set_trainable(self, param, trainable: bool) -> None:
        param.stop_gradient = not trainable

    def drop_grad(self, param) -> None:
        param.clear_gradient(False)  # False releases the gradient (grad becomes None) instead of zeroing it

    def numel(self, param) -> int:
        return math.prod(param.shape)

    def nbytes(self, param) -> int:
        return math.prod(param.shape) * param.element_size()

    def dtype_name(self, param) -> str:
        return str(param.dtype).replace("paddle.", "")

    def linear_features(self, module):
        in_features, out_features = module.weight.shape  # Paddle Linear weights are [in, out]
        return in_features, out_features, module.bias is not None

    def update_label_count(self, model, n: int) -> None:
        # PaddleNLP (num_classes aliases num_labels), paddle.vision: the config's num_labels setter remakes
        # id2label / label2id; forward reads the model's copy
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "num_labels"):
            config.num_labels = n
        for attr in ("num_labels", "num_classes"):
            if isinstance(getattr(model, attr, None), int) and not isinstance(getattr(model, attr), bool):
                setattr(model, attr, n)

    def conv_head_features(self, module):
        if not isinstance(module, nn.Conv2D) or module._groups not in (1, None):
            return None
        out_channels, in_channels, kh, kw = module.weight.shape  # Paddle conv weights share torch's layout
        return (in_channels, out_channels) if (kh, kw) == (1, 1) else None

    def new_conv_head(self, like, out_channels: int, init: str):
        in_channels, _ = self.conv_head_features(like)
        layer = nn.Conv2D(in_channels, out_channels, 1, bias_attr=None if like.bias is not None else False)
        if init != "default":
            with paddle.no_grad():
                _INITS[init]()(layer.weight)
                if layer.bias is not None:
                    nn.initializer.Constant(0.0)(layer.bias)
        return layer.to(device=like.weight.place, dtype=like.weight.dtype)

    def new_linear(self, like, out_features: int, init: str):
        in_features, _, has_bias = self.linear_features(like)
        layer = nn.Linear(in_features, out_features, bias_attr=None if has_bias else False)
        if init != "default":
            with paddle.no_grad():
                _INITS[init]()(layer.weight)
                if layer.bias is not None:
                    nn.initializer.Constant(0.0)(layer.bias)
        return layer.to(device=like.weight.place, dtype=like.weight.dtype)

    def to_numpy(self, tensor):
        return tensor.detach().cpu().numpy()

    # --- native tensors (dtype table, exact bits) -------------------------------------------------------------
    DTYPES = DTYPES

    def tensor_dtype(self, tensor) -> str:
        try:
            return _NAMES[str(tensor.dtype)]
        except KeyError:
            raise XFreezeError(
                f"Paddle dtype {tensor.dtype} is not supported by xfreeze (supported: {', '.join(DTYPES)})"
            ) from None

    def to_raw(self, tensor):
        from ...core.tensors import Raw

        name = self.tensor_dtype(tensor)
        bits = np.require(tensor.detach().cpu().numpy(), requirements="C")  # ascontiguousarray makes 0-d 1-d
        if name in _BIT_CARRIERS:
            bits = bits.view(_BIT_CARRIERS[name])
        return Raw(bits, name)

    def from_raw(self, raw):
        if raw.dtype in _BIT_CARRIERS:  # a uint16 array becomes bfloat16 by itself; view keeps the bits either way
            carrier = paddle.to_tensor(raw.bits.view(np.int8) if raw.bits.itemsize == 1 else raw.bits)
            return paddle.view(carrier, DTYPES[raw.dtype])
        return paddle.to_tensor(raw.bits)

    def cast(self, tensor, dtype: str):
        return tensor.astype(DTYPES[dtype])

    def transpose(self, tensor):
        return paddle.transpose(tensor, [1, 0]).contiguous()

    # --- named models (the command line) ----------------------------------------------------------------------
    model_zoo = "a paddle.vision.models name"

    def model_names(self) -> list:
        models = paddle.vision.models
        return [n for n in dir(models) if n[:1].islower() and callable(getattr(models, n))]

    def build_named_model(self, name: str):
        """A paddle.vision model (random weights); None if unknown."""
        return getattr(paddle.vision.models, name)() if name in self.model_names() else None

    # --- weights ----------------------------------------------------------------------------------------------
    def padding_idx(self, module):
        if not isinstance(module, nn.Embedding):
            return None
        index = module._padding_idx  # Paddle stores -1 (or None) for "no padding row"
        return None if index is None or index < 0 else int(index)

    def state_tensors(self, model) -> dict:
        return dict(_unwrap_root(model)[0].state_dict())

    def as_native(self, value, like):
        return value.astype(like.dtype) if value.dtype != like.dtype else value

    def load_tensors(self, targets, values) -> None:
        with paddle.no_grad():
            for target, value in zip(targets, values):
                target.set_value(value)

    def state_arrays(self, model) -> dict:
        return {k: v.numpy() for k, v in _unwrap(model).state_dict().items()}

    def assign(self, tensor, array) -> None:
        tensor.set_value(np.require(array, requirements="C"))

    def own_only_keys(self, names) -> set:
        return set()

    def numpy_dtype(self, tensor):
        return paddle.zeros([1], dtype=tensor.dtype).numpy().dtype

    # --- optimizers -------------------------------------------------------------------------------------------
    def scheduler_base_lr(self, lr):
        """The nominal rate: the one the user named (OneCycleLR's peak, LinearWarmup's rate after warm-up, whose
        ``base_lr`` is its start, often 0; PiecewiseDecay's first value), as the torch adapter reads a schedule
        (backends/torch_schedules.py)."""
        L = paddle.optimizer.lr
        if isinstance(lr, L.OneCycleLR):
            return float(lr._lr_config[1])
        if isinstance(lr, L.LinearWarmup):
            return float(lr.end_lr)
        if isinstance(lr, L.PiecewiseDecay):  # its base_lr is a placeholder (0.1); the first value is the rate
            return float(lr.values[0])
        return float(lr.base_lr) if isinstance(lr, L.LRScheduler) else None

    def build_optimizer(self, config, groups, lr):
        O, groups = paddle.optimizer, [_group(config, g, g["lr_scale"]) for g in groups]
        if config.name == "sgd":  # Paddle's SGD has no momentum; Momentum(momentum=0) is plain SGD
            return O.Momentum(
                learning_rate=lr,
                momentum=config.momentum,
                use_nesterov=config.nesterov,
                parameters=groups,
                weight_decay=0.0,
            )
        if config.name == "adam":
            return O.Adam(
                learning_rate=lr, beta1=config.betas[0], beta2=config.betas[1], epsilon=config.eps, parameters=groups
            )
        opt = O.AdamW(
            learning_rate=lr,
            beta1=config.betas[0],
            beta2=config.betas[1],
            epsilon=config.eps,
            parameters=groups,
            weight_decay=config.weight_decay,
        )
        _no_coupled_decay(groups)
        return opt

    def build_optimizer_from(self, factory, config, groups, lr, kwargs):
        """Any Paddle optimizer class/factory: group ``learning_rate`` is a multiplier of the global rate, which
        every Paddle optimizer applies per parameter (``optimize_attr``); decay is the group's own."""
        import inspect

        label = config.name
        try:
            signature = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            signature = None
        accepts_decay = signature is None or "weight_decay" in signature
        kwargs = _paddle_spelling(label, signature, kwargs)
        if config.weight_decay and not accepts_decay:  # Lamb: lamb_weight_decay, one rule for every parameter
            raise XFreezeError(
                f"optimizer {label} has no per-group weight_decay, so xfreeze cannot give groups "
                f"their own decay; pass weight_decay=0.0 (and {label}'s own decay option)"
            )
        groups = [_group(config, g, g["lr_scale"]) for g in groups]
        extra = {"weight_decay": config.weight_decay} if accepts_decay and config.weight_decay else {}
        try:
            opt = factory(learning_rate=lr, parameters=groups, **extra, **kwargs)
        except (TypeError, ValueError, AssertionError) as exc:
            raise XFreezeError(f"optimizer {label} cannot be built over xfreeze's parameter groups: {exc}") from None
        if (
            not isinstance(opt, paddle.optimizer.Optimizer)
            or not opt._param_groups
            or not isinstance(opt._param_groups[0], dict)
        ):
            raise XFreezeError(
                f"optimizer {label} does not keep xfreeze's parameter groups, so absolute group "
                "rates cannot be guaranteed"
            )
        if isinstance(opt, paddle.optimizer.AdamW):
            _no_coupled_decay(groups)
        return opt

    def optimizer_defaults(self, opt):
        return None  # a Paddle optimizer built by hand over a parameter list cannot grow groups

    def is_optimizer(self, obj) -> bool:
        return isinstance(obj, paddle.optimizer.Optimizer)

    def is_scheduler(self, obj) -> bool:
        return isinstance(obj, paddle.optimizer.lr.LRScheduler)

    def group_rows(self, opt) -> list:
        """(param ids, absolute lr, weight decay) per group; a hand-built optimizer is one group."""
        groups = opt._param_groups
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        return [
            ([id(p) for p in g["params"]], opt.get_lr() * g.get("learning_rate", 1.0), _decay_of(opt, g))
            for g in groups
        ]

    def has_optimizer_state(self, opt, param) -> bool:
        return any(param.name in accumulators for accumulators in opt._accumulators.values())

    def optimizer_state_problem(self, opt, model, state):
        if not isinstance(state, dict):
            return f"expected a dict of accumulators, got {type(state).__name__}"
        names = {n for n, _ in model.named_parameters()}
        unknown = sorted({k.split("|", 1)[0] for k in state if "|" in k} - names)
        if unknown:
            return f"it names parameters this model lacks: {unknown[:3]}"
        kinds: dict = {}
        for key in state:
            if "|" in key:
                name, suffix = key.split("|", 1)
                kinds.setdefault(name, set()).add(suffix)
        if len({frozenset(v) for v in kinds.values()}) > 1:  # every parameter has the optimizer's same accumulators
            return "some parameters lack accumulators that others have: the state is incomplete"
        return None

    def saved_param_count(self, state):
        return None  # Paddle keys state by parameter, not by group: nothing to count

    def register_state_hooks(self, opt, save, load) -> None:
        """Paddle optimizers have no state hooks: wrap this instance's state_dict / set_state_dict."""
        state_dict, set_state_dict = opt.state_dict, opt.set_state_dict

        def saving():
            state = state_dict()
            before = set(state)
            save(state)
            for key in set(state) - before:  # paddle.load gives nested tensors back as (name, array) tuples
                state[key] = _arrays(state[key])
            return state

        opt.state_dict = saving
        opt.set_state_dict = lambda state: set_state_dict(load(dict(state)))

    def optimizer_param_ids(self, opt) -> set:
        groups = opt._param_groups
        if groups and not isinstance(groups[0], dict):
            return {id(p) for p in groups}
        return {id(p) for g in groups for p in g["params"]}

    def add_param_group(self, opt, group, scheduler=None) -> None:
        if not opt._param_groups or not isinstance(opt._param_groups[0], dict):
            raise TypeError(
                "a Paddle optimizer can only grow when it was built from parameter groups (dicts); "
                "build it with xfreeze.optimizer(model, ...)"
            )
        config = opt._xfreeze_config
        new = _group(config, group, group["lr"] / config.lr)  # a multiplier of the optimizer's global base rate
        # Momentum/Adam replace the base _default_dict and drop 'grad_clip', which step() reads from every group
        new["grad_clip"] = opt._grad_clip
        if isinstance(opt, paddle.optimizer.Momentum):  # the constructor's own conversion of group decay
            new["regularization_method"], new["regularization_coeff"] = opt._update_regularization(new["weight_decay"])
            new["weight_decay"] = None
        opt._add_param_group(new)
        if isinstance(opt, paddle.optimizer.AdamW):
            _no_coupled_decay([new])
        # the global LRScheduler drives every group (their learning_rate is a multiplier): nothing to extend

    def adopt_scheduler(self, opt, scheduler) -> str | None:
        if scheduler is not getattr(opt, "_learning_rate", None):
            return f"{type(scheduler).__name__} is not the optimizer's learning rate (Paddle schedules live in it)"
        return None

    def group_lrs(self, opt) -> list:
        return [opt.get_lr() * g.get("learning_rate", 1.0) for g in opt._param_groups]

    def optimizer_state(self, opt, model) -> dict:
        """Paddle keys optimizer state by auto-generated names (linear_0.w_0_velocity_0) that differ between model
        instances; xfreeze re-keys it by structured parameter name (fc.weight|_velocity_0)."""
        by_auto = {p.name: n for n, p in model.named_parameters()}
        out = {}
        for key, value in opt.state_dict().items():
            if key == "master_weights":
                out[key] = {by_auto.get(k, k): v.detach().clone() for k, v in value.items()}
            elif key == "LR_Scheduler":
                out[key] = dict(value)
            else:  # a snapshot: Paddle returns the live accumulators
                auto = max((a for a in by_auto if key.startswith(a + "_")), key=len, default=None)
                out[f"{by_auto[auto]}|{key[len(auto) :]}" if auto else key] = value.detach().clone()
        return out

    def load_optimizer_state(self, opt, model, state) -> None:
        to_auto = {n: p.name for n, p in model.named_parameters()}
        restored = {}
        for key, value in state.items():
            if key == "master_weights":
                restored[key] = {to_auto.get(k, k): v for k, v in value.items()}
            elif "|" in key:
                name, suffix = key.split("|", 1)
                restored[to_auto[name] + suffix] = value
            else:
                restored[key] = value
        opt.set_state_dict(restored)

    def scheduler_state(self, scheduler) -> dict:
        return dict(scheduler.state_dict())

    def load_scheduler_state(self, scheduler, state) -> None:
        scheduler.set_state_dict(state)

    # --- EMA --------------------------------------------------------------------------------------------------
    def clone(self, tensor):
        return tensor.detach().clone()

    def ema_update(self, averages, values, weight: float) -> None:
        with paddle.no_grad():  # Paddle has no foreach kernels: an in-place lerp per tensor, e exactly e when m == e
            for average, value in zip(averages, values):
                if average.dtype in (paddle.float32, paddle.float64):
                    average.lerp_(value, weight)
                else:  # Paddle 3.3's CPU lerp has float32/64 kernels only: lerp in float32, round once (as torch does)
                    wide = average.astype("float32")
                    wide.lerp_(value.astype("float32"), weight)
                    paddle.assign(wide.astype(average.dtype), output=average)

    def copy_into(self, targets, sources) -> None:
        with paddle.no_grad():
            for target, source in zip(targets, sources):
                paddle.assign(source, output=target)


def _unwrap_root(model):
    return ADAPTER.unwrap(model)


def _unwrap(model):
    return ADAPTER.unwrap(model)[0]


def _group(config, group: dict, multiplier: float) -> dict:
    """A Paddle group: learning_rate is a multiplier of the global rate; weight decay is set explicitly for every
    group, so that a regularizer an earlier optimizer wrote onto the parameters is overwritten, not inherited."""
    wd = float(group["weight_decay"])
    decay = wd if config.name in ("sgd", "adamw") else (wd or None)
    return {"params": list(group["params"]), "learning_rate": float(multiplier), "weight_decay": decay}


def _arrays(value):
    """``value`` with every tensor in nested dicts / lists replaced by its numpy array."""
    if isinstance(value, paddle.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: _arrays(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_arrays(v) for v in value)
    return value


def _decay_of(opt, group) -> float:
    if group.get("regularization_method"):  # Momentum converts a group's decay into these
        return float(group.get("regularization_coeff") or 0.0)
    decay = group.get("weight_decay", getattr(opt, "_weight_decay", None))
    return float(getattr(decay, "_coeff", decay) or 0.0)  # a float, an L2Decay or None


# xfreeze's option names (the torch ecosystem's) -> how Paddle's optimizer classes spell them
_SPELLINGS = {"betas": ("beta1", "beta2"), "eps": ("epsilon",), "nesterov": ("use_nesterov",)}


def _paddle_spelling(label, signature, kwargs) -> dict:
    """``betas=(a, b)`` -> ``beta1=a, beta2=b``, ``eps`` -> ``epsilon``, ``nesterov`` -> ``use_nesterov``, for a
    class that takes Paddle's spelling, so one call means the same in both frameworks."""
    out = dict(kwargs)
    for neutral, names in _SPELLINGS.items():
        if neutral not in out or signature is None or neutral in signature or not all(n in signature for n in names):
            continue
        value = out.pop(neutral)
        if len(names) == 2:
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise XFreezeError(f"optimizer {label}: betas must be two numbers. Received: betas={value!r}")
            out.update(zip(names, value))
        else:
            out[names[0]] = value
    return out


def _no_coupled_decay(groups) -> None:
    # Optimizer._add_param_group turns a group's float weight_decay into an L2Decay stored on each parameter. AdamW
    # reads the group's coefficient itself (decoupled) and ignores it, but any optimizer built on these parameters
    # later would apply it: the trap of regularizers outliving their optimizer. Leave none behind.
    for group in groups:
        for param in group["params"]:
            param.regularizer = None


def _forward_with_live_stand_ins(layer, *args, **kwargs):
    """Run a half-frozen BatchNorm with a detached, grad-enabled copy of its frozen parameter, so that Paddle's
    kernel computes the trainable parameter's gradient; the frozen Parameter itself gets no gradient, ever."""
    saved = dict(layer._parameters)
    for name in ("weight", "bias"):
        param = saved.get(name)
        if param is not None and param.stop_gradient:
            stand_in = param.detach()
            stand_in.stop_gradient = False
            layer._parameters[name] = stand_in
    try:
        return type(layer).forward(layer, *args, **kwargs)
    finally:
        layer._parameters.update(saved)


ADAPTER = PaddleAdapter()


# --- distributed (issue 10: paddle.DataParallel, ranks, collectives) ------------------------------------------------


def _averaging_hook(world: int):
    def average(grad):
        grad = grad.clone()
        paddle.distributed.all_reduce(grad)
        return grad / world

    return average


if not hasattr(nn.SyncBatchNorm.convert_sync_batchnorm, "__wrapped__"):
    _converter = staticmethod(relock_after(ADAPTER, nn.SyncBatchNorm.convert_sync_batchnorm))
    nn.SyncBatchNorm.convert_sync_batchnorm = _converter  # type: ignore[method-assign]

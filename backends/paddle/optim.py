"""Paddle optimizers: a group's ``learning_rate`` is a multiplier of the optimizer's global rate (or its one LR
scheduler), and every group's weight decay is set explicitly. One global schedule multiplies every group's rate,
so a group added later follows it with nothing to extend."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import paddle

from ..contract import Adapter, Module, Optimizer, Tensor
from ...core.errors import XFreezeError


class PaddleOptim(Adapter):
    """paddle.optimizer optimizers over xfreeze's groups, their state, and the global LR scheduler."""

    def build_optimizer(self, config: Any, groups: list[dict[str, Any]], lr: Any) -> Optimizer:
        O = paddle.optimizer
        params: list[Any] = [_group(config, g, g["lr_scale"]) for g in groups]  # Paddle's group dicts, untyped
        if config.name == "sgd":  # Paddle's SGD has no momentum; Momentum(momentum=0) is plain SGD
            return O.Momentum(
                learning_rate=lr,
                momentum=config.momentum,
                use_nesterov=config.nesterov,
                parameters=params,
                weight_decay=0.0,
            )
        if config.name == "adam":
            return O.Adam(
                learning_rate=lr, beta1=config.betas[0], beta2=config.betas[1], epsilon=config.eps, parameters=params
            )
        opt = O.AdamW(
            learning_rate=lr,
            beta1=config.betas[0],
            beta2=config.betas[1],
            epsilon=config.eps,
            parameters=params,
            weight_decay=config.weight_decay,
        )
        _no_coupled_decay(params)
        return opt

    def build_optimizer_from(self, factory: Callable, config: Any, groups: list[dict], lr: Any, kwargs: dict) -> Any:
        """Any Paddle optimizer class/factory: group ``learning_rate`` is a multiplier of the global rate, which
        every Paddle optimizer applies per parameter (``optimize_attr``); decay is the group's own."""
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

    def optimizer_defaults(self, opt: Optimizer) -> dict | None:
        return None  # a Paddle optimizer built by hand over a parameter list cannot grow groups

    def is_optimizer(self, obj: Any) -> bool:
        return isinstance(obj, paddle.optimizer.Optimizer)

    def group_rows(self, opt: Optimizer) -> list[tuple[list[int], float, float]]:
        """(param ids, absolute lr, weight decay) per group; a hand-built optimizer is one group."""
        groups = opt._param_groups
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        return [
            ([id(p) for p in g["params"]], opt.get_lr() * g.get("learning_rate", 1.0), _decay_of(opt, g))
            for g in groups
        ]

    def has_optimizer_state(self, opt: Optimizer, param: Tensor) -> bool:
        return any(param.name in accumulators for accumulators in opt._accumulators.values())

    # --- growing: a stage adds a group; the global scheduler drives it -------------------------------------
    def scheduler_base_lr(self, lr: Any) -> float | None:
        """The nominal rate: the one the user named (OneCycleLR's peak, LinearWarmup's rate after warm-up, whose
        ``base_lr`` is its start, often 0; PiecewiseDecay's first value), as the torch adapter reads a schedule
        (backends/torch/optim.py)."""
        L = paddle.optimizer.lr
        if isinstance(lr, L.OneCycleLR):
            return float(lr._lr_config[1])
        if isinstance(lr, L.LinearWarmup):
            return float(lr.end_lr)
        if isinstance(lr, L.PiecewiseDecay):  # its base_lr is a placeholder (0.1); the first value is the rate
            return float(lr.values[0])
        return float(lr.base_lr) if isinstance(lr, L.LRScheduler) else None

    def is_scheduler(self, obj: Any) -> bool:
        return isinstance(obj, paddle.optimizer.lr.LRScheduler)

    def add_param_group(self, opt: Optimizer, group: dict, scheduler: Any = None) -> None:
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

    def adopt_scheduler(self, opt: Optimizer, scheduler: Any) -> str | None:
        if scheduler is not getattr(opt, "_learning_rate", None):
            return f"{type(scheduler).__name__} is not the optimizer's learning rate (Paddle schedules live in it)"
        return None

    # --- state (StagedUnfreeze checkpoints): keyed by structured names --------------------------------------
    def optimizer_state(self, opt: Optimizer, model: Module) -> dict:
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

    def load_optimizer_state(self, opt: Optimizer, model: Module, state: dict) -> None:
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

    def optimizer_state_problem(self, opt: Optimizer, model: Module, state: Any) -> str | None:
        if not isinstance(state, dict):
            return f"expected a dict of accumulators, got {type(state).__name__}"
        names = {n for n, _ in model.named_parameters()}
        unknown = sorted({k.split("|", 1)[0] for k in state if "|" in k} - names)
        if unknown:
            return f"it names parameters this model lacks: {unknown[:3]}"
        accumulators: dict = {}
        for key in state:
            if "|" in key:
                name, suffix = key.split("|", 1)
                accumulators.setdefault(name, set()).add(suffix)
        if len({frozenset(v) for v in accumulators.values()}) > 1:  # every parameter has the same accumulators
            return "some parameters lack accumulators that others have: the state is incomplete"
        return None

    def saved_param_count(self, state: Any) -> int | None:
        return None  # Paddle keys state by parameter, not by group: nothing to count

    def scheduler_state(self, scheduler: Any) -> dict:
        return dict(scheduler.state_dict())

    def load_scheduler_state(self, scheduler: Any, state: dict) -> None:
        scheduler.set_state_dict(state)

    def register_state_hooks(self, opt: Optimizer, save: Callable, load: Callable) -> None:
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

    def zero_grads(self, opt: Optimizer) -> None:
        opt.clear_grad(set_to_zero=False)

    def group_nominal_lrs(self, opt: Optimizer) -> list[float]:
        """The group's multiplier times the base rate: a float, or the LRScheduler's nominal rate."""
        lr = opt._learning_rate
        base = self.scheduler_base_lr(lr) if self.is_scheduler(lr) else float(lr)
        groups = opt._param_groups
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        return [float(base or 0.0) * float(g.get("learning_rate", 1.0)) for g in groups]


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

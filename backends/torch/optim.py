"""torch optimizers, and LR schedulers that grow with their optimizer.

Each group xfreeze builds keeps its own absolute ``lr`` and ``weight_decay`` (torch's own group semantics).

A torch scheduler sizes its per-group state when it is built (``base_lrs``, ``lr_lambdas``, CyclicLR's
``max_lrs``, OneCycleLR's per-group keys, ReduceLROnPlateau's ``min_lrs``), so a group added later is ignored, or
crashes the next ``step()`` (pytorch #79888, #104361). :func:`grow` gives a group a stage adds the state it would
have had in the optimizer from the start, with the stage's rate as its *nominal* rate: the rate the user names
when building the schedule (``max_lr`` for OneCycleLR, ``base_lr`` for CyclicLR, the optimizer's rate otherwise),
and sets its current rate to what the schedule gives such a group now. Paddle needs none of this: one global
schedule multiplies every group's rate there.
"""

from __future__ import annotations

import copy
from bisect import bisect_right
from typing import Any, Callable

import torch
from torch.optim import lr_scheduler as S

from ..contract import Adapter, Module, Optimizer, Tensor
from ...core.errors import XFreezeError


class TorchOptim(Adapter):
    """torch.optim optimizers over xfreeze's groups, their state, and schedulers that grow."""

    def build_optimizer(self, config: Any, groups: list[dict[str, Any]], lr: Any) -> Optimizer:
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

    def build_optimizer_from(self, factory: Callable, config: Any, groups: list[dict], lr: Any, kwargs: dict) -> Any:
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

    def optimizer_defaults(self, opt: Optimizer) -> dict | None:
        defaults = getattr(opt, "defaults", None)
        if not isinstance(defaults, dict) or "lr" not in defaults:
            return None
        # the decay the optimizer gives its decayed parameters, read from its groups: the Hugging Face Trainer
        # passes args.weight_decay in groups, so defaults hold AdamW's own 0.01 whatever the user set
        decays = [g["weight_decay"] for g in opt.param_groups if isinstance(g.get("weight_decay"), (int, float))]
        return {**defaults, "weight_decay": max(decays, default=defaults.get("weight_decay", 0.0))}

    def is_optimizer(self, obj: Any) -> bool:
        return isinstance(obj, torch.optim.Optimizer)

    def is_scheduler(self, obj: Any) -> bool:
        return isinstance(obj, (S.LRScheduler, S.ReduceLROnPlateau))

    def group_rows(self, opt: Optimizer) -> list[tuple[list[int], float, float]]:
        return [([id(p) for p in g["params"]], g["lr"], g.get("weight_decay", 0.0)) for g in opt.param_groups]

    def has_optimizer_state(self, opt: Optimizer, param: Tensor) -> bool:
        return bool(opt.state.get(param))

    # --- growing: a stage adds a group, the scheduler follows ------------------------------------------------
    def add_param_group(self, opt: Optimizer, group: dict, scheduler: Any = None) -> None:
        opt.add_param_group(_group(group))
        if scheduler is not None:
            grow(scheduler, opt, opt.param_groups[-1])

    def adopt_scheduler(self, opt: Optimizer, scheduler: Any) -> str | None:
        reason = problem(scheduler, opt)
        if reason is None:
            prepare(scheduler, opt)
        return reason

    # --- state (StagedUnfreeze checkpoints) --------------------------------------------------------------------
    def optimizer_state(self, opt: Optimizer, model: Module) -> dict:
        # a snapshot (torch returns live tensors); keyed by position in param_groups, which xfreeze rebuilds alike
        return copy.deepcopy(opt.state_dict())

    def load_optimizer_state(self, opt: Optimizer, model: Module, state: dict) -> None:
        opt.load_state_dict(state)

    def optimizer_state_problem(self, opt: Optimizer, model: Module, state: Any) -> str | None:
        if (
            not isinstance(state, dict)
            or not isinstance(state.get("param_groups"), list)
            or not isinstance(state.get("state"), dict)
        ):
            return "expected a torch optimizer state_dict with 'state' and 'param_groups'"
        if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in state["param_groups"]):
            return "a param_groups entry has no 'params' list"
        return None

    def saved_param_count(self, state: Any) -> int | None:
        return sum(len(g["params"]) for g in state["param_groups"])

    def scheduler_state(self, scheduler: Any) -> dict:
        return copy.deepcopy(scheduler.state_dict())

    def load_scheduler_state(self, scheduler: Any, state: dict) -> None:
        scheduler.load_state_dict(state)

    def register_state_hooks(self, opt: Optimizer, save: Callable, load: Callable) -> None:
        """``save(state_dict)`` adds to what ``opt.state_dict()`` returns; ``load(state_dict)`` runs first in
        ``opt.load_state_dict`` (before torch checks the groups) and returns the state to load."""
        opt.register_state_dict_post_hook(lambda o, state: save(state))
        opt.register_load_state_dict_pre_hook(lambda o, state: load(state))

    def zero_grads(self, opt: Optimizer) -> None:
        opt.zero_grad(set_to_none=True)

    def group_nominal_lrs(self, opt: Optimizer) -> list[float]:
        """OneCycleLR's ``max_lr``, else the ``initial_lr`` every other scheduler scales, else the group's ``lr``."""
        return [float(g.get("max_lr", g.get("initial_lr", g["lr"]))) for g in opt.param_groups]


def _group(group: dict) -> dict:
    return {
        "params": list(group["params"]),
        "lr": group["lr"],
        "weight_decay": group["weight_decay"],
        "xfreeze_names": list(group["names"]),
    }


# --- schedulers that grow (issue: pytorch #79888, #104361) -------------------------------------------------------
COMPOSITES = (S.SequentialLR, S.ChainedScheduler)
# momentum-cycling schedulers write these group keys on every step; a new group starts with the first group's
_MOMENTUM_KEYS = ("momentum", "betas", "base_momentum", "max_momentum")


def leaves(scheduler) -> list:
    """The schedulers that hold per-group state (a SequentialLR / ChainedScheduler's children, recursively)."""
    if isinstance(scheduler, COMPOSITES):
        return [leaf for child in scheduler._schedulers for leaf in leaves(child)]
    return [scheduler]


def problem(scheduler, optimizer) -> str | None:
    """Why ``scheduler`` cannot drive groups added to ``optimizer`` later, or None."""
    for leaf in leaves(scheduler):
        if getattr(leaf, "optimizer", None) is not optimizer:
            return f"{type(leaf).__name__} drives another optimizer than the one given"
        if not isinstance(leaf, S.ReduceLROnPlateau) and not isinstance(getattr(leaf, "base_lrs", None), list):
            return f"{type(leaf).__name__} keeps no per-group base_lrs, so a group added later would not follow it"
    return None


def prepare(scheduler, optimizer) -> None:
    """Before any group is added: record each group's nominal rate where the scheduler itself does not
    (ReduceLROnPlateau keeps none), so that later groups can follow the reductions made so far."""
    if any(isinstance(leaf, S.ReduceLROnPlateau) for leaf in leaves(scheduler)):
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])


def grow(scheduler, optimizer, new: dict) -> None:
    """``new`` (already in ``optimizer.param_groups``, ``new["lr"]`` its nominal rate) joins every per-group list
    of ``scheduler``; its rate becomes the one the schedule gives it now."""
    first, nominal = optimizer.param_groups[0], new["lr"]
    for leaf in leaves(scheduler):
        _add(leaf, first, new, nominal / _nominal(leaf, first))
    new["lr"] = _now(scheduler, first, new, nominal)
    for s in [scheduler, *leaves(scheduler)]:
        if isinstance(getattr(s, "_last_lr", None), list):
            s._last_lr.append(new["lr"])


def _nominal(leaf, first: dict) -> float:
    """The first group's nominal rate under ``leaf``."""
    if isinstance(leaf, S.OneCycleLR):
        return first["max_lr"]
    if isinstance(leaf, S.ReduceLROnPlateau):
        return first["initial_lr"]
    return leaf.base_lrs[0]


def _add(leaf, first: dict, new: dict, ratio: float) -> None:
    if isinstance(leaf, S.ReduceLROnPlateau):
        new.setdefault("initial_lr", new["lr"])
        if leaf.default_min_lr is None:  # a per-group list: the new group gets the first group's floor
            leaf.min_lrs.append(leaf.min_lrs[0])
        return
    if isinstance(leaf, S.OneCycleLR):
        for key in ("initial_lr", "max_lr", "min_lr"):
            new[key] = first[key] * ratio
    else:
        new.setdefault("initial_lr", new["lr"])
    leaf.base_lrs.append(new["initial_lr"])
    if isinstance(getattr(leaf, "lr_lambdas", None), list):  # LambdaLR / MultiplicativeLR: one lambda per group
        leaf.lr_lambdas.append(leaf.lr_lambdas[0])
    if isinstance(leaf, S.CyclicLR):
        leaf.max_lrs.append(leaf.max_lrs[0] * ratio)
        if leaf.cycle_momentum:
            leaf.base_momentums.append(leaf.base_momentums[0])
            leaf.max_momentums.append(leaf.max_momentums[0])
    if getattr(leaf, "cycle_momentum", False):
        new.update({k: first[k] for k in _MOMENTUM_KEYS if k in first})


def _now(scheduler, first: dict, new: dict, nominal: float) -> float:
    """The rate the schedule gives the new group at its current position."""
    if isinstance(scheduler, S.SequentialLR):  # the child in force decides
        active = scheduler._schedulers[bisect_right(scheduler._milestones, scheduler.last_epoch)]
        return _now(active, first, new, nominal)
    if isinstance(scheduler, S.ReduceLROnPlateau):  # the reductions so far, floored like the others
        return max(nominal * first["lr"] / first["initial_lr"], scheduler.min_lrs[-1])
    if isinstance(scheduler, S.LambdaLR):
        return nominal * scheduler.lr_lambdas[-1](scheduler.last_epoch)
    if hasattr(scheduler, "_get_closed_form_lr") and not isinstance(scheduler, COMPOSITES):
        return float(scheduler._get_closed_form_lr()[-1])
    if isinstance(scheduler, (S.OneCycleLR, S.CyclicLR, S.CosineAnnealingWarmRestarts)):  # closed-form get_lr
        with S._enable_get_lr_call(scheduler):
            return float(scheduler.get_lr()[-1])
    # multiplicative schedules without a closed form (MultiplicativeLR, ChainedScheduler of such): the first
    # group's factor so far
    return nominal * first["lr"] / first["initial_lr"]

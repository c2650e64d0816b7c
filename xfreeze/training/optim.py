"""Parameter groups and optimizers over the trainable parameters only, with absolute learning rates everywhere.

Groups are framework-neutral dicts: ``params`` (tensors), ``names``, ``lr`` (absolute), ``lr_scale`` (relative to
the base ``lr``) and ``weight_decay``. The adapter turns them into the framework's own groups; in Paddle a group's
``learning_rate`` is a multiplier of the global rate, so xfreeze passes ``lr_scale`` there.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from .check import OPTIMIZER_PLAN, record_rates, remember
from ..core.dispatch import adapter_for
from ..core.errors import XFreezeError, check_choice
from ..model.kinds import warn_decayed_norms
from ..model.layers import layer_map
from ..model.select import compile_patterns, select_mask
from ..model.view import batched, view_of
from .conventions import decay_exclusions

DEFAULT_NO_DECAY = ("*.bias", "type:norm")
OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class OptimizerConfig:
    """Everything but the groups: what xfreeze needs to build or extend an optimizer the same way later."""

    name: str
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.0
    nesterov: bool = False
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    no_decay: tuple = DEFAULT_NO_DECAY
    extra: dict = field(default_factory=dict)
    lr_mult: dict | None = None  # kept so that groups added later (StagedUnfreeze) are scaled alike
    layer_decay: float | None = None
    no_decay_1d: bool = False
    model_no_decay: bool = True


@batched
def param_groups(
    model,
    *,
    lr: float,
    weight_decay: float = 0.0,
    lr_mult: dict | None = None,
    no_decay=DEFAULT_NO_DECAY,
    layer_decay: float | None = None,
    only=None,
    no_decay_1d: bool = False,
    model_no_decay: bool = True,
    backend: str | None = None,
) -> list[dict]:
    """Parameter groups over the trainable parameters, with absolute learning rates.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        lr: base learning rate (> 0).
        weight_decay: weight decay of the parameters not matched by ``no_decay`` (>= 0).
        lr_mult: ``{pattern: multiplier}``; a parameter matched by several patterns gets their product.
        no_decay: patterns whose parameters get weight decay 0 (default: biases and norm layers).
        layer_decay: layer-wise learning-rate decay in (0, 1]: block k of n (encoder layers, ResNet stages) trains
            at ``lr * layer_decay ** (n + 1 - k)``; stem/embeddings at ``k = 0``, the head at ``k = n + 1``.
        only: parameter names to restrict the groups to (default: every trainable parameter).
        no_decay_1d: timm's rule: every parameter with at most one dimension (biases, norm gains, LayerScale
            gammas) gets weight decay 0 as well (default False: ``no_decay`` alone decides).
        model_no_decay: honour the model's own lists (timm's convention), on the model and on any submodule that
            defines them: ``no_weight_decay()`` (parameter names relative to that module, ``fnmatch`` wildcards)
            and ``no_weight_decay_keywords()`` (substrings) get weight decay 0 (default True; timm ViT:
            ``pos_embed``, ``cls_token``, ``dist_token``).
        backend: force ``"torch"`` or ``"paddle"``.

    Returns:
        list[dict]: groups with ``params``, ``names``, ``lr``, ``lr_scale``, ``weight_decay``; parameters with the
        same learning rate and weight decay share a group, groups in model order of their first parameter.

    Raises:
        XFreezeError: a non-positive ``lr``, negative ``weight_decay``, ``layer_decay`` outside (0, 1], a
            non-positive multiplier, a pattern that matches nothing, a model whose ``no_weight_decay()`` fails or
            returns no names, or no trainable parameters.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> [(g["names"], g["lr"]) for g in xfreeze.param_groups(model, lr=0.1, lr_mult={"1.*": 10})]
        [(['0.weight', '0.bias'], 0.1), (['1.weight', '1.bias'], 1.0)]
    """
    adapter = adapter_for(model, backend)
    _check_positive("lr", lr)
    _check_number("weight_decay", weight_decay, minimum=0.0)
    check_group_options(lr_mult, no_decay, layer_decay)
    _check_flags(no_decay_1d=no_decay_1d, model_no_decay=model_no_decay)
    lr, weight_decay = float(lr), float(weight_decay)  # an int or a numpy float means the same number
    view = view_of(model, adapter.name)
    chosen = [int(i) for i in np.flatnonzero(view.trainable())]
    if only is not None:
        wanted = set(only)
        chosen = [i for i in chosen if view.names[i] in wanted]
    if not chosen:
        raise XFreezeError(
            f"{view.label} has no trainable parameters to optimize; unfreeze some first (xfreeze.unfreeze(model, ...))"
        )
    scales = lr_scales(view, chosen, lr_mult or {}, layer_decay)
    decayed = _decay_flags(view, no_decay, no_decay_1d, model_no_decay)
    return _group(view, chosen, scales, decayed, lr, weight_decay)


@batched
def optimizer(
    model,
    name,
    *,
    lr,
    weight_decay: float | None = None,
    momentum: float | None = None,
    nesterov: bool | None = None,
    betas=None,
    eps: float | None = None,
    lr_mult: dict | None = None,
    no_decay=DEFAULT_NO_DECAY,
    layer_decay: float | None = None,
    no_decay_1d: bool = False,
    model_no_decay: bool = True,
    backend: str | None = None,
    **kwargs,
):
    """The framework's own optimizer over the trainable parameters, grouped by :func:`param_groups`.

    The same arguments give the same updates in torch and Paddle: learning rates are absolute in both (Paddle's
    per-group rate is a multiplier of the global one; xfreeze converts), ``sgd`` with momentum is torch ``SGD`` /
    ``paddle.optimizer.Momentum``, ``adam`` has L2 weight decay added to the gradient and ``adamw`` decoupled decay
    in both. Every parameter's Paddle-side decay and rate are set explicitly, so what an earlier Paddle optimizer
    wrote onto the parameters (``regularizer``, ``optimize_attr``) does not leak in.

    Any other optimizer works too: pass its class (``torch.optim.RMSprop``, ``paddle.optimizer.Lamb``) or a
    factory with the class's signature (``functools.partial(torch.optim.SGD, momentum=0.9)``), and its own
    options as keywords. Groups keep absolute rates there as well (torch: each group's ``lr``; Paddle: a
    per-group multiplier of the global rate, which every Paddle optimizer applies through the parameter's
    ``optimize_attr``). An optimizer that cannot honour per-group rates and decays (torch ``LBFGS``, one
    without weight decay when ``weight_decay`` is set) is refused with an ``XFreezeError``.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        name: ``"sgd"``, ``"adam"`` or ``"adamw"``; or an optimizer class / factory of the model's framework.
        lr: base learning rate (a finite number > 0: an int or numpy float is taken as a float, a bool is
            refused); in Paddle an ``LRScheduler`` is accepted too (its nominal rate is the base:
            ``base_lr``, OneCycleLR's peak, LinearWarmup's rate after warm-up, PiecewiseDecay's first value).
        weight_decay: the decay of the parameters ``no_decay`` does not match (>= 0). Default: 0 for the three
            names; for a class or factory its own default (torch ``AdamW``: 0.01; a ``functools.partial``'s value).
        lr_mult, no_decay, layer_decay, no_decay_1d, model_no_decay: as :func:`param_groups` (kept for the groups
            a ``StagedUnfreeze`` adds later).
        momentum, nesterov: for ``sgd`` (momentum in [0, 1); default 0 and False).
        betas, eps: for ``adam`` / ``adamw`` (default (0.9, 0.999) and 1e-8). Given to a name that has no such
            option, each is refused; with a class or factory, each one given is passed on as the class's own
            keyword (``xfreeze.optimizer(model, torch.optim.SGD, lr=0.1, momentum=0.9)``).
        backend: force ``"torch"`` or ``"paddle"``.
        **kwargs: options of an optimizer given as a class or factory (``alpha=0.9`` for RMSprop).

    Returns:
        ``torch.optim.Optimizer`` or ``paddle.optimizer.Optimizer``.

    Raises:
        XFreezeError: an unknown optimizer name or a bad value, before anything is built.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> _ = xfreeze.freeze(model, "0")
        >>> opt = xfreeze.optimizer(model, "sgd", lr=0.1, momentum=0.9)
        >>> sum(len(g["params"]) for g in opt.param_groups)
        2
    """
    adapter = adapter_for(model, backend)
    check_group_options(lr_mult, no_decay, layer_decay)
    _check_flags(no_decay_1d=no_decay_1d, model_no_decay=model_no_decay)
    factory, config = _configure(adapter, name, lr, weight_decay, momentum, nesterov, betas, eps, no_decay, kwargs)
    config = dataclasses.replace(
        config,
        lr_mult=dict(lr_mult) if lr_mult else None,
        layer_decay=None if layer_decay is None else float(layer_decay),
        no_decay_1d=no_decay_1d,
        model_no_decay=model_no_decay,
    )
    groups = param_groups(
        model,
        lr=config.lr,
        weight_decay=config.weight_decay,
        lr_mult=lr_mult,
        no_decay=no_decay,
        layer_decay=layer_decay,
        no_decay_1d=no_decay_1d,
        model_no_decay=model_no_decay,
        backend=adapter.name,
    )
    rate = config.lr if _is_number(lr) else lr  # Paddle refuses an int rate: hand it the float
    if factory is None:
        opt = adapter.build_optimizer(config, groups, rate)
    else:
        opt = adapter.build_optimizer_from(factory, config, groups, rate, config.extra)
    opt._xfreeze_config = config
    record_rates(opt, {n: g["lr"] for g in groups for n in g["names"]}, OPTIMIZER_PLAN)
    remember(model, opt)
    return opt


def check_arguments(
    model,
    name,
    *,
    lr,
    lr_mult: dict | None = None,
    no_decay=DEFAULT_NO_DECAY,
    layer_decay: float | None = None,
    no_decay_1d: bool = False,
    model_no_decay: bool = True,
    backend: str | None = None,
    **options,
) -> None:
    """What :func:`optimizer` checks that does not depend on what trains (the name, every number, the patterns), for
    a caller that changes the model first and must not on bad input: the integrations' factories call this before
    they apply stage 0. ``options``: the rest of :func:`optimizer`'s keywords."""
    adapter = adapter_for(model, backend)
    check_group_options(lr_mult, no_decay, layer_decay)
    _check_flags(no_decay_1d=no_decay_1d, model_no_decay=model_no_decay)
    decay, momentum, nesterov, betas, eps = (
        options.pop(k, None) for k in ("weight_decay", "momentum", "nesterov", "betas", "eps")
    )
    _configure(adapter, name, lr, decay, momentum, nesterov, betas, eps, no_decay, options)
    view = view_of(model, adapter.name)
    if model_no_decay:
        decay_exclusions(view)  # the model's own no_weight_decay() lists must be readable
    patterns = no_decay_patterns(no_decay)
    for pattern in [*(lr_mult or {}), *(patterns if patterns != DEFAULT_NO_DECAY else ())]:
        compiled = compile_patterns([pattern])
        if not compiled[0].hits(view).any():
            select_mask(view, compiled)  # raises the no-match error with suggestions


# the options each of xfreeze's own names takes (a class or factory takes its own, passed on)
NAME_OPTIONS = {"sgd": ("momentum", "nesterov"), "adam": ("betas", "eps"), "adamw": ("betas", "eps")}
NAME_DEFAULTS = {"momentum": 0.0, "nesterov": False, "betas": (0.9, 0.999), "eps": 1e-8}


def _configure(adapter, name, lr, weight_decay, momentum, nesterov, betas, eps, no_decay, kwargs):
    """``(factory or None, OptimizerConfig)`` once the name and every option are checked (group options aside)."""
    given = {
        k: v
        for k, v in (("momentum", momentum), ("nesterov", nesterov), ("betas", betas), ("eps", eps))
        if v is not None
    }
    factory = None if isinstance(name, str) else name
    if factory is None:
        check_choice("name", name, OPTIMIZERS)
        if kwargs:
            raise XFreezeError(
                f"unexpected options {sorted(kwargs)} for name={name!r}; extra options are for an "
                "optimizer given as a class, e.g. xfreeze.optimizer(model, torch.optim.RMSprop, ...)"
            )
        foreign = [k for k in given if k not in NAME_OPTIONS[name]]
        if foreign:
            raise XFreezeError(
                f"{foreign[0]}= is not an option of name={name!r} (it takes {', '.join(NAME_OPTIONS[name])}). "
                f"Received: {foreign[0]}={given[foreign[0]]!r}"
            )
        options = {**NAME_DEFAULTS, **given}
        _check_options(options["momentum"], options["nesterov"], options["betas"], options["eps"])
        if options["nesterov"] and options["momentum"] <= 0:
            raise XFreezeError("nesterov=True needs momentum > 0")
    elif not callable(factory):
        raise XFreezeError(f"name must be one of {OPTIMIZERS} or an optimizer class/factory. Received: {name!r}")
    else:
        options, kwargs = dict(NAME_DEFAULTS), {**given, **kwargs}  # the class's own options, passed on
    base_lr = _base_lr(adapter, lr)
    weight_decay = _default_decay(factory) if weight_decay is None else weight_decay
    _check_number("weight_decay", weight_decay, minimum=0.0)
    patterns = no_decay_patterns(no_decay)
    label = name if factory is None else getattr(factory, "__name__", type(factory).__name__)
    config = OptimizerConfig(  # numbers as floats: Paddle refuses an int rate or momentum
        label,
        base_lr,
        float(weight_decay),
        float(options["momentum"]),
        options["nesterov"],
        tuple(float(b) for b in options["betas"]),
        float(options["eps"]),
        patterns,
        extra=dict(kwargs),
    )
    return factory, config


def no_decay_patterns(no_decay) -> tuple:
    """``no_decay`` as a tuple of patterns: one string is one pattern (not one per character); None is none."""
    return (no_decay,) if isinstance(no_decay, str) else tuple(no_decay or ())


def check_group_options(lr_mult, no_decay, layer_decay) -> None:
    """Types and ranges of the options that shape groups (patterns are checked against a model later)."""
    if lr_mult is not None and not isinstance(lr_mult, dict):
        raise XFreezeError(f"lr_mult must be a dict {{pattern: multiplier}}. Received: lr_mult={lr_mult!r}")
    for pattern, mult in (lr_mult or {}).items():
        _check_positive(f"lr_mult[{pattern!r}]", mult)
    if (
        no_decay is not None
        and not isinstance(no_decay, str)
        and not (isinstance(no_decay, (list, tuple)) and all(isinstance(p, str) for p in no_decay))
    ):
        raise XFreezeError(f"no_decay must be a pattern or a list of patterns. Received: no_decay={no_decay!r}")
    if layer_decay is not None:
        _check_number("layer_decay", layer_decay)
        if not 0.0 < layer_decay <= 1.0:
            raise XFreezeError(f"layer_decay must be in (0, 1]. Received: layer_decay={layer_decay!r}")


def _default_decay(factory) -> float:
    """The weight decay an optimizer class or factory applies when not told (torch AdamW: 0.01), so that passing
    the class keeps its meaning; 0 for xfreeze's own names and for a signature that names none."""
    if factory is None:
        return 0.0
    try:
        option = inspect.signature(factory).parameters.get("weight_decay")
    except (TypeError, ValueError):  # a builtin or C-implemented factory without a readable signature
        return 0.0
    default = getattr(option, "default", None)
    return float(default) if isinstance(default, numbers.Real) and not isinstance(default, bool) else 0.0


def _check_options(momentum, nesterov, betas, eps) -> None:
    """The options of xfreeze's own names, so that nothing is built from a bad value."""
    _check_number("momentum", momentum, minimum=0.0)
    if not momentum < 1.0:
        raise XFreezeError(f"momentum must be in [0, 1). Received: momentum={momentum!r}")
    if not isinstance(nesterov, bool):
        raise XFreezeError(f"nesterov must be a bool. Received: nesterov={nesterov!r}")
    if (
        not isinstance(betas, (tuple, list))
        or len(betas) != 2
        or not all(isinstance(b, numbers.Real) and not isinstance(b, bool) and 0.0 <= float(b) < 1.0 for b in betas)
    ):
        raise XFreezeError(f"betas must be two numbers in [0, 1). Received: betas={betas!r}")
    _check_number("eps", eps, minimum=0.0)


def _is_number(value) -> bool:
    """A real number that is not a bool (numpy floats and ints count; ``True`` is no learning rate)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_flags(**flags) -> None:
    for flag, value in flags.items():
        if not isinstance(value, bool):
            raise XFreezeError(f"{flag} must be True or False. Received: {flag}={value!r}")


def _base_lr(adapter, lr) -> float:
    if isinstance(lr, (bool, np.bool_)):
        raise XFreezeError(f"lr must be a number > 0, not a bool. Received: lr={lr!r}")
    if _is_number(lr):
        _check_positive("lr", lr)
        return float(lr)
    base = adapter.scheduler_base_lr(lr)
    if base is None:
        raise XFreezeError(f"lr must be a number > 0 (in Paddle, an LRScheduler too). Received: lr={lr!r}")
    _check_positive("lr (the scheduler's nominal rate)", base)
    return base


def lr_scales(view, chosen: list, lr_mult: dict, layer_decay) -> dict[int, float]:
    """Parameter index -> learning-rate multiplier, for the ``chosen`` parameters (what ``lr_mult`` and
    ``layer_decay`` make of the base rate)."""
    scales = {i: 1.0 for i in chosen}
    for pattern, mult in lr_mult.items():  # multipliers checked by check_group_options
        hits = select_mask(view, compile_patterns([pattern]))  # raises the no-match error with suggestions
        for i in chosen:
            if hits[i]:
                scales[i] *= float(mult)
    if layer_decay is not None:
        layers = layer_map(view)
        for i in chosen:
            scales[i] *= layers.scale(view.names[i], float(layer_decay))
    return scales


def _decay_flags(view, no_decay, no_decay_1d: bool = False, model_no_decay: bool = True) -> np.ndarray:
    """Per parameter of the view: whether it gets weight decay."""
    patterns = no_decay_patterns(no_decay)
    excluded = np.zeros(len(view.names), dtype=bool)
    for pattern in patterns:
        compiled = compile_patterns([pattern])
        hits = compiled[0].hits(view)
        if not hits.any() and patterns != DEFAULT_NO_DECAY:
            select_mask(view, compiled)  # raises the no-match error with suggestions
        if not compiled[0].negate:
            excluded |= hits
    if model_no_decay:
        excluded |= decay_exclusions(view)
    if no_decay_1d:
        excluded |= np.fromiter((len(s) <= 1 for s in view.shapes), dtype=bool, count=len(view.names))
    # never decay an unrecognised norm quietly (issue 11)
    warn_decayed_norms(view, {n for n, out in zip(view.names, excluded) if out})
    return ~excluded


def _group(view, chosen: list, scales: dict, decayed, lr, weight_decay) -> list[dict]:
    groups: dict[tuple, dict] = {}
    for i in chosen:
        wd = weight_decay if decayed[i] else 0.0
        key = (scales[i], wd)
        group = groups.setdefault(
            key, {"params": [], "names": [], "lr": lr * scales[i], "lr_scale": scales[i], "weight_decay": wd}
        )
        group["params"].append(view.params[i])
        group["names"].append(view.names[i])
    return list(groups.values())


def _check_number(argument: str, value, minimum: float | None = None) -> None:
    if not _is_number(value):
        raise XFreezeError(f"{argument} must be a number. Received: {argument}={value!r}")
    if not math.isfinite(value):
        raise XFreezeError(f"{argument} must be a finite number. Received: {argument}={value!r}")
    if minimum is not None and value < minimum:
        raise XFreezeError(f"{argument} must be >= {minimum}. Received: {argument}={value!r}")


def _check_positive(argument: str, value) -> None:
    _check_number(argument, value)
    if not value > 0:
        raise XFreezeError(f"{argument} must be > 0. Received: {argument}={value!r}")

"""The adapter contract's shared pieces: the types it speaks in, and the optional groups with their defaults.

:class:`~xfreeze.backends.contract.Adapter` mixes these in. Each group here stands alone (it calls nothing an
adapter must write), so a framework gets it for free and overrides what it can do better: distributed training
(:class:`SingleProcess`: one process, no wrapper, no sharding), growing optimizers and schedulers
(:class:`OptimizerExtras`), the framework's own checkpoint files (:class:`OwnFiles`) and named models for the
command line (:class:`NamedModels`). An optional method that has no sensible default raises ``NotImplementedError``
naming itself and the feature that needs it.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple, NoReturn

from ..core.tensors import Raw

__all__ = ["Raw"]

# Native framework objects: the core never looks inside them, so the contract types them as Any.
Module = Any  # a model or layer: torch.nn.Module, paddle.nn.Layer
Tensor = Any  # a tensor or parameter of the framework
Optimizer = Any  # torch.optim.Optimizer, paddle.optimizer.Optimizer
Scheduler = Any  # an LR scheduler of the framework


class Registries(NamedTuple):
    """Where a module registers what it owns: the framework's own dicts, live (so a swap is seen)."""

    parameters: dict[str, Any]  # its own parameters (Paddle: norm statistics too)
    buffers: dict[str, Any]  # its own buffers
    children: dict[str, Any]  # its direct submodules, in registration order
    statistics: dict[str, Any]  # where its running statistics sit (torch: buffers; Paddle: parameters)
    hooks: dict[Any, Callable]  # its forward pre-hooks (a locked norm holds :func:`keep_eval` there)


@dataclass
class Walk:
    """What an adapter's ``walk(model)`` returns: raw structure, in model order (parents before children)."""

    inner: Module  # the model inside any wrappers
    wrappers: list[str]  # wrapper class names, outermost first
    modules: list[tuple[str, Module]]  # [(clean path, module)], root "" first, wrapper modules left out
    params: list[tuple[int, str, Tensor]]  # [(module index, local name, tensor)], every registration (tied repeat)
    stats: list[tuple[int, str, Tensor, str]]  # [(module index, neutral name, tensor, state-dict local name)]
    token: tuple[int, ...]  # identity of modules and parameters, to tell a stale view


def keep_eval(module: Module, args: Any) -> None:
    """Forward pre-hook of a locked norm layer: it runs as in eval mode whatever ``model.train()`` said."""
    module.training = False


def relock_after(adapter: Any, convert: Callable) -> Callable:
    """Wrap a framework's ``convert_sync_batchnorm``: it builds new norm modules and drops their forward pre-hooks,
    so the norms that were locked are locked again, by path (a frozen BatchNorm stays frozen, and a locked
    SyncBatchNorm never syncs in forward)."""

    def convert_sync_batchnorm(module, *args, **kwargs):
        locked = {path for path, m in adapter.traverse(module) if adapter.is_norm_locked(m)}
        out = convert(module, *args, **kwargs)
        for path, m in adapter.traverse(out):
            if path in locked and not adapter.is_norm_locked(m):
                adapter.lock_norm(m)
        return out

    convert_sync_batchnorm.__wrapped__ = convert  # type: ignore[attr-defined]
    convert_sync_batchnorm.__doc__ = convert.__doc__
    return convert_sync_batchnorm


def owners(child: Any) -> list:
    """Objects that hold ``child`` as a sub-module (child <- sub-module dict <- instance ``__dict__`` <- owner): how
    an adapter finds a live DDP / DataParallel around a model it was given unwrapped (only with a process group)."""
    level, out = [child], []
    for _ in range(3):
        refs = [r for c in level for r in gc.get_referrers(c)]
        out += [r for r in refs if not isinstance(r, (dict, list, tuple))]
        level = [r for r in refs if isinstance(r, dict)]
    return out


def record(walk: tuple, module: Module, own: list, statistics: list, registered: list) -> None:
    """A ``walk_module``'s bookkeeping: ``module`` and its parameters ``own`` / ``statistics`` (as
    ``module_tensors`` gives them) into ``walk`` = ``(modules, params, stats, token)``, its id and the ids of every
    registered tensor (None skipped) into the token."""
    modules, params, stats, token = walk
    index = len(modules)
    modules.append(module)
    params.extend([(index, local, p) for local, p in own])
    stats.extend([(index, neutral, t, native) for neutral, native, t in statistics])
    token.append(id(module))
    token.extend([id(t) for t in registered if t is not None])


def tensors_of(adapter: Any, module: Module) -> tuple[list[tuple[str, Tensor]], list[tuple[str, str, Tensor]]]:
    """``module_tensors(module)`` read through an adapter's ``walk_module`` (an adapter whose walk reads the
    registries directly answers both from the one place)."""
    params: list = []
    stats: list = []
    adapter.walk_module([], params, stats, [], module)
    return [(local, p) for _, local, p in params], [(neutral, native, t) for _, neutral, t, native in stats]


def missing(adapter: object, method: str, feature: str) -> NoReturn:
    """The error of an optional method a framework has not written, naming what needs it."""
    raise NotImplementedError(
        f"{type(adapter).__name__}.{method} is not implemented, and {feature} needs it: override {method} in the "
        "framework's adapter (docs/contract.md says what it must do)"
    )


class SingleProcess:
    """Distributed training (DDP / FSDP / Paddle DataParallel): the defaults describe one process, no wrapper that
    syncs gradients and no sharding, so a framework without distributed support writes none of this."""

    rewrap_can_freeze: ClassVar[bool] = False  # a gradient-syncing wrapper can be rebuilt after a freeze
    freeze_after_wrap_hint: ClassVar[str] = ""  # appended to the refusal of a freeze under a kept wrapper

    def world_size(self) -> int:
        """Processes in the default group (1 without one)."""
        return 1

    def rank(self) -> int:
        """This process's rank (0 without a group)."""
        return 0

    def all_reduce_max(self, values: list[int]) -> list[int]:
        """Element-wise maximum of a list of integers over all ranks."""
        return list(values)

    def all_gather_object(self, obj: Any) -> list:
        """``obj`` from every rank."""
        return [obj]

    def barrier(self) -> None:
        """Wait for every rank."""

    def syncing_wrappers(self, model: Module) -> list:
        """The wrappers that all-reduce ``model``'s gradients (around it, or ``model`` itself)."""
        return []

    def rebuild_wrapper(self, old: Module | None, inner: Module, build: Callable, newly_trainable: list) -> Module:
        """A new gradient-syncing wrapper after a stage changed what trains (``build`` makes it), the old retired."""
        return build(inner)

    def tolerates_missing_gradients(self, wrapper: Module) -> bool:
        """Whether the live ``wrapper`` keeps working when parameters it registered stop getting gradients (a
        freeze after it was built), so that a loop's own wrapper can be kept through such a stage."""
        return False

    def sync_gradients_of(self, wrapper: Module, params: list[Tensor]) -> None:
        """Average the gradients of ``params`` over the ranks as the live ``wrapper`` (which never registered them,
        and which xfreeze cannot replace) does for its own: a hook per parameter, once, the same on every rank."""
        if self.world_size() > 1:
            missing(self, "sync_gradients_of", "a stage that unfreezes under a kept gradient-syncing wrapper")

    def sharding(self, model: Module) -> str | None:
        """``"fsdp1"``, ``"fsdp2"`` or None (not sharded)."""
        return None

    def load_full_state(self, model: Module, state: dict[str, Tensor]) -> None:
        """Load a whole state dict into a sharded model (every rank calls it; only for :meth:`sharding` models)."""
        missing(self, "load_full_state", "loading weights into a sharded model")

    def sharded_sizes(self, model: Module) -> dict[str, tuple[int, int]]:
        """``{name: (full elements, elements on this rank)}`` of a sharded model's parameters; empty otherwise."""
        return {}


class OptimizerExtras:
    """What growing optimizers (``StagedUnfreeze``), LR schedulers, optimizers xfreeze did not build and
    optimizer checkpoints need, beyond the required ``build_optimizer`` / ``group_rows``."""

    def build_optimizer_from(self, factory: Callable, config: Any, groups: list[dict], lr: Any, kwargs: dict) -> Any:
        """Any optimizer class or factory of the framework over neutral groups, keeping absolute group rates;
        an ``XFreezeError`` for one whose group semantics xfreeze cannot guarantee."""
        missing(self, "build_optimizer_from", "xfreeze.optimizer(model, <an optimizer class>)")

    def optimizer_defaults(self, opt: Optimizer) -> dict | None:
        """The base rate and weight decay (of its decayed parameters) of an optimizer xfreeze did not build (None
        when unknown: such an optimizer cannot grow)."""
        return None

    def add_param_group(self, opt: Optimizer, group: dict, scheduler: Any = None) -> None:
        """Grow a live optimizer by one neutral group; ``group["lr"]`` is its nominal rate and ``scheduler`` (adopted
        by :meth:`adopt_scheduler`) drives it from now on as a group the optimizer had from the start."""
        missing(self, "add_param_group", "StagedUnfreeze (a stage adds the parameters it unfreezes)")

    def scheduler_base_lr(self, lr: Any) -> float | None:
        """The nominal rate of an LR scheduler passed as ``lr`` (Paddle: what group multipliers scale), else None."""
        return None

    def is_scheduler(self, obj: Any) -> bool:
        """Whether ``obj`` is an LR scheduler of this framework (False: schedulers are not supported)."""
        return False

    def adopt_scheduler(self, opt: Optimizer, scheduler: Any) -> str | None:
        """Check that ``scheduler`` drives ``opt`` and can drive the groups :meth:`add_param_group` adds later, and
        record what that needs (before any group is added); the reason it cannot, or None."""
        return f"the {type(self).__name__} adapter does not implement adopt_scheduler, so no scheduler can grow"

    def scheduler_state(self, scheduler: Any) -> dict:
        """A snapshot of an LR scheduler's state."""
        missing(self, "scheduler_state", "StagedUnfreeze.state_dict() with a scheduler")

    def load_scheduler_state(self, scheduler: Any, state: dict) -> None:
        """Restore :meth:`scheduler_state`."""
        missing(self, "load_scheduler_state", "StagedUnfreeze.load_state_dict() with a scheduler")

    def optimizer_state(self, opt: Optimizer, model: Module) -> dict:
        """A snapshot of the optimizer's state keyed by structured parameter names."""
        missing(self, "optimizer_state", "StagedUnfreeze.state_dict() with an optimizer")

    def load_optimizer_state(self, opt: Optimizer, model: Module, state: dict) -> None:
        """Restore :meth:`optimizer_state` into an optimizer over a fresh model."""
        missing(self, "load_optimizer_state", "StagedUnfreeze.load_state_dict() with an optimizer")

    def optimizer_state_problem(self, opt: Optimizer, model: Module, state: Any) -> str | None:
        """What makes a saved optimizer state unfit for ``opt`` (checked before anything changes), else None."""
        return None

    def saved_param_count(self, state: Any) -> int | None:
        """How many parameters a saved optimizer state covers (None: the state does not say)."""
        return None

    def register_state_hooks(self, opt: Optimizer, save: Callable, load: Callable) -> None:
        """Let xfreeze add to what ``opt``'s own state dict saves (``save``) and read it back first (``load``)."""
        missing(self, "register_state_hooks", "the training-loop integrations' checkpoints of a staged run")


class OwnFiles:
    """The framework's own checkpoint files, for a ``FileFormat`` with ``reader="adapter"`` in its ``formats.py``
    (torch's zip archive); a framework whose files the core reads itself (Paddle's pickle) writes neither."""

    def load_file(self, path: Any) -> dict[str, Tensor]:
        """``{key: tensor}`` of a file in the framework's own format, loaded without running code from it."""
        missing(self, "load_file", "reading a checkpoint of a format whose reader is 'adapter'")

    def save_file(self, tensors: dict[str, Tensor], f: Any) -> None:
        """Write ``{key: tensor}`` (this framework's tensors) to the open binary file ``f`` in its own format."""
        missing(self, "save_file", "writing a checkpoint of a format whose reader is 'adapter'")


class NamedModels:
    """Models by name for the command line (``xfreeze plan resnet18``); none by default."""

    model_zoo: ClassVar[str] = ""  # what ``build_named_model`` accepts, in words

    def model_names(self) -> list[str]:
        """Names :meth:`build_named_model` accepts (the command line lists them)."""
        return []

    def build_named_model(self, name: str) -> Module | None:
        """A model of the framework's zoo by name, with random weights; None when unknown."""
        return None


ROWS_ATTR = "_xfreeze_rows"  # on a module: {local name of a split parameter: RowSplit} (issue 21)


class RowSplit(NamedTuple):
    """A parameter of a module split by rows: the trainable rows live in the parameter ``rows_local`` beside it."""

    rows_local: str  # e.g. "weight[32000:32064]"
    index: Any  # the rows (a sorted numpy int64 array) on ``axis``
    axis: int  # 0, or 1 for a Linear weight stored [in, out]
    cache: dict  # device -> ``index`` as a tensor there


class RowSplits:
    """Part of a tensor trains (issue 21): the whole parameter stays registered and frozen, a new trainable
    parameter holds its trainable rows, and forward reads the two joined. The record of the splits sits on the
    module itself (``ROWS_ATTR``), so a deep copy or pickle of the model keeps them."""

    def row_splits(self, module: Module) -> dict[str, RowSplit]:
        """``{local name: RowSplit}`` of the module's split parameters."""
        return module.__dict__.get(ROWS_ATTR) or {}

    def split_rows(self, module: Module, local: str, rows_local: str, index: Any, axis: int, rows: Any = None) -> Any:
        """Freeze parameter ``local`` and register ``rows`` (or a new trainable copy of its rows ``index`` on
        ``axis``) as ``rows_local``; forward reads the two joined. Returns the rows parameter."""
        missing(self, "split_rows", "training part of a tensor (a pattern ending in [rows])")

    def join_rows(self, module: Module, local: str) -> None:
        """Undo :meth:`split_rows`: the rows are written back into the whole parameter (bit for bit), their
        parameter is dropped."""
        missing(self, "join_rows", "training part of a tensor (a pattern ending in [rows])")

    def sync_rows(self, module: Module) -> None:
        """Write the trained rows of every split parameter of ``module`` into the whole one, in place."""
        missing(self, "sync_rows", "training part of a tensor (a pattern ending in [rows])")

    def reload_rows(self, module: Module) -> None:
        """The other way: every split parameter's rows take the whole parameter's values (after a load into it)."""
        missing(self, "reload_rows", "training part of a tensor (a pattern ending in [rows])")


class GradHooks:
    """Gradient hooks (xfreeze.audit: which trainable parameters received a gradient); torch and Paddle share the
    tensor API."""

    def grad_hook(self, param: Tensor, hook: Callable) -> Any:
        """Call ``hook(grad)`` (returning None) whenever a gradient of ``param`` is computed; a handle with
        ``remove()``."""
        return param.register_hook(hook)


class FeaturePrefix:
    """What a cached frozen prefix (FeatureCache, ProbeSweep; issue 20) needs of a framework: forwards without
    autograd, stopped or observed at one module, and cheap change tokens."""

    class_names: Callable[[Module], list[str]]  # the Adapter's (type: patterns), read by stochastic_rate

    def no_grad(self) -> Any:
        """A context manager in which the framework records no autograd graph."""
        missing(self, "no_grad", "FeatureCache (it fills without autograd)")

    def forward_post_hook(self, module: Module, hook: Any) -> Any:
        """Register ``hook(module, args, output)`` to run after ``module``'s forward; returns a handle with
        ``remove()``."""
        return module.register_forward_hook(hook)

    def inputs_of(self, model: Module, module: Module, inputs: tuple, grad: bool = False) -> tuple | None:
        """Run ``model(*inputs)`` (without autograd unless ``grad``) until ``module`` is called, and return the
        positional arguments it got; the rest of the forward is skipped. None when ``module`` was never called."""
        seen: list = []

        def stop(_module, args):
            seen.append(tuple(args))
            raise _Reached

        handle = module.register_forward_pre_hook(stop)
        try:
            with contextlib.nullcontext() if grad else self.no_grad():
                model(*inputs)
        except _Reached:
            pass
        finally:
            handle.remove()
        return seen[0] if seen else None

    def outputs_of(self, model: Module, module: Module, inputs: tuple) -> tuple:
        """``(module's positional arguments, module's output, model's output)`` of one whole ``model(*inputs)``
        without autograd (``(None, None, output)`` when ``module`` was never called)."""
        seen: list = []

        def record(_module, args, out) -> None:
            seen.append((tuple(args), out))

        handle = self.forward_post_hook(module, record)
        try:
            with self.no_grad():
                output = model(*inputs)
        finally:
            handle.remove()
        return (*(seen[0] if seen else (None, None)), output)

    def change_tokens(self, tensors: list[Tensor]) -> list:
        """Per tensor, a cheap token that changes when it is written in place (version counter, data pointer):
        the per-call staleness check of a FeatureCache; a full hash still runs at each pass over the data."""
        return [id(t) for t in tensors]

    def stochastic_rate(self, module: Module) -> float:
        """The drop rate of a stochastic layer (Dropout, DropPath, StochasticDepth, DropBlock, attention dropout),
        0.0 for a deterministic one (by class name and the rate attribute both frameworks' layers use)."""
        names = " ".join(self.class_names(module))
        attrs = _RATE_ATTRS if any(word in names for word in _STOCHASTIC) else ("dropout",)
        for attr in attrs:
            rate = getattr(module, attr, None)
            if isinstance(rate, (int, float)) and not isinstance(rate, bool):
                return float(rate)
        return 0.0

    def zero_grads(self, opt: Optimizer) -> None:
        """Release the gradients of every parameter ``opt`` steps (set them to None)."""
        missing(self, "zero_grads", "ProbeSweep")


class _Reached(Exception):
    """Raised by the pre-hook of :meth:`Adapter.inputs_of` to end a forward at the module."""


_STOCHASTIC = ("Dropout", "DropPath", "DropBlock", "StochasticDepth")
_RATE_ATTRS = ("p", "drop_prob", "drop_rate", "rate", "dropout")

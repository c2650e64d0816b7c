"""The adapter contract: what a framework must provide, and what every adapter gets for free.

The core (``xfreeze/``) talks to a framework only through :class:`Adapter`. A new framework is one folder
(``backends/<framework>/``: ``adapter.py`` with ``ADAPTER``, ``names.py``, ``formats.py``) and one entry in
``backends/__init__.py``; ``tests/backends/test_conformance.py`` checks it. The abstract methods are the whole
required part. Everything else has a default: the model walk, norm locks and tensor sizes here (written against the
abstract methods and torch / Paddle's public module API: ``training``, ``register_forward_pre_hook``), and the
optional groups in ``backends/defaults.py`` (distributed training as one process, growing optimizers and
schedulers, the framework's own files, named models, row splits, gradient hooks, the cached frozen prefix).
``docs/contract.md`` goes through every method.
"""

from __future__ import annotations

import abc
import functools
import math
from typing import Any, ClassVar, Iterable, Iterator

import numpy as np

from . import kinds
from ..core.tensors import BIT_CARRIERS
from .defaults import FeaturePrefix, GradHooks, NamedModels, OptimizerExtras, OwnFiles, RowSplits, SingleProcess
from .defaults import missing, record, tensors_of
from .defaults import Module, Optimizer, Raw, Registries, Tensor, Walk, keep_eval, owners, relock_after

__all__ = ["Adapter", "Module", "Optimizer", "Raw", "Registries", "Tensor", "Walk", "keep_eval", "owners"]
__all__ += ["relock_after", "abstract_methods", "record", "tensors_of"]


class Adapter(SingleProcess, OptimizerExtras, OwnFiles, NamedModels, RowSplits, GradHooks, FeaturePrefix, abc.ABC):
    """Base of every adapter: each abstract method is one real framework difference; everything else is a default
    that an adapter overrides where its framework does better (a fused kernel, a distributed wrapper, a scheduler
    that grows)."""

    name: ClassVar[str] = ""  # the backend name users pass: backend="torch"
    DTYPES: ClassVar[dict[str, Any]] = {}  # neutral dtype name -> framework dtype (what this build supports)
    KINDS: ClassVar[tuple[tuple[str, tuple[type, ...]], ...]] = ()  # (kind, the framework's classes of that kind)
    WRAPPERS: ClassVar[dict[str, str]] = {}  # wrapper class name -> attribute holding the wrapped module

    # ============================== required: one real framework difference each ==============================
    # --- structure -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def registries(self, module: Module) -> Registries:
        """The live dicts in which ``module`` registers its own parameters, buffers, children, running statistics
        and forward pre-hooks (the model walk, stale-view checks and norm locks read only these)."""

    @abc.abstractmethod
    def module_tensors(self, module: Module) -> tuple[list[tuple[str, Tensor]], list[tuple[str, str, Tensor]]]:
        """``([(local, parameter)], [(neutral stat name, state-dict local name, tensor)])`` of the module itself:
        its parameters, and its norm running statistics (torch buffers; Paddle's ``_mean``/``_variance``)."""

    # --- trainability ----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def is_trainable(self, param: Tensor) -> bool:
        """Whether the parameter trains (``requires_grad`` / ``not stop_gradient``)."""

    @abc.abstractmethod
    def set_trainable(self, param: Tensor, trainable: bool) -> None:
        """Make the parameter trainable or frozen (no gradient is computed for a frozen one)."""

    @abc.abstractmethod
    def drop_grad(self, param: Tensor) -> None:
        """Release the gradient (None, not zeros: a zeroed gradient still feeds momentum and weight decay)."""

    # --- heads -----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def linear_features(self, module: Module) -> tuple[int, int, bool]:
        """``(in_features, out_features, has_bias)`` of a Linear layer."""

    @abc.abstractmethod
    def new_linear(self, like: Module, out_features: int, init: str) -> Module:
        """A new Linear with ``like``'s input size, bias setting, device and dtype, initialized by ``init`` (one of
        ``xfreeze.model.head.INITS``; biases at zero, ``"default"`` keeps the framework's own initialization)."""

    # --- native tensors --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def tensor_dtype(self, tensor: Tensor) -> str:
        """The neutral dtype name (``"bfloat16"``); an ``XFreezeError`` for a dtype ``DTYPES`` lacks."""

    @abc.abstractmethod
    def to_raw(self, tensor: Tensor) -> Raw:
        """The tensor's exact bits (the whole tensor, also when it is sharded) as a :class:`Raw`."""

    @abc.abstractmethod
    def from_raw(self, raw: Raw) -> Tensor:
        """A new tensor of this framework with exactly ``raw``'s bits and dtype."""

    @abc.abstractmethod
    def cast(self, tensor: Tensor, dtype: str) -> Tensor:
        """A copy of the tensor converted (numerically) to the neutral dtype ``dtype``."""

    @abc.abstractmethod
    def transpose(self, tensor: Tensor) -> Tensor:
        """A contiguous transpose of a 2-D tensor."""

    @abc.abstractmethod
    def clone(self, tensor: Tensor) -> Tensor:
        """A detached copy, on the tensor's device."""

    @abc.abstractmethod
    def copy_into(self, targets: list[Tensor], sources: list[Tensor]) -> None:
        """Copy each source into its target in place (same shapes and dtypes), without autograd."""

    @abc.abstractmethod
    def same_layout(self, value: Tensor, param: Tensor) -> bool:
        """Whether ``value`` is on ``param``'s device and in its dtype (else :meth:`like` makes it so)."""

    @abc.abstractmethod
    def as_native(self, value: Tensor, like: Tensor) -> Tensor:
        """``value`` (a tensor of this framework) on ``like``'s device and in its dtype."""

    @abc.abstractmethod
    def state_tensors(self, model: Module) -> dict[str, Tensor]:
        """``{key: tensor}`` of the (unwrapped) model's state dict: live tensors, not copies."""

    # --- optimizers ------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_optimizer(self, config: Any, groups: list[dict[str, Any]], lr: Any) -> Optimizer:
        """The framework's SGD / Adam / AdamW (``config.name``) over neutral groups (``params``, ``names``, ``lr``
        absolute, ``lr_scale``, ``weight_decay``), each group keeping its own absolute rate and decay."""

    @abc.abstractmethod
    def is_optimizer(self, obj: Any) -> bool:
        """Whether ``obj`` is an optimizer of this framework."""

    @abc.abstractmethod
    def group_rows(self, opt: Optimizer) -> list[tuple[list[int], float, float]]:
        """``(parameter ids, absolute lr now, weight decay)`` per optimizer group."""

    @abc.abstractmethod
    def has_optimizer_state(self, opt: Optimizer, param: Tensor) -> bool:
        """Whether the optimizer holds state (momentum, moments) for ``param``."""

    # ============================== defaults, written against the methods above ===============================
    # --- structure: the model walk the view is built from ------------------------------------------------------
    def walk(self, model: Module) -> Walk:
        """A :class:`Walk` of ``model``: wrappers seen through, modules, parameters, statistics."""
        inner, wrappers = self.unwrap(model)
        modules: list = []
        params: list = []
        stats: list = []
        token: list = []
        expand = functools.partial(self.walk_module, modules, params, stats, token)  # records a module, gives children
        paths = [path for path, _ in self.traverse(inner, expand=expand)]
        return Walk(inner, wrappers, list(zip(paths, modules)), params, stats, tuple(token))

    def walk_module(self, modules: list, params: list, stats: list, token: list, module: Module) -> Any:
        """Add ``module`` to a walk being made and return its ``(name, child)`` pairs (None children allowed): the
        module to ``modules``; ``(its index, local name, tensor)`` per parameter to ``params`` and ``(index, neutral
        name, tensor, native name)`` per statistic to ``stats`` (as :meth:`module_tensors`); the ids of the module
        and of every registered parameter and buffer to ``token`` (as :meth:`structure_token`). The view build's
        inner loop (once per module): an adapter may answer it from its registries directly."""
        registered, buffers = self.tensor_dicts(module)
        tensors = [*registered.values(), *buffers.values()]
        record((modules, params, stats, token), module, *self.module_tensors(module), tensors)
        return self.children(module)

    def structure_token(self, model: Module) -> tuple[int, ...]:
        """The identities of ``model``'s modules, parameters and buffers (equal to ``walk(model).token`` while
        unchanged; torch's ``module.to(...)`` keeps parameter objects but replaces buffers)."""
        token: list = []
        add, extend, tensor_dicts = token.append, token.extend, self.tensor_dicts  # hot: every view check
        for _, module in self.traverse(self.unwrap(model)[0], paths=False):
            params, buffers = tensor_dicts(module)
            add(id(module))
            extend([id(p) for p in params.values() if p is not None])
            extend([id(b) for b in buffers.values() if b is not None])
        return tuple(token)

    def tensor_dicts(self, module: Module) -> tuple[dict, dict]:
        """The parameter and buffer dicts of ``module`` (``registries(module)[:2]``; an adapter may answer it
        directly, it runs once per module on every view check)."""
        return self.registries(module)[:2]  # type: ignore[return-value]

    def unwrap(self, model: Module) -> tuple[Module, list[str]]:
        """The model inside any wrappers (``WRAPPERS``), and the wrappers' class names, outermost first."""
        wrappers = []
        inner = self._inner_of(model)
        while inner is not None:
            wrappers.append(type(model).__name__)
            model, inner = inner, self._inner_of(inner)
        return model, wrappers

    def traverse(self, root: Module, paths: bool = True, expand: Any = None) -> Iterator[tuple[str, Module]]:
        """``(path, module)`` in the framework's named-modules order (pre-order, shared modules once), a wrapper
        replaced by its inner module under the wrapper's own path (its attribute never reaches a name). ``expand``
        gives a module's ``(name, child)`` pairs (default :meth:`children`; None children are skipped)."""
        # hot (every view check); plain: the classes that wrap nothing (by far most), one set lookup per module
        seen: set[int] = set()
        plain, stack, wrappers = set(), [("", root)], self.WRAPPERS
        expand, mark, pop = expand or self.children, seen.add, stack.pop
        while stack:
            path, module = pop()
            if type(module) not in plain:
                if (attr := wrappers.get(type(module).__name__)) is None:
                    plain.add(type(module))
                while attr is not None and getattr(module, attr, None) is not None:
                    module = getattr(module, attr)
                    attr = wrappers.get(type(module).__name__)
            if (key := id(module)) in seen:
                continue
            mark(key)
            yield path, module
            if not (children := expand(module)):
                continue
            if paths and path:
                prefix = path + "."
                stack += [(prefix + name, child) for name, child in reversed(children) if child is not None]
            else:
                stack += [(name if paths else "", child) for name, child in reversed(children) if child is not None]

    def _inner_of(self, module: Module) -> Module | None:
        attr = self.WRAPPERS.get(type(module).__name__)
        return getattr(module, attr, None) if attr else None

    def children(self, module: Module) -> list[tuple[str, Module]]:
        """``[(name, child)]``: the module's direct submodules, in registration order."""
        return [(name, child) for name, child in self.registries(module).children.items() if child is not None]

    def registrations(self, view: Any) -> list[tuple[dict, str | None, Any]]:
        """``(registry dict, key, object)`` for every parameter and submodule of the view, and ``(registry, None,
        size)`` for every registry: re-checking them (microseconds) tells that a wrapper or the user swapped, added
        or removed a tensor or module since the view was built."""
        out: list = [(self.registries(view.modules[mi]).parameters, local, p) for mi, local, p in view.registered]
        for module in view.modules:
            registries = self.registries(module)
            params, children = registries.parameters, registries.children
            out.extend((children, name, child) for name, child in self.children(module))
            out.extend(((params, None, len(params)), (children, None, len(children))))
            # running statistics: torch's module.to(...) / .cuda() replace buffers with new tensors
            out.extend((registries.statistics, local, t) for _, local, t in self.module_tensors(module)[1])
        return out

    def module_kind(self, module: Module) -> str | None:
        """``"norm"``, ``"linear"``, ``"conv"``, ``"embedding"`` or None: ``KINDS`` first, then the third-party
        registry and the structural norm rule of ``backends/kinds.py``."""
        own = next((kind for kind, classes in self.KINDS if isinstance(module, classes)), None)
        return own or kinds.module_kind(module, self.children(module), self.module_tensors(module)[0])

    def class_names(self, module: Module) -> list[str]:
        """Names of the module's classes, most derived first (for ``type:`` patterns)."""
        return [cls.__name__ for cls in type(module).__mro__]

    def state_keys(self, view: Any) -> list[str]:
        """State-dict keys beyond parameters and statistics (other persistent buffers)."""
        return []

    def padding_idx(self, module: Module) -> int | None:
        """An Embedding's padding row, else None."""
        return None

    def module_training(self, module: Module) -> bool:
        """Whether the module is in training mode."""
        return bool(module.training)

    # --- trainability and norm locks ---------------------------------------------------------------------------
    def trainable_flags(self, params: list[Tensor]) -> list[bool]:
        """Live trainability of each parameter."""
        return [self.is_trainable(p) for p in params]

    def apply_trainable(self, params: list[Tensor], trainable: bool) -> None:
        """A freeze plan's flags for many parameters at once; frozen ones also lose their gradient."""
        for p in params:
            self.set_trainable(p, trainable)
            if not trainable:
                self.drop_grad(p)

    def sync_grads(self, modules: Iterable[Module]) -> None:
        """Called after the trainability of these modules' own parameters changed (most frameworks: nothing; the
        modules come lazily, so a framework that needs nothing costs nothing on 100k tensors)."""

    def lock_norm(self, module: Module) -> None:
        """Keep a norm layer's statistics fixed: it runs in eval mode on every forward, even after train()."""
        if not self.is_norm_locked(module):
            module.register_forward_pre_hook(keep_eval)
        module.training = False  # visible at once, not only from the next forward

    def unlock_norm(self, module: Module, training: bool) -> None:
        """Release a lock: the norm layer follows ``training`` (and later ``model.train()``) again."""
        hooks = self.registries(module).hooks
        for key in [k for k, hook in hooks.items() if hook is keep_eval]:
            del hooks[key]
        module.training = training

    def is_norm_locked(self, module: Module) -> bool:
        """Whether :meth:`lock_norm` holds the layer."""
        return any(hook is keep_eval for hook in self.registries(module).hooks.values())

    # --- tensors -----------------------------------------------------------------------------------------------
    def full_shape(self, tensor: Tensor) -> tuple[int, ...]:
        """The tensor's logical shape (the whole tensor, also when it is sharded)."""
        return tuple(tensor.shape)

    def numel(self, tensor: Tensor) -> int:
        """Elements of the whole (logical) tensor."""
        return math.prod(self.full_shape(tensor))

    def element_size(self, tensor: Tensor) -> int:
        """Bytes per element."""
        name = self.tensor_dtype(tensor)
        return np.dtype(BIT_CARRIERS.get(name, name)).itemsize

    def nbytes(self, tensor: Tensor) -> int:
        """Bytes of the whole (logical) tensor."""
        return self.numel(tensor) * self.element_size(tensor)

    def row_nonzero(self, tensor: Tensor, index: int) -> bool:
        """Whether row ``index`` holds any non-zero value (indexing and ``any`` read alike in torch and Paddle)."""
        return bool((tensor[index] != 0).any())

    def zero_row(self, tensor: Tensor, index: int) -> Tensor:
        """A copy of the tensor with row ``index`` set to zero."""
        out = self.clone(tensor)
        out[index] = 0
        return out

    def load_tensors(self, targets: list[Tensor], values: list[Tensor]) -> None:
        """Copy ``values`` (this framework's tensors, same shapes and dtypes) into ``targets``, without autograd."""
        self.copy_into(list(targets), list(values))

    def like(self, value: Tensor, param: Tensor) -> Tensor:
        """``value`` (an EMA shadow) in ``param``'s layout: on its device, in its dtype (sharded like it, where a
        framework shards parameters)."""
        return value if self.same_layout(value, param) else self.as_native(value, param)

    def ema_update(self, averages: list[Tensor], values: list[Tensor], weight: float) -> None:
        """``a += weight * (v - a)`` for each pair (a lerp: exactly ``a`` when ``v == a``); one plain expression per
        tensor here, a fused kernel where the framework has one."""
        self.copy_into(list(averages), [a + (v - a) * weight for a, v in zip(averages, values)])

    # --- heads -------------------------------------------------------------------------------------------------
    def conv_head_features(self, module: Module) -> tuple[int, int] | None:
        """``(in_channels, out_channels)`` of a 1x1, ungrouped 2-D convolution (a conv classifier such as
        SqueezeNet's), else None (the default: no conv classifiers)."""
        return None

    def new_conv_head(self, like: Module, out_channels: int, init: str) -> Module:
        """A new 1x1 convolution with ``like``'s input channels, bias setting, device and dtype."""
        missing(self, "new_conv_head", "replace_head on a convolutional classifier")

    def update_label_count(self, model: Module, n: int) -> None:
        """After a head replacement: the model's own record of its class count follows (transformers / PaddleNLP
        ``config.num_labels``, whose setter remakes ``id2label``; timm / paddle.vision ``num_classes``)."""
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "num_labels"):
            config.num_labels = n
        for attr in ("num_labels", "num_classes"):
            if isinstance(getattr(model, attr, None), int) and not isinstance(getattr(model, attr), bool):
                setattr(model, attr, n)

    # --- optimizers --------------------------------------------------------------------------------------------
    def optimizer_param_ids(self, opt: Optimizer) -> set[int]:
        """``id()`` of every parameter an optimizer holds."""
        return {i for ids, _, _ in self.group_rows(opt) for i in ids}

    def group_lrs(self, opt: Optimizer) -> list[float]:
        """The absolute learning rate of each group, as the optimizer will apply it now."""
        return [lr for _, lr, _ in self.group_rows(opt)]

    # --- distributed: what the single-process defaults need of the structure ----------------------------------
    def unwrap_all(self, model: Module) -> Module:
        """The model inside every wrapper, distributed ones included."""
        return self.unwrap(model)[0]

    def full_state(self, model: Module) -> dict[str, Tensor]:
        """The whole state dict of a (possibly sharded) model, gathered (every rank calls it)."""
        return dict(self.state_tensors(model))

    def unreadable(self, tensor: Tensor) -> str | None:
        """Why a source tensor's values cannot be loaded (sparse, on the meta device: no data), else None."""
        return None

    def alias(self, tensor: Tensor) -> Tensor:
        """A tensor sharing ``tensor``'s memory, outside autograd (a frozen tensor's entry in a saved EMA state)."""
        return tensor.detach()

    def group_nominal_lrs(self, opt: Optimizer) -> list[float]:
        """Per group, the rate a schedule scales (the plan's rate, not today's point on the schedule)."""
        return self.group_lrs(opt)


def abstract_methods(cls: type = Adapter) -> list[str]:
    """The methods a subclass of ``cls`` must still write (what ``docs/contract.md`` lists)."""
    return sorted(getattr(cls, "__abstractmethods__", ()))

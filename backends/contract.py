"""The adapter contract: every method an adapter implements, one real framework difference each.

The core (``xfreeze/``) talks to a framework only through these methods. A new framework = one module subclassing
:class:`Adapter`, one :class:`~xfreeze.backends.naming.Naming`, one entry in ``xfreeze.backends.ADAPTERS``, and
``tests/test_conformance.py`` passing for it. Methods that raise ``NotImplementedError`` here must be provided.
"""

from __future__ import annotations

import gc
from typing import Any, ClassVar, NoReturn


def keep_eval(module, args):
    """Forward pre-hook of a locked norm layer: it runs as in eval mode whatever ``model.train()`` said."""
    module.training = False


def relock_after(adapter, convert):
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


def _todo(self, what: str) -> NoReturn:
    raise NotImplementedError(f"{type(self).__name__} does not implement {what}, which every xfreeze adapter must")


class Adapter:
    """Base of every adapter. Subclasses override one small method per real framework difference."""

    name: ClassVar[str] = ""
    DTYPES: ClassVar[dict] = {}  # neutral dtype name -> framework dtype (what this build supports)
    model_zoo: ClassVar[str] = ""  # what ``build_named_model`` accepts, in words (for the CLI)

    WRAPPERS: ClassVar[dict] = {}  # wrapper class name -> attribute holding the wrapped module
    rewrap_can_freeze: ClassVar[bool] = False  # a gradient-syncing wrapper can be rebuilt after a freeze
    freeze_after_wrap_hint: ClassVar[str] = ""  # appended to the refusal of a freeze under a kept wrapper

    # --- structure: the model view ---------------------------------------------------------------------------
    def walk(self, model):
        """A :class:`xfreeze.model.view.Walk` of ``model``: wrappers seen through, modules, parameters, statistics."""
        from ..model.view import Walk

        inner, wrappers = self.unwrap(model)
        modules: list = []
        params: list = []
        stats: list = []
        token: list = []
        for path, module in self.traverse(inner):
            index = len(modules)
            modules.append((path, module))
            token.append(id(module))
            own, statistics = self.module_tensors(module)
            params.extend((index, local, p) for local, p in own)
            stats.extend((index, neutral, t, native) for neutral, native, t in statistics)
            token.extend(id(p) for p in module._parameters.values() if p is not None)
            token.extend(id(b) for b in module._buffers.values() if b is not None)
        return Walk(inner, wrappers, modules, params, stats, tuple(token))

    def structure_token(self, model) -> tuple:
        """The identities of ``model``'s modules, parameters and buffers (equal to ``walk(model).token`` while
        unchanged; torch's ``module.to(...)`` keeps parameter objects but replaces buffers)."""
        token: list = []
        for _, module in self.traverse(self.unwrap(model)[0], paths=False):
            token.append(id(module))
            token.extend(id(p) for p in module._parameters.values() if p is not None)
            token.extend(id(b) for b in module._buffers.values() if b is not None)
        return tuple(token)

    def unwrap(self, model) -> tuple:
        """The model inside any wrappers (``WRAPPERS``), and the wrappers' class names, outermost first."""
        wrappers = []
        inner = self._inner_of(model)
        while inner is not None:
            wrappers.append(type(model).__name__)
            model, inner = inner, self._inner_of(inner)
        return model, wrappers

    def traverse(self, root, paths: bool = True):
        """``(path, module)`` in the framework's named-modules order (pre-order, shared modules once), a wrapper
        replaced by its inner module under the wrapper's own path (its attribute never reaches a name)."""
        seen, stack = set(), [("", root)]
        while stack:
            path, module = stack.pop()
            inner = self._inner_of(module)
            while inner is not None:
                module, inner = inner, self._inner_of(inner)
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield path, module
            for name, child in reversed(self.children(module)):
                stack.append(((f"{path}.{name}" if path else name) if paths else "", child))

    def _inner_of(self, module):
        attr = self.WRAPPERS.get(type(module).__name__)
        return getattr(module, attr, None) if attr else None

    def children(self, module) -> list:
        """``[(name, child)]``: the module's direct submodules, in registration order."""
        _todo(self, "children")

    def registrations(self, view) -> list:
        """``(registry dict, key, object)`` for every parameter and submodule of the view, and ``(registry, None,
        size)`` for every registry: re-checking them (microseconds) tells that a wrapper or the user swapped, added
        or removed a tensor or module since the view was built."""
        out = [(view.modules[mi]._parameters, local, p) for mi, local, p in view.registered]
        for module in view.modules:
            children = self._child_registry(module)
            out.extend((children, name, child) for name, child in self.children(module))
            out.extend(((module._parameters, None, len(module._parameters)), (children, None, len(children))))
            # running statistics: torch's module.to(...) / .cuda() replace buffers with new tensors
            out.extend((self._stat_registry(module), local, t) for _, local, t in self.module_tensors(module)[1])
        return out

    def _child_registry(self, module) -> dict:
        _todo(self, "_child_registry")

    def _stat_registry(self, module) -> dict:
        """Where the module registers its running statistics (torch: buffers; Paddle: parameters)."""
        _todo(self, "_stat_registry")

    def like(self, value, param):
        """``value`` (an EMA shadow) in ``param``'s layout: sharded like a DTensor parameter, or whole; on its
        device, in its dtype."""
        return value

    def same_layout(self, value, param) -> bool:
        """Whether ``value`` is on ``param``'s device and in its dtype (else :meth:`like` makes it so)."""
        _todo(self, "same_layout")

    def module_tensors(self, module) -> tuple:
        """``([(local, parameter)], [(neutral stat name, state-dict local name, tensor)])`` of the module itself:
        its parameters, and its norm running statistics (torch buffers; Paddle's ``_mean``/``_variance``)."""
        _todo(self, "module_tensors")

    def module_kind(self, module) -> str | None:
        """``"norm"``, ``"linear"``, ``"conv"``, ``"embedding"`` or None."""
        _todo(self, "module_kind")

    def class_names(self, module) -> list[str]:
        """Names of the module's classes, most derived first (for ``type:`` patterns)."""
        return [cls.__name__ for cls in type(module).__mro__]

    def state_keys(self, view) -> list[str]:
        """State-dict keys beyond parameters and statistics (other persistent buffers)."""
        return []

    def padding_idx(self, module) -> int | None:
        """An Embedding's padding row, else None."""
        return None

    def module_training(self, module) -> bool:
        """Whether the module is in training mode."""
        return bool(module.training)

    # --- trainability ----------------------------------------------------------------------------------------
    def trainable_flags(self, params) -> list[bool]:
        """Live trainability of each parameter."""
        return [self.is_trainable(p) for p in params]

    def is_trainable(self, param) -> bool:
        """Whether the parameter trains (``requires_grad`` / ``not stop_gradient``)."""
        _todo(self, "is_trainable")

    def set_trainable(self, param, trainable: bool) -> None:
        """Make the parameter trainable or frozen (no gradient is computed for a frozen one)."""
        _todo(self, "set_trainable")

    def drop_grad(self, param) -> None:
        """Release the gradient (None, not zeros: a zeroed gradient still feeds momentum and weight decay)."""
        _todo(self, "drop_grad")

    def apply_trainable(self, params, trainable: bool) -> None:
        """A freeze plan's flags for many parameters at once; frozen ones also lose their gradient."""
        for p in params:
            self.set_trainable(p, trainable)
            if not trainable:
                self.drop_grad(p)

    def sync_grads(self, module) -> None:
        """Called after the trainability of ``module``'s own parameters changed (most frameworks: nothing)."""

    def lock_norm(self, module) -> None:
        """Keep a norm layer's statistics fixed: it runs in eval mode on every forward, even after train()."""
        if not self.is_norm_locked(module):
            module.register_forward_pre_hook(keep_eval)
        module.training = False  # visible at once, not only from the next forward

    def unlock_norm(self, module, training: bool) -> None:
        """Release a lock: the norm layer follows ``training`` (and later ``model.train()``) again."""
        hooks = module._forward_pre_hooks
        for key in [k for k, hook in hooks.items() if hook is keep_eval]:
            del hooks[key]
        module.training = training

    def is_norm_locked(self, module) -> bool:
        """Whether :meth:`lock_norm` holds the layer."""
        return any(hook is keep_eval for hook in module._forward_pre_hooks.values())

    # --- native tensors --------------------------------------------------------------------------------------
    def tensor_dtype(self, tensor) -> str:
        """The neutral dtype name (``"bfloat16"``)."""
        _todo(self, "tensor_dtype")

    def to_raw(self, tensor):
        """The tensor's exact bits as a :class:`xfreeze.core.tensors.Raw`."""
        _todo(self, "to_raw")

    def from_raw(self, raw):
        """A new tensor of this framework with exactly ``raw``'s bits and dtype."""
        _todo(self, "from_raw")

    def cast(self, tensor, dtype: str):
        """A copy of the tensor converted (numerically) to the neutral dtype ``dtype``."""
        _todo(self, "cast")

    def transpose(self, tensor):
        """A contiguous transpose of a 2-D tensor."""
        _todo(self, "transpose")

    def row_nonzero(self, tensor, index: int) -> bool:
        """Whether row ``index`` holds any non-zero value (indexing and ``any`` read alike in torch and Paddle)."""
        return bool((tensor[index] != 0).any())

    def zero_row(self, tensor, index: int):
        """A copy of the tensor with row ``index`` set to zero."""
        out = self.clone(tensor)
        out[index] = 0
        return out

    def numel(self, tensor) -> int:
        """Elements of the whole (logical) tensor."""
        _todo(self, "numel")

    def nbytes(self, tensor) -> int:
        """Bytes of the whole (logical) tensor."""
        _todo(self, "nbytes")

    def element_size(self, tensor) -> int:
        """Bytes per element."""
        return int(tensor.element_size())

    def full_shape(self, tensor) -> tuple:
        """The tensor's logical shape (the whole tensor, also when it is sharded)."""
        return tuple(tensor.shape)

    def clone(self, tensor):
        """A detached copy."""
        _todo(self, "clone")

    # --- weights ---------------------------------------------------------------------------------------------
    def state_tensors(self, model) -> dict:
        """``{key: tensor}`` of the (unwrapped) model's state dict, live tensors."""
        _todo(self, "state_tensors")

    def as_native(self, value, like):
        """``value`` (a tensor of this framework) on ``like``'s device and dtype."""
        _todo(self, "as_native")

    def load_tensors(self, targets: list, values: list) -> None:
        """Copy ``values`` (this framework's tensors, same shapes and dtypes) into ``targets``, without autograd."""
        _todo(self, "load_tensors")

    def linear_features(self, module) -> tuple:
        """``(in_features, out_features, has_bias)`` of a Linear layer."""
        _todo(self, "linear_features")

    def conv_head_features(self, module) -> tuple | None:
        """``(in_channels, out_channels)`` of a 1x1, ungrouped 2-D convolution (a conv classifier such as
        SqueezeNet's), else None."""
        _todo(self, "conv_head_features")

    def new_conv_head(self, like, out_channels: int, init: str):
        """A new 1x1 convolution with ``like``'s input channels, bias setting, device and dtype."""
        _todo(self, "new_conv_head")

    def update_label_count(self, model, n: int) -> None:
        """After a head replacement: the model's own record of its class count follows (transformers
        ``config.num_labels`` / ``id2label``, PaddleNLP and timm ``num_classes``)."""
        _todo(self, "update_label_count")

    def new_linear(self, like, out_features: int, init: str):
        """A new Linear with ``like``'s input size, bias setting, device and dtype."""
        _todo(self, "new_linear")

    # --- optimizers ------------------------------------------------------------------------------------------
    def scheduler_base_lr(self, lr) -> float | None:
        """The nominal rate of an LR scheduler passed as ``lr`` (Paddle: what group multipliers scale), else None."""
        _todo(self, "scheduler_base_lr")

    def build_optimizer(self, config, groups, lr):
        """The framework's optimizer over neutral groups with absolute rates (``config`` says which)."""
        _todo(self, "build_optimizer")

    def optimizer_param_ids(self, opt) -> set:
        """``id()`` of every parameter an optimizer holds."""
        _todo(self, "optimizer_param_ids")

    def add_param_group(self, opt, group, scheduler=None) -> None:
        """Grow a live optimizer by one neutral group; ``group["lr"]`` is its nominal rate and ``scheduler`` (adopted
        by :meth:`adopt_scheduler`) drives it from now on as a group the optimizer had from the start."""
        _todo(self, "add_param_group")

    def adopt_scheduler(self, opt, scheduler) -> str | None:
        """Check that ``scheduler`` drives ``opt`` and can drive the groups :meth:`add_param_group` adds later, and
        record what that needs (before any group is added); the reason it cannot, or None."""
        _todo(self, "adopt_scheduler")

    def group_lrs(self, opt) -> list:
        """The absolute learning rate of each group, as the optimizer will apply it now."""
        _todo(self, "group_lrs")

    def optimizer_state(self, opt, model) -> dict:
        """A snapshot of the optimizer's state keyed by structured parameter names."""
        _todo(self, "optimizer_state")

    def load_optimizer_state(self, opt, model, state) -> None:
        """Restore :meth:`optimizer_state` into an optimizer over a fresh model."""
        _todo(self, "load_optimizer_state")

    def scheduler_state(self, scheduler) -> dict:
        """A snapshot of an LR scheduler's state."""
        _todo(self, "scheduler_state")

    def load_scheduler_state(self, scheduler, state) -> None:
        """Restore :meth:`scheduler_state`."""
        _todo(self, "load_scheduler_state")

    def build_optimizer_from(self, factory, config, groups, lr, kwargs):
        """Any optimizer class or factory of the framework over neutral groups, keeping absolute group rates;
        an ``XFreezeError`` for one whose group semantics xfreeze cannot guarantee."""
        _todo(self, "build_optimizer_from")

    def optimizer_defaults(self, opt) -> dict | None:
        """The base rate and weight decay (of its decayed parameters) of an optimizer xfreeze did not build (None
        when unknown)."""
        _todo(self, "optimizer_defaults")

    def is_optimizer(self, obj) -> bool:
        """Whether ``obj`` is an optimizer of this framework."""
        _todo(self, "is_optimizer")

    def is_scheduler(self, obj) -> bool:
        """Whether ``obj`` is an LR scheduler of this framework."""
        _todo(self, "is_scheduler")

    def group_rows(self, opt) -> list:
        """``(parameter ids, absolute lr, weight decay)`` per optimizer group."""
        _todo(self, "group_rows")

    def has_optimizer_state(self, opt, param) -> bool:
        """Whether the optimizer holds state (momentum, moments) for ``param``."""
        _todo(self, "has_optimizer_state")

    def optimizer_state_problem(self, opt, model, state) -> str | None:
        """What makes a saved optimizer state unfit for ``opt`` (checked before anything changes), else None."""
        _todo(self, "optimizer_state_problem")

    def saved_param_count(self, state) -> int:
        """How many parameters a saved optimizer state covers."""
        _todo(self, "saved_param_count")

    def register_state_hooks(self, opt, save, load) -> None:
        """Let xfreeze add to what ``opt``'s own state dict saves (``save``) and read it back first (``load``)."""
        _todo(self, "register_state_hooks")

    # --- distributed (DDP / FSDP / Paddle DataParallel) ------------------------------------------------------
    def syncing_wrappers(self, model) -> list:
        """The wrappers that all-reduce ``model``'s gradients (around it, or ``model`` itself)."""
        _todo(self, "syncing_wrappers")

    def unwrap_all(self, model):
        """The model inside every wrapper, distributed ones included."""
        _todo(self, "unwrap_all")

    def rebuild_wrapper(self, old, inner, build, newly_trainable):
        """A new gradient-syncing wrapper after a stage changed what trains (``build`` makes it), the old retired."""
        _todo(self, "rebuild_wrapper")

    def tolerates_missing_gradients(self, wrapper) -> bool:
        """Whether the live ``wrapper`` keeps working when parameters it registered stop getting gradients (a
        freeze after it was built), so that a loop's own wrapper can be kept through such a stage."""
        _todo(self, "tolerates_missing_gradients")

    def sync_gradients_of(self, wrapper, params) -> None:
        """Average the gradients of ``params`` over the ranks as the live ``wrapper`` (which never registered them,
        and which xfreeze cannot replace) does for its own: a hook per parameter, once, the same on every rank."""
        _todo(self, "sync_gradients_of")

    def world_size(self) -> int:
        """Processes in the default group (1 without one)."""
        _todo(self, "world_size")

    def rank(self) -> int:
        """This process's rank (0 without a group)."""
        _todo(self, "rank")

    def all_reduce_max(self, values: list) -> list:
        """Element-wise maximum of a list of integers over all ranks."""
        _todo(self, "all_reduce_max")

    def all_gather_object(self, obj) -> list:
        """``obj`` from every rank."""
        _todo(self, "all_gather_object")

    def barrier(self) -> None:
        """Wait for every rank."""
        _todo(self, "barrier")

    def sharding(self, model):
        """``"fsdp1"``, ``"fsdp2"`` or None."""
        _todo(self, "sharding")

    def full_state(self, model) -> dict:
        """The whole state dict of a (possibly sharded) model, gathered (every rank calls it)."""
        _todo(self, "full_state")

    def load_full_state(self, model, state: dict) -> None:
        """Load a whole state dict into a (possibly sharded) model."""
        _todo(self, "load_full_state")

    def local_numel(self, param) -> int:
        """Elements of ``param`` held by this rank."""
        _todo(self, "local_numel")

    def sharded_sizes(self, model) -> dict:
        """``{name: (full elements, elements on this rank)}`` of a sharded model's parameters; empty otherwise."""
        _todo(self, "sharded_sizes")

    # --- EMA (an EMA plan: lists of tensors, fused where the framework can) -----------------------------------
    def ema_update(self, averages: list, values: list, weight: float) -> None:
        """``a += weight * (v - a)`` for each pair (a lerp: exactly ``a`` when ``v == a``)."""
        _todo(self, "ema_update")

    def copy_into(self, targets: list, sources: list) -> None:
        """Copy each source into its target, without autograd."""
        _todo(self, "copy_into")

    # --- named models (the command line) ---------------------------------------------------------------------
    def model_names(self) -> list:
        """Names :meth:`build_named_model` accepts (the command line lists them)."""
        return []

    def build_named_model(self, name: str) -> Any:
        """A model of the framework's zoo by name, with random weights; None when unknown."""
        return None

    # --- compatibility: module-level walks (kept for code that predates the view) -----------------------------
    def named_modules(self, model):
        """``[(path, module)]`` of the inner model, wrappers seen through."""
        return self.walk(model).modules

    def direct_parameters(self, module) -> list:
        """``[(local name, parameter)]`` of the module itself (norm statistics excluded)."""
        _todo(self, "direct_parameters")

    def norm_statistics(self, module) -> list:
        """``[(neutral local name, tensor)]``: the module's norm running statistics."""
        _todo(self, "norm_statistics")

    def named_statistics(self, model) -> list:
        """Every norm layer's running statistics under neutral names (``bn1.running_mean``), in model order."""
        walk = self.walk(model)
        return [
            (f"{walk.modules[mi][0]}.{local}" if walk.modules[mi][0] else local, t) for mi, local, t, _ in walk.stats
        ]


def owners(child) -> list:
    """Objects that hold ``child`` as a sub-module (child <- sub-module dict <- instance ``__dict__`` <- owner): how
    an adapter finds a live DDP / DataParallel around a model it was given unwrapped (only with a process group)."""
    level, out = [child], []
    for _ in range(3):
        refs = [r for c in level for r in gc.get_referrers(c)]
        out += [r for r in refs if not isinstance(r, (dict, list, tuple))]
        level = [r for r in refs if isinstance(r, dict)]
    return out

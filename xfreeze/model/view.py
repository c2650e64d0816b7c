"""The model view: one framework-free description of a model, built by one adapter call and cached.

Selection, the layer map, head search, summary, reports, conversion and loading read only the view: names of
parameters and norm statistics (the inner model's names, whatever wrapper the model came in), module paths, kinds
and classes, parents, tied tensors and the wrapper chain. Shapes, dtypes and sizes are computed once, when first
asked for. Trainability is *not* part of the view (it is read live through the adapter), so freezing never
invalidates it; anything that changes structure does (``replace_head``, a user assigning a new module or
parameter), and is detected by a cheap identity check of modules and parameters on each use.
"""

from __future__ import annotations

import contextvars
import functools
import gc
import itertools
import weakref
from contextlib import contextmanager
from functools import cached_property

import numpy as np

from ..backends.defaults import Walk
from ..core.dispatch import adapter_for


class ModelView:
    """A cached, framework-free view of one model (see the module docstring)."""

    def __init__(self, model, adapter, walk: Walk):
        # the view is cached under the model: it holds the model (and the root module) only weakly, or the cache
        # would keep every model it has seen alive, with its weights (a sweep or notebook building models in a loop)
        self._model, self._inner, self.adapter = _weak(model), _weak(walk.inner), adapter
        self.wrappers, self.token = tuple(walk.wrappers), walk.token
        self.paths = [p for p, _ in walk.modules]
        self.modules = _Modules([m for _, m in walk.modules])
        self.registered = walk.params  # every registration, tied ones too (the walk is not kept: no copy)
        paths = self.paths
        names = [f"{paths[mi]}.{local}" if paths[mi] else local for mi, local, _ in walk.params]
        tensors = [t for _, _, t in walk.params]
        self.tied: dict[str, list[str]] = {}
        if len(set(map(id, tensors))) == len(tensors):  # nothing tied: the common case, in three list copies
            self.params, self.names, self.owner = tensors, names, [mi for mi, _, _ in walk.params]
        else:
            self.params, self.names, self.owner = [], [], []
            first: dict[int, int] = {}
            for (mi, _, tensor), name in zip(walk.params, names):
                seen = first.get(id(tensor))
                if seen is not None:
                    self.tied.setdefault(self.names[seen], []).append(name)
                    continue
                first[id(tensor)] = len(self.params)
                self.params.append(tensor)
                self.names.append(name)
                self.owner.append(mi)
        self.stat_names = [_join(self.paths[mi], local) for mi, local, _, _ in walk.stats]  # neutral names
        self.stat_keys = [_join(self.paths[mi], native) for mi, _, _, native in walk.stats]  # state-dict keys
        self.stat_tensors = [t for _, _, t, _ in walk.stats]
        self.stat_owner = [mi for mi, _, _, _ in walk.stats]
        self.pattern_hits: dict = {}  # pattern text -> which parameters it matches (select.Pattern.hits)
        self.pattern_modules: dict = {}  # pattern text -> which modules it covers (select.Pattern.module_hits)

    @property
    def model(self):
        return self._model()

    @property
    def inner(self):
        """The model inside its wrappers (the root of ``modules``)."""
        return self._inner()

    # --- structure ------------------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """``ResNet (torch)``, or ``ResNet in DistributedDataParallel (torch)`` for a wrapped model."""
        inside = f" in {' in '.join(self.wrappers)}" if self.wrappers else ""
        return f"{type(self.inner).__name__}{inside} ({self.adapter.name})"

    @cached_property
    def index(self) -> dict[str, int]:
        """Parameter name -> its position in ``params`` / ``names``."""
        return {n: i for i, n in enumerate(self.names)}

    @cached_property
    def module_index(self) -> dict[str, int]:
        """Module path -> its position in ``paths`` / ``modules``."""
        return {p: i for i, p in enumerate(self.paths)}

    @cached_property
    def parent(self) -> np.ndarray:
        """Each module's parent (its position in ``modules``), -1 for the root."""
        index, paths = self.module_index, self.paths
        out = np.asarray([index.get(p.rpartition(".")[0], -1) if p else -1 for p in paths], dtype=np.int64)
        for i in np.flatnonzero(out < 0).tolist():  # the root, and paths whose direct parent is not a module
            path = paths[i]
            while path and out[i] < 0:
                path = path.rpartition(".")[0]
                out[i] = index.get(path, -1)
        return out

    @cached_property
    def kinds(self) -> list:
        return [self.adapter.module_kind(m) for m in self.modules]

    @cached_property
    def type_names(self) -> list:
        """Per module: its class names (MRO) and its framework-neutral kind."""
        by_type: dict = {}
        out = []
        for module, kind in zip(self.modules, self.kinds):
            key = (type(module), kind)
            if key not in by_type:
                by_type[key] = frozenset(self.adapter.class_names(module)) | ({kind} if kind else frozenset())
            out.append(by_type[key])
        return out

    @cached_property
    def owner_array(self) -> np.ndarray:
        return np.asarray(self.owner, dtype=np.int64)

    @cached_property
    def sharded(self) -> dict:
        """``{name: (full elements, elements on this rank)}`` under FSDP1/FSDP2, else empty."""
        return self.adapter.sharded_sizes(self.model)

    @cached_property
    def numels(self) -> np.ndarray:
        """Elements of each parameter: the whole (logical) tensor, also when it is sharded across ranks."""
        own = list(map(self.adapter.numel, self.params))  # hot: once per view, on the first report
        if self.sharded:
            own = [self.sharded.get(n, (k, k))[0] for n, k in zip(self.names, own)]
        return np.asarray(own, dtype=np.int64)

    @cached_property
    def local_numels(self) -> np.ndarray:
        """Elements of each parameter held by this rank (= ``numels`` when nothing is sharded)."""
        if not self.sharded:
            return self.numels
        return np.asarray([self.sharded.get(n, (k, k))[1] for n, k in zip(self.names, self.numels)], dtype=np.int64)

    @cached_property
    def nbytes(self) -> np.ndarray:
        """Bytes of each parameter, whole (logical) tensors."""
        sizes = np.fromiter(map(self.adapter.element_size, self.params), dtype=np.int64, count=len(self.params))
        return self.numels * sizes

    @cached_property
    def shapes(self) -> list:
        return [tuple(int(n) for n in self.adapter.full_shape(p)) for p in self.params]

    @cached_property
    def dtypes(self) -> list:
        return [self.adapter.tensor_dtype(p) for p in self.params]

    @cached_property
    def stat_modules(self) -> set:
        """Indices of modules that keep norm statistics."""
        return set(self.stat_owner)

    def ancestors(self, module_index: int) -> list:
        """Module indices from the root down to ``module_index``."""
        chain = []
        i = module_index
        while i >= 0:
            chain.append(i)
            i = int(self.parent[i])
        return chain[::-1]

    def direct(self, module_index: int) -> list:
        """Parameter indices owned directly by a module."""
        return self._by_owner.get(module_index, [])

    def statistics(self, module_index: int) -> list:
        """Indices (into ``stat_names``, ``stat_keys``, ``stat_tensors``) of a module's norm statistics."""
        return self._stats_by_owner.get(module_index, [])

    @cached_property
    def _by_owner(self) -> dict:
        return _group_by(self.owner)

    @cached_property
    def _stats_by_owner(self) -> dict:
        return _group_by(self.stat_owner)

    def key_info(self) -> dict:
        """State key -> (module kind, embedding padding index) for every parameter and statistic."""
        info = {}
        for name, mi in zip(self.names, self.owner):
            info[name] = (self.kinds[mi], self.adapter.padding_idx(self.modules[mi]))
        for name, mi in zip(self.stat_keys, self.stat_owner):
            info[name] = (self.kinds[mi], None)
        for name in self.adapter.state_keys(self):
            info.setdefault(name, (None, None))
        return info

    # --- live state -----------------------------------------------------------------------------------------
    def trainable(self) -> np.ndarray:
        """The live trainability of every parameter (a fresh read, never cached)."""
        return np.fromiter(self.adapter.trainable_flags(self.params), dtype=bool, count=len(self.params))


def _weak(obj):
    """A weak reference, or a strong one for an object that cannot be weakly referenced (it is not cached either)."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


class _Modules(list):
    """The view's modules in walk order, the first (the root: the model itself, when it is not wrapped) held weakly
    (see :class:`ModelView`). Indexing and iteration give the module objects."""

    def __init__(self, modules: list):
        super().__init__([None, *modules[1:]] if modules else [])
        self._root = _weak(modules[0]) if modules else None

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if self._root is not None and (i == 0 or i == -len(self)):
            return self._root()
        return list.__getitem__(self, i)

    def __iter__(self):
        items = list.__iter__(self)
        if self._root is None:
            return items
        next(items)
        return itertools.chain((self._root(),), items)


def _group_by(owners: list) -> dict:
    """Module index -> the positions in ``owners`` that belong to it, in order."""
    out: dict = {}
    for i, mi in enumerate(owners):
        out.setdefault(mi, []).append(i)
    return out


def _join(path: str, local: str) -> str:
    return f"{path}.{local}" if path else local


_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


# id(model) -> view checked in the current batch (see `batched`); None outside one
_checked: contextvars.ContextVar[dict | None] = contextvars.ContextVar("xfreeze_views_checked", default=None)


def view_of(model, backend: str | None = None) -> ModelView:
    """The cached view of ``model``; rebuilt when its modules or parameters changed since it was built."""
    adapter = adapter_for(model, backend)
    checked = _checked.get()
    if checked is not None:
        seen = checked.get(id(model))
        if seen is not None and seen.model is model and seen.adapter is adapter:
            return seen  # checked earlier in this batch, and xfreeze's own steps change no structure
    try:
        cached = _cache.get(model)
    except TypeError:  # an object that cannot be weakly referenced: no caching
        cached = None
    if cached is None or cached.adapter is not adapter or adapter.structure_token(model) != cached.token:
        with _gc_paused():  # a walk allocates one small tuple per tensor: on 100k tensors the collector's passes
            cached = ModelView(model, adapter, adapter.walk(model))  # over a large heap cost more than the walk
        try:
            _cache[model] = cached
        except TypeError:
            pass
    if checked is not None:
        checked[id(model)] = cached
    return cached


def batched(fn):
    """Run ``fn`` as one batch: a model's view is checked against the model (its structure token, O(modules)) the
    first time it is asked for, not at every internal step. For xfreeze operations made of many steps that change
    trainability and optimizer groups but never the module structure (staged boundaries, group building, checks)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if _checked.get() is not None:
            return fn(*args, **kwargs)
        token = _checked.set({})
        try:
            return fn(*args, **kwargs)
        finally:
            _checked.reset(token)

    return run


@contextmanager
def _gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def invalidate(model) -> None:
    """Forget the cached view of ``model`` (after xfreeze itself changed its structure)."""
    checked = _checked.get()
    if checked is not None:
        checked.pop(id(model), None)
    try:
        _cache.pop(model, None)
    except TypeError:
        pass

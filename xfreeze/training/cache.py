"""FeatureCache: run the frozen part of a model once per sample, and train its head on the stored features.

A model whose parameters before its head are all frozen, whose norm layers there are locked (``xfreeze.freeze``
locks them) and which has no active stochastic layer there (dropout, drop-path) gives the same head input for the
same sample at every epoch. The cache computes that input once per sample index (the head's forward pre-hook), keeps
it in memory or in a memory-mapped file, and from then on runs only the head. It is keyed by the frozen fingerprint
of the prefix: a cheap check on every call (structure, trainability, norm locks, version counters) and a full hash
of the prefix's tensors at the first fill, after :meth:`FeatureCache.fill`, at :meth:`FeatureCache.verify` and once
per pass over the data. A prefix whose weights changed is refused, naming the first changed tensor; a prefix a
stage made trainable (``StagedUnfreeze``) drops the cache, and the model runs live from then on.
"""

from __future__ import annotations


import numpy as np

from ..core import tensors as _tensors
from ..core.errors import XFreezeError
from ..core.tensors import FLOAT_DTYPES, Raw
from ..model.view import view_of
from .cache_checks import check_every, check_int, check_size, check_storage, digests, head_path
from .cache_checks import refuse_unfit, sample, with_progress
from .cache_store import MEMORY_LIMIT, FeatureStore


class FeatureCache:
    """The frozen prefix of a model, computed once per sample: train the head on stored features.

    ``cache(x, indices)`` returns what ``model(x)`` returns, with the prefix read from the cache: on the first sight
    of an index the prefix runs (without autograd) and its output is stored; afterwards only the head runs. The
    inputs must be deterministic per index (no random augmentation: that is the caller's responsibility; the cache
    cannot see the data pipeline). ``x`` may be None once every index of the batch is filled.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer`` whose head is its last computation (its output is the
            model's output) and whose parameters before the head are frozen, norms locked.
        head: the head's module name (``"fc"``, ``"classifier"``), or ``"auto"`` (as :func:`xfreeze.replace_head`).
        size: the number of samples (indices run from 0 to ``size - 1``).
        storage: ``"memory"`` (default; past ``memory_limit`` bytes it spills to a memory-mapped temporary file) or a
            file path for a memory-mapped ``.npy`` file (overwritten; allocated in full at the first fill).
        dtype: the stored dtype (``"bfloat16"`` halves float32 features; the head gets them in its own dtype).
            Default: the features' own dtype, which keeps training bit for bit equal to a live run.
        memory_limit: bytes of features held in memory before spilling to disk.
        verify_every: ``"pass"`` (default): hash the prefix once per ``size`` samples served, catching writes no
            version counter sees (Paddle's ``set_value``, torch's ``p.data.copy_``); an integer: every that many
            samples; None: only the cheap per-call check.
        progress: show a progress bar in :meth:`fill` (tqdm).
        backend: force ``"torch"`` or ``"paddle"``.

    Raises:
        XFreezeError: a head that is not a module of the model, a prefix with a trainable parameter, an unlocked
            norm layer or an active stochastic layer, a bad ``size`` / ``storage`` / ``dtype`` / ``verify_every``.
            Nothing is changed then.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> _ = xfreeze.freeze(model, "*", "!2")
        >>> cache = xfreeze.FeatureCache(model, head="2", size=10)
        >>> x = torch.randn(5, 4)
        >>> torch.equal(cache(x, [0, 1, 2, 3, 4]), model(x)), cache.filled
        (True, 5)
        >>> cache(None, [0, 1]).shape   # filled indices need no inputs
        torch.Size([2, 2])
    """

    def __init__(
        self,
        model,
        head="auto",
        *,
        size: int,
        storage="memory",
        dtype: str | None = None,
        memory_limit: int = MEMORY_LIMIT,
        verify_every="pass",
        progress: bool = True,
        backend: str | None = None,
    ):
        view = view_of(model, backend)
        self.adapter, self.model, self.progress = view.adapter, model, progress
        self.head = head_path(view, head)
        self.size = check_size(size)
        check_storage(storage)
        check_int("memory_limit", memory_limit, 0)
        self.every = check_every(verify_every, self.size)
        if dtype is not None and (dtype not in FLOAT_DTYPES or dtype not in self.adapter.DTYPES):
            supported = tuple(d for d in FLOAT_DTYPES if d in self.adapter.DTYPES)
            raise XFreezeError(f"Expected one of {supported} or None. Received: dtype={dtype!r}")
        self.dtype = dtype
        self._bind(view, refuse=True)
        self.store = FeatureStore(self.size, storage, memory_limit)
        self.dropped: str | None = None  # why the cache was dropped (the model then runs live)
        self.served = 0  # samples served from the cache
        self._digests: dict | None = None  # the prefix's fingerprint, taken at the first write
        self._next_verify = 0
        self._probed = False  # the first fill batch checks the head's output and determinism

    # --- public -----------------------------------------------------------------------------------------------
    @property
    def filled(self) -> int:
        """How many samples hold features."""
        return int(self.store.filled.sum())

    @property
    def head_module(self):
        """The head: what runs on the cached features."""
        return self._head

    def __call__(self, inputs, indices):
        """``model(inputs)``, the prefix read from the cache (run live once the cache was dropped)."""
        self.check()
        if self.dropped:
            return self.model(inputs)
        return self._head(self._cached(inputs, indices))

    def features(self, inputs, indices):
        """The prefix's output (the head's input) for the batch: from the cache, or computed live (with autograd)
        once the cache was dropped."""
        self.check()
        if self.dropped:
            return self._one_tensor(self.adapter.inputs_of(self.model, self._head, (inputs,), grad=True))
        return self._cached(inputs, indices)

    def fill(self, batches, *, select=None) -> int:
        """Compute the features of every sample ``batches`` yields that is not filled yet, with a progress bar.

        Args:
            batches: an iterable (a data loader) of batches; by default a batch is a tuple or list whose first item
                is the model's input and whose last item is the sample indices (``(x, y, index)``).
            select: ``batch -> (inputs, indices)`` for batches of another shape (a dict, ...).

        Returns:
            int: samples filled after the pass.

        Raises:
            XFreezeError: as :meth:`__call__` (an index outside the cache, a stale or dropped cache, a full disk).
        """
        for batch in with_progress(batches, self.progress):
            inputs, indices = select(batch) if select is not None else (batch[0], batch[-1])
            self.check()
            if self.dropped:
                raise XFreezeError(f"FeatureCache.fill: the cache was dropped ({self.dropped}); the model runs live")
            idx = self._indices(indices, inputs)
            if not self.store.filled[idx].all():
                self._fill(inputs, idx)
        if self._digests is not None:
            self.verify()
            self._next_verify = self.served  # and once more at the first batch served: weights loaded in between
        return self.filled

    def check(self) -> None:
        """The cheap check every call runs: structure, trainability, norm locks and version counters of the
        prefix. Drops the cache when the prefix trains or a lock was released; refuses a prefix whose weights
        changed since the features were computed."""
        if self.dropped:
            return
        if not all(reg.get(key) is obj if key is not None else len(reg) == obj for reg, key, obj in self._slots):
            self._bind(view_of(self.model, self.adapter.name), refuse=False)
        trains = [n for n, t in zip(self._param_names, self.adapter.trainable_flags(self._params)) if t]
        unlocked = [p for p, m in self._norms if not self.adapter.is_norm_locked(m)]
        if trains or unlocked:
            what = f"{sample(trains)} now train" if trains else f"the norm layers {sample(unlocked)} are unlocked"
            self._drop(f"{what}: the prefix is no longer frozen")
            return
        if self._digests is None:
            return
        tokens = self.adapter.change_tokens(self._tensors)
        if tokens != self._tokens:
            changed = [n for n, a, b in zip(self._names, tokens, self._tokens) if a != b]
            self._compare(changed)
            self._tokens = tokens

    def verify(self) -> int:
        """Hash every tensor of the prefix and compare with the fingerprint taken when the features were computed.

        Returns:
            int: tensors checked (0 before anything was filled).

        Raises:
            XFreezeError: a tensor changed (the first ones named); the cache stays refused until :meth:`clear`.
        """
        self.check()
        if self._digests is None or self.dropped:
            return 0
        self._compare(self._names)
        self._next_verify = self.served + (self.every or 0)
        return len(self._names)

    def clear(self) -> None:
        """Forget every feature (and the fingerprint): the next calls fill again from the current weights."""
        self.store.close()
        self._digests, self._probed = None, False

    # --- the cache --------------------------------------------------------------------------------------------
    def _cached(self, inputs, indices):
        idx = self._indices(indices, inputs)
        if not self.store.filled[idx].all():
            if inputs is None:
                first = int(idx[~self.store.filled[idx]][0])
                raise XFreezeError(
                    f"FeatureCache: sample {first} is not filled yet and inputs is None; pass the batch's inputs "
                    "or call cache.fill(loader) first"
                )
            self._fill(inputs, idx)
        elif self.every and self.served >= self._next_verify:
            self.verify()
        self.served += len(idx)
        bits = self.store.read(idx)
        value = self.adapter.from_raw(Raw(np.ascontiguousarray(bits), self._dtype))
        return value if self._like is None else self.adapter.like(value, self._like)

    def _fill(self, inputs, idx: np.ndarray) -> None:
        features = self._run(inputs)
        if self.dtype is not None and self.adapter.tensor_dtype(features) != self.dtype:
            features = self.adapter.cast(features, self.dtype)
        raw = self.adapter.to_raw(features)
        if raw.bits.ndim == 0 or raw.bits.shape[0] != len(idx):
            raise XFreezeError(
                f"FeatureCache: indices has {len(idx)} entries, the head's input {list(raw.bits.shape)} rows; "
                "give one sample index per row of the batch"
            )
        if self.store.allocated and self.store.rows.shape[1:] != raw.bits.shape[1:]:  # type: ignore[union-attr]
            raise XFreezeError(
                f"FeatureCache: the head's input has shape {list(raw.bits.shape[1:])} per sample, the cache holds "
                f"{list(self.store.rows.shape[1:])}: inputs of another size give other features; clear() first"  # type: ignore[union-attr]
            )
        if self._digests is None:  # the fingerprint of the weights that computed these features
            self._digests = digests(self.adapter, self._names, self._tensors)
            self._tokens = self.adapter.change_tokens(self._tensors)
            self._next_verify = self.served + (self.every or 0)
        if not self.store.allocated:
            self.store.allocate(raw.bits.shape[1:], raw.bits.dtype)
        self._dtype = raw.dtype
        new = ~self.store.filled[idx]
        self.store.write(idx[new], raw.bits[new])

    def _run(self, inputs):
        """The head's input for ``inputs``; the first time also checks that the head's output is the model's
        output and that the prefix gives the same features twice."""
        if self._probed:
            return self._one_tensor(self.adapter.inputs_of(self.model, self._head, (inputs,)))
        args, head_out, out = self.adapter.outputs_of(self.model, self._head, (inputs,))
        first = self._one_tensor(args)
        if out is not head_out:
            raise XFreezeError(
                f"FeatureCache: {self._label} computes something after its head {self.head!r} (the model's "
                f"output is not the head's output), so head(features) would not be model(x).\nHINT: name as head "
                "the module whose output the model returns"
            )
        again = self._one_tensor(self.adapter.inputs_of(self.model, self._head, (inputs,)))
        a, b = (_tensors.to_numpy(self.adapter.cast(t, "float64")) for t in (first, again))
        if not np.allclose(a, b, rtol=1e-4, atol=1e-6 * float(np.nanmax(np.abs(a), initial=0.0)), equal_nan=True):
            raise XFreezeError(
                f"FeatureCache: the part of {self._label} before {self.head!r} gave different features for the same "
                f"batch twice (largest difference {float(np.abs(a - b).max()):.3g}): something in it is random "
                "(a functional dropout, noise); cached features would be one draw reused every epoch"
            )
        self._probed = True
        return again

    def _one_tensor(self, args):
        if args is None:
            raise XFreezeError(f"FeatureCache: the forward of {self._label} never called its head {self.head!r}")
        if len(args) != 1 or not _tensors.is_tensor(args[0]):
            raise XFreezeError(
                f"FeatureCache: the head {self.head!r} of {self._label} takes {len(args)} arguments; a cached "
                "prefix needs a head that takes one tensor"
            )
        return args[0]

    def _indices(self, indices, inputs) -> np.ndarray:
        array = _tensors.to_numpy(indices, "indices") if _tensors.is_tensor(indices) else np.asarray(indices)
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise XFreezeError(
                f"FeatureCache: indices must be a 1-D sequence of integer sample indices. Received: indices of "
                f"shape {list(array.shape)} and dtype {array.dtype}"
            )
        outside = array[(array < 0) | (array >= self.size)]
        if outside.size:
            raise XFreezeError(
                f"FeatureCache(size={self.size}): sample index {int(outside[0])} is outside the cache (0 to "
                f"{self.size - 1}); nothing was computed.\nHINT: size= is the dataset's length, and indices its "
                "positions (a Dataset that returns its index with each sample)"
            )
        rows = _tensors.shape_of(inputs)[0] if _tensors.is_tensor(inputs) and _tensors.shape_of(inputs) else None
        if rows is not None and rows != len(array):
            raise XFreezeError(f"FeatureCache: {len(array)} indices for a batch of {rows} samples; give one each")
        return array.astype(np.int64, copy=False)

    # --- the prefix and its fingerprint ------------------------------------------------------------------------
    def _bind(self, view, refuse: bool) -> None:
        """Read the prefix from the view: what must be frozen, locked and deterministic; at construction a problem
        is refused, later (a wrapper or the user swapped modules) the fingerprint decides."""
        if self.head not in view.module_index:
            raise XFreezeError(f"FeatureCache: {view.label} no longer has the head module {self.head!r}")
        head = self.head
        inside = [p == head or p.startswith(head + ".") for p in view.paths]
        prefix = [i for i, mi in enumerate(view.owner) if not inside[mi]]
        stats = [j for j, mi in enumerate(view.stat_owner) if not inside[mi]]
        live = view.trainable()
        self._label = view.label
        refuse_unfit(view, head, inside, [view.names[i] for i in prefix if live[i]], refuse)
        names = [view.names[i] for i in prefix] + [view.stat_names[j] for j in stats]
        if not refuse and self._digests is not None and names != self._names:
            raise XFreezeError(
                f"FeatureCache: the modules of {view.label} before {head!r} changed since the features were "
                f"computed ({sample(sorted(set(names) ^ set(self._names)))}); nothing was trained on stale "
                "features.\nHINT: cache.clear() to fill again from the new model"
            )
        self._names, self._param_names = names, [view.names[i] for i in prefix]
        self._params = [view.params[i] for i in prefix]
        self._tensors = self._params + [view.stat_tensors[j] for j in stats]
        self._norms = [(view.paths[mi], view.modules[mi]) for mi in sorted(view.stat_modules) if not inside[mi]]
        head_mi = view.module_index[head]
        self._head = view.modules[head_mi]
        own = [view.params[i] for i, mi in enumerate(view.owner) if inside[mi]]
        self._like = own[0] if own else None
        self._slots = self.adapter.registrations(view)
        if not refuse and self._digests is not None:
            self._compare(self._names)  # the same tensors by name: a module moved or wrapped keeps its bits
            self._tokens = self.adapter.change_tokens(self._tensors)

    def _compare(self, names: list) -> None:
        index = {n: i for i, n in enumerate(self._names)}
        now = digests(self.adapter, names, [self._tensors[index[n]] for n in names])
        assert self._digests is not None
        changed = [n for n in names if now[n] != self._digests[n]]
        if changed:
            raise XFreezeError(
                f"FeatureCache: {changed[0]} of {self._label} changed since the features were computed"
                f"{f' (and {len(changed) - 1} more: {sample(changed[1:])})' if len(changed) > 1 else ''}: the "
                "cached features are stale and nothing was trained on them.\nHINT: load the weights before "
                "filling, or cache.clear() to fill again from the current weights"
            )

    def _drop(self, reason: str) -> None:
        self.dropped = reason
        self.store.close()
        self._digests = None

    _dtype = ""  # the stored features' neutral dtype, known at the first fill
    _names: list  # the prefix's parameters and statistics (what the fingerprint covers), in model order
    _param_names: list
    _params: list
    _tensors: list
    _norms: list  # (path, module) of the norm layers before the head that keep statistics
    _slots: list  # registry entries re-checked on every call (EMA's check of a swapped tensor or module)
    _tokens: list

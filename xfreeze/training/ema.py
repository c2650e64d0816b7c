"""EMA: an exponential moving average of the weights that never moves what is frozen, and costs what trains."""

from __future__ import annotations

import numbers

from . import ema_rows as _rows
from ..core import tensors as _tensors
from ..core.errors import XFreezeError
from ..model import slices as _slices
from ..model.view import view_of

STATE_VERSION = 1


class EMA:
    """Exponential moving average of a model's weights that respects freezing; its cost is the trainable bytes.

    ``update()`` averages only the parameters that train (``e + (1 - d) * (m - e)``, a lerp, so an unchanged
    weight stays bit-for-bit unchanged). A frozen parameter, and the statistics of a locked norm layer, hold no copy:
    their shadow *is* the model's tensor while they stay frozen / locked, so they cost no memory and no time per
    update and are always bitwise the model's (the naive ``d * e + (1 - d) * m`` drifts through float rounding even
    when ``e == m``). Statistics of norm layers that are not locked are copied at each update, never averaged (they
    already are running averages of batch statistics; averaging them again only adds lag).

    Which tensors the EMA holds is a plan recomputed only when trainability or a lock changes. A tensor made
    trainable gets its own shadow then, a copy of its value when the EMA sees the change (:meth:`refresh`, or the
    next ``update`` / ``copy_to`` / ``state_dict``); a tensor frozen again drops its average, and its shadow is the
    model's tensor again (what ``copy_to`` would have written anyway: frozen weights are the model's). Each update
    is one fused lerp (and one fused copy of the live statistics) where the framework has them.

    Row splits (``unfreeze(model, "embed.weight[32000:]")``) are followed the same way: the rows parameter gets its
    own shadow at the boundary, the whole tensor stays the model's own, and rows that had an average keep it when a
    trainable tensor is split, a split joins back into a trainable whole, or other rows are chosen.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        decay: in (0, 1).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early averages are not dominated by
            the initial weights.
        backend: force ``"torch"`` or ``"paddle"``.

    Raises:
        XFreezeError: ``decay`` outside (0, 1), a non-bool ``warmup``, or not a model; later, from any method, a
            tensor added, removed or renamed in the model (not a row split): build a new EMA then.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Linear(3, 2)
        >>> ema = xfreeze.EMA(model, decay=0.9)
        >>> ema.update(); ema.num_updates
        1
    """

    def __init__(self, model, decay: float = 0.999, *, warmup: bool = False, backend: str | None = None):
        _check_decay(decay)
        if not isinstance(warmup, bool):
            raise XFreezeError(f"warmup must be True or False. Received: warmup={warmup!r}")
        view = view_of(model, backend)
        self.adapter, self.model, self.decay, self.warmup, self.num_updates = (
            view.adapter,
            model,
            float(decay),
            warmup,
            0,
        )
        self.names = list(view.names) + list(view.stat_names)
        self.shadow: dict = {}  # name -> its own average, or the model's tensor itself (frozen / locked)
        self._owned: set[str] = set()  # the names whose shadow the EMA holds itself
        self._probes: list[int] = []
        self._rows_of: dict = {}  # rows parameter name -> the rows of which whole tensor it holds (row splits)
        self._stash: dict = {}  # whole tensor name -> (average, rows, axis) of a split gone at this boundary
        self._rows_by_base: dict = {}
        self._bind(view)
        self._current_plan()

    def _bind(self, view) -> None:
        """Follow the model's current tensors (again after a wrapper such as FSDP2's fully_shard swapped them)."""
        names = list(view.names) + list(view.stat_names)
        rows_of = _rows.split_names(view)
        if names != self.names:  # a row split appeared, changed or joined back (anything else is refused)
            _rows.check_followable(self.names, names, self._rows_of, rows_of, view.label)
            self._drop_gone(set(names))
            self.names = names
        self._rows_of = rows_of
        self._rows_by_base = {split.base: rows for rows, split in rows_of.items()}  # whole tensor -> its rows
        self._params, self._stats = list(view.params), list(view.stat_tensors)
        norms: dict[int, int] = {}  # a norm layer's position in self._norms, by module index
        for mi in view.stat_owner:
            norms.setdefault(mi, len(norms))
        self._norms = [view.modules[mi] for mi in norms]
        self._stat_norm = [norms[mi] for mi in view.stat_owner]
        for name, tensor in zip(self.names, self._params + self._stats):
            owned = name in self._owned
            self.shadow[name] = self.adapter.like(self.shadow[name], tensor) if owned else tensor
        self._slots = self.adapter.registrations(view)
        self._mask: tuple | None = None
        self._plan: tuple = ()

    def _drop_gone(self, names: set) -> None:
        """Forget the rows parameters gone from the model (a split joined back or changed), keeping the average of
        their rows until the next plan (a tensor made trainable there continues it)."""
        for name in [n for n in self.names if n not in names]:
            split = self._rows_of[name]
            if name in self._owned:
                self._stash[split.base] = (self.shadow[name], split.rows, split.axis)
            self._owned.discard(name)
            del self.shadow[name]

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def update(self) -> None:
        """Fold the model's current weights into the average (call after each optimizer step)."""
        averages, values, copies, sources = self._current_plan()
        self.adapter.ema_update(averages, values, 1.0 - self.current_decay())
        self.adapter.copy_into(copies, sources)
        self.num_updates += 1

    def refresh(self) -> None:
        """Take trainability and lock changes now: a tensor made trainable gets its own shadow, a copy of its value
        at this moment; one frozen (a norm locked) again shares the model's tensor. ``update``, ``copy_to`` and
        ``state_dict`` do this themselves; call it right after an ``unfreeze`` (a stage boundary) for the averages
        to start from the values at the boundary rather than after the first step of the new stage.

        Example:
            >>> import torch, xfreeze
            >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
            >>> _ = xfreeze.freeze(model, "0")
            >>> ema = xfreeze.EMA(model)
            >>> _ = xfreeze.unfreeze(model, "0")
            >>> ema.refresh(); ema.held_bytes
            80
        """
        self._current_plan()

    @property
    def held_bytes(self) -> int:
        """Bytes of the shadows the EMA holds itself (trainable parameters, live statistics); frozen parameters
        and locked statistics cost none. As of the last plan (:meth:`refresh` updates it)."""
        return sum(self.adapter.nbytes(self.shadow[name]) for name in self._owned)

    def _follow(self) -> None:
        """Rebind when a wrapper swapped tensors (identity check), or when the model was moved or cast since (the
        first and last shadows it holds probed: Lightning moves and converts the module after the callback built
        the EMA; ``model.to(...)`` / ``.half()`` keep the parameter objects)."""
        tensors = self._params + self._stats
        if not all(
            registry.get(key) is obj if key is not None else len(registry) == obj for registry, key, obj in self._slots
        ) or not all(self.adapter.same_layout(self.shadow[self.names[i]], tensors[i]) for i in self._probes):
            self._bind(view_of(self.model, self.adapter.name))

    def _ownership(self) -> tuple:
        """Per tensor, whether the EMA holds a shadow of its own: trainable parameters, statistics of unlocked norms."""
        locked = [self.adapter.is_norm_locked(m) for m in self._norms]
        return tuple(self.adapter.trainable_flags(self._params)) + tuple(not locked[i] for i in self._stat_norm)

    def _current_plan(self) -> tuple:
        self._follow()
        mask = self._ownership()
        if mask != self._mask:  # trainability or a lock changed (or first use): hold and share again
            self._replan(mask)
        return self._plan

    def _replan(self, mask: tuple) -> None:
        tensors = self._params + self._stats
        starts = {  # made trainable (or unlocked): its average starts from its value now (rows with one keep it)
            name: _rows.start(self.adapter, name, tensor, self._rows_of, self.shadow, self._owned, self._stash)
            for name, tensor, own in zip(self.names, tensors, mask)
            if own and name not in self._owned
        }
        self._stash = {}
        for name, tensor, own in zip(self.names, tensors, mask):
            if not own:  # frozen / locked: the model's own tensor is its shadow (the average, if any, dropped)
                self.shadow[name] = tensor
                self._owned.discard(name)
            elif name in starts:
                self.shadow[name] = starts[name]
                self._owned.add(name)
        n = len(self._params)
        lerp = [i for i in range(n) if mask[i]]
        copy = [i for i in range(n, len(tensors)) if mask[i]]
        held = lerp + copy
        self._probes = sorted({held[0], held[-1]}) if held else []
        self._plan = (
            [self.shadow[self.names[i]] for i in lerp],
            [tensors[i] for i in lerp],
            [self.shadow[self.names[i]] for i in copy],
            [tensors[i] for i in copy],
        )
        self._mask = mask

    def copy_to(self, model=None) -> None:
        """Write the averaged weights into ``model`` (default: the tracked model), e.g. an evaluation copy.

        Every shadow is written; into the tracked model only the ones the EMA holds (its frozen tensors already are
        their own shadows). A tensor split by rows (:mod:`xfreeze.model.slices`) is written whole where ``model``
        does not split it the same way: its frozen rows and the averaged rows; a split of ``model`` takes its rows
        from that, and its whole tensor follows its rows.

        Raises:
            XFreezeError: ``model`` is not a model, or not the same architecture (a name, shape or dtype differs);
                nothing is written then.
        """
        target = self.model if model is None else model
        try:
            view = view_of(target, self.adapter.name)
        except XFreezeError as exc:
            raise XFreezeError(f"EMA.copy_to(model): {exc}") from None
        self._current_plan()  # first: the EMA's tensors follow the tracked model's splits
        tensors = dict(zip(list(view.names) + list(view.stat_names), list(view.params) + list(view.stat_tensors)))
        theirs = _rows.split_names(view)
        missing = sorted(n for n in self.names if n not in tensors and self._base_of(n) not in tensors)
        if missing:
            raise XFreezeError(
                f"EMA.copy_to: {view.label} lacks {missing[:5]}: it is not the same architecture as "
                "the averaged model; nothing was written"
            )
        self._check_like(tensors, "EMA.copy_to", "the averaged model")
        wholes: dict = {}
        pairs = []
        for name, tensor in tensors.items():
            if name in self.shadow:
                mine = self._rows_by_base.get(name)
                value = self.shadow[name] if mine is None or mine in tensors else self._whole(name, wholes)
            elif name in theirs and theirs[name].base in self.shadow:  # the model splits other rows: take them
                rows = theirs[name]
                value = _rows.take(self.adapter, self._whole(rows.base, wholes), rows.rows, rows.axis, tensor)
            else:
                continue
            if tensor is not value:
                pairs.append((tensor, value))
        self.adapter.copy_into([t for t, _ in pairs], [s for _, s in pairs])
        holders = {mi for split in _slices.splits(view).values() for mi, _ in split.registrations}
        for mi in sorted(holders):  # the whole tensors follow their (averaged) rows
            self.adapter.sync_rows(view.modules[mi])

    def state_dict(self) -> dict:
        """The average, in the format every xfreeze version writes (``version`` 1, a shadow for every tensor).

        The shadows the EMA holds are copied; a frozen tensor's entry is the model's own tensor (no copy, as in a
        module's ``state_dict()``): save the dict, or deep-copy it to keep it in memory past a later unfreeze. The
        entry of a tensor split by rows is a copy of the whole tensor with the averaged rows in it (so it loads
        into a model split otherwise, or not at all); its rows parameter's entry holds the averaged rows.
        """
        self._current_plan()
        wholes: dict = {}
        shadow = {}
        for name in self.names:
            if name in self._owned:
                shadow[name] = self.adapter.clone(self.shadow[name])
            elif name in self._rows_by_base:
                shadow[name] = self._whole(name, wholes)
            else:
                shadow[name] = self.adapter.alias(self.shadow[name])
        return {
            "version": STATE_VERSION,
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": shadow,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved average. Everything is validated first (keys, shapes, dtypes, numbers); on an error
        nothing is written. The entries of tensors that are frozen (locked) now are not read: the model's own
        tensors are their shadows (a state saved by an older xfreeze, with copies of them, loads alike). A state
        saved before the model's rows were split (or with other rows) loads too: the rows come from the whole
        tensor's entry."""
        if not isinstance(state, dict) or not isinstance(state.get("shadow"), dict):
            raise XFreezeError("EMA.load_state_dict expects the dict EMA.state_dict() returned (with 'shadow')")
        version = state.get("version", 1)
        if version != STATE_VERSION:
            raise XFreezeError(f"EMA state version {version!r} is not supported (this xfreeze writes {STATE_VERSION})")
        _check_decay(state.get("decay"))
        if not isinstance(state.get("warmup"), bool):
            raise XFreezeError(f"EMA state: warmup must be a bool. Received: {state.get('warmup')!r}")
        n = state.get("num_updates")
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise XFreezeError(f"EMA state: num_updates must be an integer >= 0. Received: {n!r}")
        self._follow()  # the EMA's tensors follow the model's splits, in its current device and dtype
        saved, names = state["shadow"], set(self.names)
        unknown = [k for k in saved if k not in names and _slices.base_name(str(k)) not in names]
        unknown += [k for k in self.names if k not in saved and self._base_of(k) not in saved]
        if unknown:
            raise XFreezeError(
                f"EMA.load_state_dict: keys differ from the model's: {sorted(map(str, unknown))[:5]}; nothing was "
                "loaded"
            )
        self._check_like(saved, "EMA.load_state_dict", "the saved average")
        mask = self._ownership()
        tensors = dict(zip(self.names, self._params + self._stats))
        held = [name for name, own in zip(self.names, mask) if own]
        values = [self._saved_value(saved, k, tensors[k]) for k in held]
        if mask != self._mask:
            self._replan(mask)
        self.adapter.copy_into([self.shadow[k] for k in held], values)
        self.decay, self.warmup, self.num_updates = float(state["decay"]), state["warmup"], int(n)

    def _saved_value(self, saved: dict, name: str, tensor):
        """A held tensor's value in a saved state: its own entry, or a rows parameter's rows of the whole entry."""
        if name in saved:
            return _tensors.to_backend(saved[name], self.adapter.name, name)
        split = self._rows_of[name]
        return _rows.take(self.adapter, saved[split.base], split.rows, split.axis, tensor)

    def _base_of(self, name: str) -> str | None:
        """The whole tensor a rows parameter holds rows of, else None."""
        split = self._rows_of.get(name)
        return split.base if split is not None else None

    def _whole(self, name: str, cache: dict):
        """A tensor's average, whole: for a split one, its frozen rows (the model's) and its rows' shadow."""
        rows = self._rows_by_base.get(name)
        if rows is None:
            return self.shadow[name]
        if name not in cache:
            cache[name] = _rows.whole(self.adapter, self.shadow[name], self.shadow[rows], self._rows_of[rows])
        return cache[name]

    def _check_like(self, tensors: dict, where: str, what: str) -> None:
        for name in self.names:
            if name not in tensors:  # a rows parameter the other side does not split alike: checked by its whole
                continue
            mine, theirs = self.shadow[name], tensors[name]
            a, b = _tensors.shape_of(mine), _tensors.shape_of(theirs)
            if a != b:
                raise XFreezeError(
                    f"{where}: {name!r} has shape {list(b)} where {what} has {list(a)}; nothing was written"
                )


def _check_decay(decay) -> None:
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0.0 < float(decay) < 1.0:
        raise XFreezeError(f"decay must be a number in (0, 1). Received: decay={decay!r}")

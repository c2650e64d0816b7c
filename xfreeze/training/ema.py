"""EMA: an exponential moving average of the weights that never moves what is frozen."""

from __future__ import annotations

import numbers


from ..core import tensors as _tensors
from ..core.errors import XFreezeError
from ..model.view import view_of

STATE_VERSION = 1


class EMA:
    """Exponential moving average of a model's weights that respects freezing.

    ``update()`` averages only the parameters that train (``e + (1 - d) * (m - e)``, a lerp, so an unchanged
    weight stays bit-for-bit unchanged); frozen parameters are *copied*, so they stay bitwise equal to the model's
    (the naive ``d * e + (1 - d) * m`` drifts through float rounding even when ``e == m``). Norm statistics are
    copied, never averaged: locked ones are then equal to the model's, and live ones already are running averages
    of batch statistics (averaging them again only adds lag).

    The trainable / frozen split is a plan computed once and recomputed only when trainability changes; each
    update is one fused lerp and one fused copy where the framework has them (``torch._foreach_lerp_``).

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        decay: in (0, 1).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early averages are not dominated by
            the initial weights.
        backend: force ``"torch"`` or ``"paddle"``.

    Raises:
        XFreezeError: ``decay`` outside (0, 1), a non-bool ``warmup``, or not a model.

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
        self.shadow = {
            name: self.adapter.clone(t) for name, t in zip(self.names, list(view.params) + list(view.stat_tensors))
        }
        self._bind(view)

    def _bind(self, view) -> None:
        """Follow the model's current tensors (again after a wrapper such as FSDP2's fully_shard swapped them)."""
        names = list(view.names) + list(view.stat_names)
        if names != self.names:
            changed = sorted(set(names) ^ set(self.names))[:5]
            raise XFreezeError(
                f"EMA: the model's parameters changed since the EMA was built ({changed}); build a "
                "new EMA for the new structure (EMA.copy_to can carry weights that still match)"
            )
        self._params, self._stats = list(view.params), list(view.stat_tensors)
        for name, tensor in zip(self.names, self._params + self._stats):
            self.shadow[name] = self.adapter.like(self.shadow[name], tensor)
        self._slots = self.adapter.registrations(view)
        self._mask: tuple | None = None
        self._plan: tuple = ()

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def update(self) -> None:
        """Fold the model's current weights into the average (call after each optimizer step)."""
        averages, values, copies, sources = self._current_plan()
        self.adapter.ema_update(averages, values, 1.0 - self.current_decay())
        self.adapter.copy_into(copies, sources)
        self.num_updates += 1

    def _follow(self) -> None:
        """Rebind when a wrapper swapped tensors (identity check), or when the model was moved or cast since (its
        first and last tensors probed: Lightning moves and converts the module after the callback built the EMA;
        ``model.to(...)`` / ``.half()`` keep the parameter objects)."""
        tensors = self._params + self._stats
        probes = {0, len(tensors) - 1} if tensors else set()
        if not all(
            registry.get(key) is obj if key is not None else len(registry) == obj for registry, key, obj in self._slots
        ) or not all(self.adapter.same_layout(self.shadow[self.names[i]], tensors[i]) for i in probes):
            self._bind(view_of(self.model, self.adapter.name))

    def _current_plan(self) -> tuple:
        self._follow()
        mask = tuple(self.adapter.trainable_flags(self._params))
        if mask != self._mask:  # trainability changed (or first update): split again
            shadows = [self.shadow[n] for n in self.names]
            n = len(self._params)
            lerp = [i for i in range(n) if mask[i]]
            copy = [i for i in range(n) if not mask[i]] + list(range(n, len(self.names)))
            tensors = self._params + self._stats
            self._plan = (
                [shadows[i] for i in lerp],
                [tensors[i] for i in lerp],
                [shadows[i] for i in copy],
                [tensors[i] for i in copy],
            )
            self._mask = mask
        return self._plan

    def copy_to(self, model=None) -> None:
        """Write the averaged weights into ``model`` (default: the tracked model), e.g. an evaluation copy.

        Raises:
            XFreezeError: ``model`` is not a model, or not the same architecture (a name, shape or dtype differs);
                nothing is written then.
        """
        target = self.model if model is None else model
        try:
            view = view_of(target, self.adapter.name)
        except XFreezeError as exc:
            raise XFreezeError(f"EMA.copy_to(model): {exc}") from None
        tensors = dict(zip(list(view.names) + list(view.stat_names), list(view.params) + list(view.stat_tensors)))
        missing = sorted(set(self.names) - tensors.keys())
        if missing:
            raise XFreezeError(
                f"EMA.copy_to: {view.label} lacks {missing[:5]}: it is not the same architecture as "
                "the averaged model; nothing was written"
            )
        self._check_like(tensors, "EMA.copy_to", "the averaged model")
        self.adapter.copy_into([tensors[n] for n in self.names], [self.shadow[n] for n in self.names])

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": {n: self.adapter.clone(t) for n, t in self.shadow.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved average. Everything is validated first (keys, shapes, dtypes, numbers); on an error
        nothing is written."""
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
        unknown = sorted(state["shadow"].keys() ^ self.shadow.keys())
        if unknown:
            raise XFreezeError(f"EMA.load_state_dict: keys differ from the model's: {unknown[:5]}; nothing was loaded")
        values = {k: _tensors.to_backend(v, self.adapter.name, k) for k, v in state["shadow"].items()}
        self._check_like(values, "EMA.load_state_dict", "the saved average")
        self._follow()  # the shadows in the model's current device and dtype first
        self.adapter.copy_into([self.shadow[n] for n in self.names], [values[n] for n in self.names])
        self.decay, self.warmup, self.num_updates = float(state["decay"]), state["warmup"], int(n)

    def _check_like(self, tensors: dict, where: str, what: str) -> None:
        for name in self.names:
            mine, theirs = self.shadow[name], tensors[name]
            a, b = _tensors.shape_of(mine), _tensors.shape_of(theirs)
            if a != b:
                raise XFreezeError(
                    f"{where}: {name!r} has shape {list(b)} where {what} has {list(a)}; nothing was written"
                )


def _check_decay(decay) -> None:
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0.0 < float(decay) < 1.0:
        raise XFreezeError(f"decay must be a number in (0, 1). Received: decay={decay!r}")

"""EMA: an exponential moving average of the weights that never moves what is frozen."""
from __future__ import annotations

import numbers

from . import _select
from ._backend import adapter_for
from ._errors import XFreezeError


class EMA:
    """Exponential moving average of a model's weights that respects freezing.

    ``update()`` averages only the parameters that train (``e + (1 - d) * (m - e)``, a lerp, so an unchanged
    weight stays bit-for-bit unchanged); frozen parameters are *copied*, so they stay bitwise equal to the model's
    (the naive ``d * e + (1 - d) * m`` drifts through float rounding even when ``e == m``). Norm statistics are
    copied, never averaged: locked ones are then equal to the model's, and live ones already are running averages
    of batch statistics (averaging them again only adds lag).

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        decay: in (0, 1).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early averages are not dominated by
            the initial weights.
        backend: force ``"torch"`` or ``"paddle"``.

    Raises:
        XFreezeError: ``decay`` outside (0, 1) or not a model.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Linear(3, 2)
        >>> ema = xfreeze.EMA(model, decay=0.9)
        >>> ema.update(); ema.num_updates
        1
    """

    def __init__(self, model, decay: float = 0.999, *, warmup: bool = False, backend: str | None = None):
        self.adapter = adapter_for(model, backend)
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0.0 < decay < 1.0:
            raise XFreezeError(f"decay must be a number in (0, 1). Received: decay={decay!r}")
        self.model, self.decay, self.warmup, self.num_updates = model, float(decay), bool(warmup), 0
        self.shadow = {name: self.adapter.clone(t) for name, t in self._tensors(model)}

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def update(self) -> None:
        """Fold the model's current weights into the average (call after each optimizer step)."""
        weight = 1.0 - self.current_decay()
        trainable = {e.name for e in _select.walk(self.adapter, self.model) if self.adapter.is_trainable(e.param)}
        for name, tensor in self._tensors(self.model):
            if name in trainable:
                self.adapter.ema_update(self.shadow[name], tensor, weight)
            else:
                self.adapter.copy_into(self.shadow[name], tensor)
        self.num_updates += 1

    def copy_to(self, model=None) -> None:
        """Write the averaged weights into ``model`` (default: the tracked model), e.g. an evaluation copy."""
        target = self.model if model is None else model
        tensors = dict(self._tensors(target))
        missing = sorted(self.shadow.keys() - tensors.keys())
        if missing:
            raise XFreezeError(f"EMA.copy_to: {type(target).__name__} lacks {missing[:5]}: it is not the same "
                               "architecture as the averaged model")
        for name, tensor in tensors.items():
            self.adapter.copy_into(tensor, self.shadow[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": {n: self.adapter.clone(t) for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        unknown = sorted(state["shadow"].keys() ^ self.shadow.keys())
        if unknown:
            raise XFreezeError(f"EMA.load_state_dict: keys differ from the model's: {unknown[:5]}")
        for name, tensor in state["shadow"].items():
            self.adapter.copy_into(self.shadow[name], tensor)
        self.decay, self.warmup, self.num_updates = state["decay"], state["warmup"], state["num_updates"]

    def _tensors(self, model):
        params = [(e.name, e.param) for e in _select.walk(self.adapter, model)]
        return params + self.adapter.named_statistics(model)

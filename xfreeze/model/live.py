"""The live optimizer of a model, kept weakly: :func:`xfreeze.optimizer` and ``StagedUnfreeze`` record it, so that
``unfreeze`` can warn at once when what it made trainable is in no group of it (facebookresearch/mmf #104)."""

from __future__ import annotations

import contextlib
import warnings
import weakref

from .view import view_of

_live: dict[int, tuple] = {}  # id(model) -> (weakref to model, weakref to optimizer)
_quiet = [0]


def remember(model, optimizer) -> None:
    """Record ``optimizer`` as the live optimizer of ``model`` (weakly: neither is kept alive)."""
    for key in [k for k, (m, o) in _live.items() if m() is None or o() is None]:
        del _live[key]
    try:
        _live[id(model)] = (weakref.ref(model), weakref.ref(optimizer))
    except TypeError:  # an object without weak references: no warning for it, nothing else changes
        return


def live_optimizer(model):
    """The optimizer xfreeze last built or attached for ``model``, if both are still alive."""
    refs = _live.get(id(model))
    if refs is None or refs[0]() is not model:
        return None
    return refs[1]()


@contextlib.contextmanager
def quiet():
    """No warning while xfreeze itself changes trainability and then grows the optimizer (StagedUnfreeze)."""
    _quiet[0] += 1
    try:
        yield
    finally:
        _quiet[0] -= 1


def warn_if_out_of_step(model, changed: list[str], backend: str | None = None) -> None:
    """Called by ``unfreeze`` with the parameters it made trainable: warn when the live optimizer lacks them."""
    opt = live_optimizer(model)
    if opt is None or _quiet[0] or not changed:
        return
    view = view_of(model, backend)
    held = view.adapter.optimizer_param_ids(opt)
    missing = [n for n in changed if n in view.index and id(view.params[view.index[n]]) not in held]
    if missing:
        warnings.warn(
            f"{len(missing)} parameters were made trainable but are in no group of the model's optimizer "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): they will not train.\n"
            "HINT: rebuild the optimizer (xfreeze.optimizer(model, ...)), or let StagedUnfreeze / the "
            "xfreeze callbacks unfreeze them, which adds them as a new group",
            UserWarning,
            stacklevel=3,
        )

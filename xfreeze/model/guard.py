"""Freezing under DDP / FSDP / Paddle DataParallel (issue 10): checks run before anything changes.

The core calls :func:`guard_trainability_change` from ``freeze``/``unfreeze`` after the plan is computed and before
it is applied; it raises an ``XFreezeError`` (naming the fixes) when the model's wrapper cannot honour the change.
``StagedUnfreeze(..., rewrap=...)`` goes through :func:`attach` and :func:`stage_boundary` instead, which rebuild
the wrapper at a boundary, and :func:`check_freeze_agreement` verifies that every rank froze the same tensors.

Framework facts (which wrappers all-reduce gradients, world size, collectives, rebuilding) live in the adapters'
"distributed" sections; nothing here imports a framework.
"""

from __future__ import annotations

import contextvars
import hashlib

from .view import view_of
from ..core.dispatch import adapter_for
from ..core.errors import XFreezeError

_rebuilding: contextvars.ContextVar[bool] = contextvars.ContextVar("xfreeze_rebuilding", default=False)
_FIXES = (
    "Fixes: freeze before wrapping the model; for a staged schedule pass "
    "StagedUnfreeze(wrapper, optimizer, stages, rewrap=lambda m: <build the wrapper around m>), which rebuilds "
    "the wrapper at each boundary; or keep these parameters trainable from the start with a learning rate "
    "of 0 (Lightning #20340's workaround)"
)


def guard_trainability_change(view, to_trainable: list[str], to_frozen: list[str]) -> None:
    """Raise before anything changes when ``view``'s wrapper cannot honour the change.

    A DDP / paddle.DataParallel wrapper registers the parameters that are trainable when it is built: a parameter
    made trainable later is never all-reduced (ranks silently diverge), and one frozen later leaves the wrapper
    waiting for a gradient that never comes.

    Args:
        view: the model view (``.model``, ``.adapter``) or the model itself.
        to_trainable: names of parameters the call would make trainable.
        to_frozen: names of parameters the call would freeze.

    Raises:
        XFreezeError: the model is, holds or sits inside a gradient-syncing wrapper and the call changes trainability.

    Example:
        >>> import torch
        >>> guard_trainability_change(torch.nn.Linear(2, 2), ["weight"], [])  # no wrapper: nothing to refuse
    """
    if _rebuilding.get() or not (to_trainable or to_frozen):
        return
    model, adapter = _model_and_adapter(view)
    wrappers = adapter.syncing_wrappers(model)
    if not wrappers:
        return
    wrapper = type(wrappers[0]).__name__
    if to_trainable:
        names = _sample(to_trainable)
        raise XFreezeError(
            f"unfreeze of {len(to_trainable)} parameters ({names}) of {_name(adapter, model)} refused: "
            f"the model is wrapped in {wrapper}, which never registered them, so their gradients "
            f"would not be all-reduced and the ranks would silently diverge. Nothing was changed. " + _FIXES
        )
    raise XFreezeError(
        f"freeze of {len(to_frozen)} parameters ({_sample(to_frozen)}) of {_name(adapter, model)} "
        f"refused: the model is wrapped in {wrapper}, which registered them and would wait for "
        f"gradients that never come (torch: 'Expected to have finished reduction'; Paddle: "
        f"PreconditionNotMet), after one step on which the ranks diverge. Nothing was changed. " + _FIXES
    )


def check_freeze_agreement(model, *, backend: str | None = None) -> None:
    """Check that every rank froze the same tensors and locked the same norm layers (a collective: every rank must
    call it). One all-reduce of a hash; only on a mismatch are the masks gathered, to name the first difference.

    Args:
        model: the (wrapped or plain) model.
        backend: force ``"torch"`` or ``"paddle"``.

    Raises:
        XFreezeError: the ranks disagree; names the first tensor or norm layer that differs and the ranks.

    Example:
        >>> import torch
        >>> check_freeze_agreement(torch.nn.Linear(2, 2))  # one process: nothing to compare
    """
    adapter = adapter_for(model, backend)
    if adapter.world_size() <= 1:
        return
    mask = freeze_mask(adapter, model)
    digest = int.from_bytes(hashlib.blake2b("\n".join(mask).encode(), digest_size=7).digest(), "little")
    high, neg_low = adapter.all_reduce_max([digest, -digest])
    if high == -neg_low:
        return
    masks = adapter.all_gather_object(mask)
    raise XFreezeError(
        f"ranks froze different tensors of {_name(adapter, model)}: {_first_difference(masks)}. "
        "Apply the same freeze / stages on every rank (and before wrapping); a rank-dependent pattern "
        "or a freeze under `if rank == 0` makes the ranks train different models"
    )


def freeze_mask(adapter, model) -> list[str]:
    """``name=T|F`` per parameter and ``path=locked`` per locked norm layer, in model order."""
    view = view_of(adapter.unwrap_all(model), adapter.name)
    mask = [f"{name}={'T' if trains else 'F'}" for name, trains in zip(view.names, view.trainable())]
    return mask + [
        f"{view.paths[mi] or '(root)'}=locked"
        for mi in sorted(view.stat_modules)
        if adapter.is_norm_locked(view.modules[mi])
    ]


def _first_difference(masks: list) -> str:
    for i in range(max(len(m) for m in masks)):
        values = [m[i] if i < len(m) else "(absent)" for m in masks]
        if len(set(values)) > 1:
            shown = "; ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            return f"first difference at entry {i} ({shown})"
    return "the masks differ"  # pragma: no cover - a hash collision would be needed


def _model_and_adapter(view):
    model = getattr(view, "model", view)
    adapter = getattr(view, "adapter", None)
    if adapter is None:
        adapter = adapter_for(model)
    return model, adapter


def _name(adapter, model) -> str:
    return view_of(model, adapter.name).label


def _sample(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")

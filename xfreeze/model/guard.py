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
import sys
from contextlib import contextmanager

from . import _select
from ._errors import XFreezeError

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
    from ._backend import adapter_for

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
    inner = adapter.unwrap_all(model)
    mask = [f"{e.name}={'T' if adapter.is_trainable(e.param) else 'F'}" for e in _select.walk(adapter, inner)]
    return mask + [
        f"{path or '(root)'}=locked"
        for path, m in adapter.named_modules(inner)
        if adapter.norm_statistics(m) and adapter.is_norm_locked(m)
    ]


def _first_difference(masks: list) -> str:
    for i in range(max(len(m) for m in masks)):
        values = [m[i] if i < len(m) else "(absent)" for m in masks]
        if len(set(values)) > 1:
            shown = "; ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            return f"first difference at entry {i} ({shown})"
    return "the masks differ"  # pragma: no cover - a hash collision would be needed


# --- StagedUnfreeze(rewrap=...) -------------------------------------------------------------------------------------


def attach(staged, rewrap) -> None:
    """Set ``staged.model`` (the plain model) and ``staged.wrapped`` (the live wrapper); refuse, up front, stages a
    wrapper cannot honour."""
    adapter, model = staged.adapter, staged.model
    if rewrap is not None and not callable(rewrap):
        raise XFreezeError(
            f"rewrap must be a function that wraps the model, e.g. rewrap=lambda m: "
            f"DistributedDataParallel(m). Received: {type(rewrap).__name__}"
        )
    wrappers = adapter.syncing_wrappers(model)
    staged.rewrap, staged.wrapped = rewrap, wrappers[0] if wrappers else model
    staged.model = adapter.unwrap_all(model) if wrappers or rewrap else model
    build_now = rewrap is not None and not wrappers and adapter.world_size() > 1
    if wrappers or build_now:  # checked before the wrapper is built: nothing is built for a refused schedule
        wrapper = type(wrappers[0]).__name__ if wrappers else "the wrapper"
        _refuse_unhonoured_stages(adapter, model, staged.stages, wrapper, rewrap)
    if build_now:
        staged.wrapped = rewrap(staged.model)
    if wrappers or rewrap is not None:
        check_freeze_agreement(staged.model, backend=adapter.name)


def KEEP(model):
    """``rewrap`` value for a wrapper that a training loop holds and xfreeze cannot replace (the Hugging Face
    Trainer's DDP, ``paddle.Model``'s DataParallel): the wrapper stays, newly trainable parameters get their gradients
    averaged by hooks (:meth:`Adapter.sync_gradients_of`), and freezing after wrapping is refused up front."""
    raise XFreezeError("xfreeze keeps this wrapper: it is not rebuilt")  # never called: a marker


def adopt(staged, wrapper, rewrap=KEEP) -> None:
    """A training framework wrapped ``staged.model`` itself after the first stage was applied: from now on
    ``wrapper`` is the live wrapper. ``rewrap`` rebuilds it at every boundary that changes what trains (Lightning's
    DDP strategy); :data:`KEEP` keeps it and syncs newly trainable parameters by hooks (a loop that holds its
    wrapper). The stages still to come are checked against the wrapper first: nothing changes on a refusal."""
    adapter = staged.adapter
    if not callable(rewrap):
        raise XFreezeError(f"rewrap must be a function that wraps the model. Received: {type(rewrap).__name__}")
    if adapter.unwrap_all(wrapper) is not staged.model:
        raise XFreezeError(
            f"the {type(wrapper).__name__} given does not wrap the model these stages drive "
            f"({type(staged.model).__name__}); give the wrapper around that model"
        )
    tolerant = rewrap is KEEP and adapter.tolerates_missing_gradients(wrapper)
    _refuse_unhonoured_stages(
        adapter, staged.model, staged.stages, type(wrapper).__name__, rewrap, first=staged.applied, tolerant=tolerant
    )
    staged.rewrap, staged.wrapped = rewrap, wrapper
    check_freeze_agreement(staged.model, backend=adapter.name)


def follow_wrapper(staged) -> None:
    """Adopt (with :data:`KEEP`) a gradient-syncing wrapper a training framework put around ``staged.model`` since
    the stages were built; nothing when there is none or one was adopted already."""
    if getattr(staged, "rewrap", None) is not None:
        return
    wrappers = staged.adapter.syncing_wrappers(staged.model)
    if wrappers:
        adopt(staged, wrappers[0], KEEP)


@contextmanager
def stage_boundary(staged, stage):
    """Around one stage's freeze / unfreeze: with ``rewrap``, allow the change, then rebuild the wrapper for what
    trains now (ranks stay identical: the rebuild broadcasts nothing new) and check that the ranks agree."""
    if getattr(staged, "rewrap", None) is None:
        yield
        return
    adapter = staged.adapter
    before = {id(e.param) for e in _select.walk(adapter, staged.model) if adapter.is_trainable(e.param)}
    token = _rebuilding.set(True)
    try:
        yield
    finally:
        _rebuilding.reset(token)
    now = [e.param for e in _select.walk(adapter, staged.model) if adapter.is_trainable(e.param)]
    old = staged.wrapped if staged.wrapped is not staged.model else None
    if staged.rewrap is KEEP:
        adapter.sync_gradients_of(old, [p for p in now if id(p) not in before])  # freezes were refused up front
    elif {id(p) for p in now} != before and (old is not None or adapter.world_size() > 1):
        staged.wrapped = adapter.rebuild_wrapper(
            old, staged.model, staged.rewrap, [p for p in now if id(p) not in before]
        )
    check_freeze_agreement(staged.model, backend=adapter.name)


def _refuse_unhonoured_stages(
    adapter, model, stages, wrapper: str, rewrap, first: int = 0, tolerant: bool = False
) -> None:
    """Replay ``stages[first:]`` on a copy of the trainability mask; raise before training when one would change
    trainability and the wrapper cannot follow (``tolerant``: a kept wrapper that lets registered parameters stop
    getting gradients, so freezes are fine)."""
    entries = _select.walk(adapter, model)
    trainable = {e.name: adapter.is_trainable(e.param) for e in entries}
    for i, stage in enumerate(stages[first:], start=first):
        for patterns, target in ((stage.freeze, False), (stage.unfreeze, True)):
            if not patterns:
                continue
            chosen = _select.resolve(adapter, model, _select.compile_patterns(patterns), entries)
            keep = {
                e.name
                for e in chosen
                if not target and stage.norm == "train" and adapter.module_kind(e.module) == "norm"
            }
            changed = [e.name for e in chosen if e.name not in keep and trainable[e.name] != target]
            if not changed:
                continue
            if rewrap is None:
                verb = "unfreezes" if target else "freezes"
                raise XFreezeError(
                    f"stages[{i}] (at={stage.at}) {verb} {len(changed)} parameters ({_sample(changed)}) "
                    f"of a model wrapped in {wrapper}, which cannot follow a change of what trains "
                    f"(ranks would diverge silently, or the step would fail). " + _FIXES
                )
            if not target and rewrap is KEEP and not tolerant:
                raise XFreezeError(
                    f"stages[{i}] (at={stage.at}) freezes {len(changed)} parameters ({_sample(changed)}) "
                    f"after the training framework wrapped the model in {wrapper}, which xfreeze cannot "
                    f"rebuild from a callback: it would wait for their gradients (or crash). Nothing was "
                    f"changed. HINT: freeze them in the first stage (applied before the framework wraps the "
                    f"model), or leave them trainable{adapter.freeze_after_wrap_hint}"
                )
            if not target and not adapter.rewrap_can_freeze:
                raise XFreezeError(
                    f"stages[{i}] (at={stage.at}) freezes {len(changed)} parameters "
                    f"({_sample(changed)}) after {wrapper} was built: {wrapper} cannot be rebuilt "
                    f"after a freeze (SIGSEGV in EagerReducer::AddDistHook). Freeze them before "
                    f"wrapping (first stage at=0, applied before the wrapper), or leave them trainable"
                )
            trainable.update({name: target for name in changed})


# --- rank-aware checkpoints -----------------------------------------------------------------------------------------


def save_on_rank(obj, rank: int, write):
    """All ranks gather the full state (FSDP shards included), rank ``rank`` writes it with ``write(state)``, then
    every rank waits at a barrier. Returns what ``write`` returned on the writing rank, None elsewhere."""
    adapter = _adapter_of(obj)
    if adapter is None:  # no process group: one process, it writes
        return write(obj)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < adapter.world_size():
        raise XFreezeError(f"rank must be an integer in [0, {adapter.world_size()}). Received: rank={rank!r}")
    state = obj if isinstance(obj, dict) else adapter.full_state(obj)  # a collective for sharded models
    try:
        return write(state) if adapter.rank() == rank else None
    finally:
        adapter.barrier()


def load_tensors(adapter, model, targets: dict, plan: dict) -> None:
    """The write step of ``load_matched``, after every value was validated: plain models copy in place; an FSDP2
    model (validated against the DTensors' global shapes) loads through torch.distributed.checkpoint's
    ``set_model_state_dict`` so that every rank keeps its own shard (every rank must call it); FSDP1 is refused
    (its tensors are flat local shards: shapes cannot be validated) before anything is written."""
    sharding = adapter.sharding(model)
    if sharding is None:
        adapter.load_tensors([targets[k] for k in plan], list(plan.values()))
    elif sharding == "fsdp2":
        adapter.load_full_state(model, dict(plan))
    else:
        raise XFreezeError(
            f"load_matched into a {sharding.upper()}-sharded {type(model).__name__} refused: each "
            "rank holds flat shards, so names and shapes cannot be checked; nothing was changed. "
            "Fixes: call load_matched on the model before wrapping it in FullyShardedDataParallel, or "
            "use fully_shard (FSDP2), which load_matched supports"
        )


def _adapter_of(obj):
    from ._backend import adapter_for, adapter_named, tensor_backend
    from .backends import ADAPTERS

    if not isinstance(obj, dict):
        adapter = adapter_for(obj)
    else:
        names = {tensor_backend(v) for v in obj.values()} - {None}
        names = names or {n for n, spec in ADAPTERS.items() if spec.module in sys.modules}
        adapters = [adapter_named(n) for n in sorted(names)]
        adapter = next((a for a in adapters if a.world_size() > 1), None)
    return adapter if adapter is not None and adapter.world_size() > 1 else None


def _model_and_adapter(view):
    model = getattr(view, "model", view)
    adapter = getattr(view, "adapter", None)
    if adapter is None:
        from ._backend import adapter_for

        adapter = adapter_for(model)
    return model, adapter


def _name(adapter, model) -> str:
    return _select.model_name(adapter, model)


def _sample(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")

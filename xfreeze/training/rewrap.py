"""``StagedUnfreeze(rewrap=...)``: rebuild or keep the DDP / DataParallel wrapper at stage boundaries (issue 10), and
refuse up front the stages a wrapper cannot follow. The freeze guard itself is :mod:`xfreeze.model.guard`."""

from __future__ import annotations

from contextlib import contextmanager

from ..core.errors import XFreezeError
from ..model.guard import _FIXES, _rebuilding, _sample, check_freeze_agreement
from ..model.select import select_indices
from ..model.view import view_of


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
    before = {id(p) for p in _trainable_params(staged)}
    token = _rebuilding.set(True)
    try:
        yield
    finally:
        _rebuilding.reset(token)
    now = _trainable_params(staged)
    old = staged.wrapped if staged.wrapped is not staged.model else None
    if staged.rewrap is KEEP:
        adapter.sync_gradients_of(old, [p for p in now if id(p) not in before])  # freezes were refused up front
    elif {id(p) for p in now} != before and (old is not None or adapter.world_size() > 1):
        staged.wrapped = adapter.rebuild_wrapper(
            old, staged.model, staged.rewrap, [p for p in now if id(p) not in before]
        )
    check_freeze_agreement(staged.model, backend=adapter.name)


def _trainable_params(staged) -> list:
    view = view_of(staged.model, staged.adapter.name)
    return [p for p, trains in zip(view.params, view.trainable()) if trains]


def _refuse_unhonoured_stages(
    adapter, model, stages, wrapper: str, rewrap, first: int = 0, tolerant: bool = False
) -> None:
    """Replay ``stages[first:]`` on a copy of the trainability mask; raise before training when one would change
    trainability and the wrapper cannot follow (``tolerant``: a kept wrapper that lets registered parameters stop
    getting gradients, so freezes are fine)."""
    view = view_of(model, adapter.name)
    trainable = view.trainable()
    for i, stage in enumerate(stages[first:], start=first):
        for patterns, target in ((stage.freeze, False), (stage.unfreeze, True)):
            if not patterns:
                continue
            chosen = list(select_indices(view, patterns))
            if not target and stage.norm == "train":  # norm layers in the region keep training
                chosen = [p for p in chosen if view.kinds[view.owner[p]] != "norm"]
            changed = [int(p) for p in chosen if trainable[p] != target]
            if changed:
                names = [view.names[p] for p in changed]
                _refuse_change(adapter, f"stages[{i}] (at={stage.at})", names, target, wrapper, rewrap, tolerant)
                trainable[changed] = target


def _refuse_change(adapter, where: str, changed: list, target: bool, wrapper: str, rewrap, tolerant: bool) -> None:
    """Raise when ``wrapper`` cannot follow one stage making ``changed`` trainable (``target``) or frozen."""
    if rewrap is None:
        verb = "unfreezes" if target else "freezes"
        raise XFreezeError(
            f"{where} {verb} {len(changed)} parameters ({_sample(changed)}) "
            f"of a model wrapped in {wrapper}, which cannot follow a change of what trains "
            f"(ranks would diverge silently, or the step would fail). " + _FIXES
        )
    if not target and rewrap is KEEP and not tolerant:
        raise XFreezeError(
            f"{where} freezes {len(changed)} parameters ({_sample(changed)}) "
            f"after the training framework wrapped the model in {wrapper}, which xfreeze cannot "
            f"rebuild from a callback: it would wait for their gradients (or crash). Nothing was "
            f"changed. HINT: freeze them in the first stage (applied before the framework wraps the "
            f"model), or leave them trainable{adapter.freeze_after_wrap_hint}"
        )
    if not target and not adapter.rewrap_can_freeze:
        raise XFreezeError(
            f"{where} freezes {len(changed)} parameters "
            f"({_sample(changed)}) after {wrapper} was built: {wrapper} cannot be rebuilt "
            f"after a freeze (SIGSEGV in EagerReducer::AddDistHook). Freeze them before "
            f"wrapping (first stage at=0, applied before the wrapper), or leave them trainable"
        )

"""``load_matched`` from a sharded checkpoint folder, one shard in memory at a time.

Validate, then write, without holding the whole model: :func:`check_all` reads every shard in turn, plans it exactly
as a whole source is planned (renamed, converted, matched against the model) and drops it, so that every refusal
(a corrupt or truncated shard, a tensor in two shards, ``strict`` differences, too little placed) comes before the
first write. :func:`place_all` then reads, plans and places the shards one after the other. The price is time: every
shard is read twice (the second read mostly from the operating system's cache); peak memory is one shard's tensors
plus their planned copies, never the whole model, and no copy of the model's old values is kept.

Before either pass, :func:`~xfreeze.weights.folders.open_folder` has checked the index, that every shard is present
and inside the folder, and every safetensors header against its file's size (a truncated safetensors shard is
refused without reading data). A shard that changes on disk between the two passes (another process rewriting the
folder) is the one case that can stop a load midway: the error says which shards were already placed.

A layer the model keeps fused whose parts lie in different shards (transformers' ``q_proj`` in one shard, ``k_proj``
in the next, loaded into PaddleFormers' ``qkv_proj``) is planned with the shard that completes it: its earlier parts
wait for it (:mod:`~xfreeze.weights.fusedshards`), and the placing pass reads again every shard a placed part came
from.
"""

from __future__ import annotations

from ..core.errors import XFreezeError
from . import fusedshards as _fusedshards
from .folders import Folder, read_shard


def check_all(folder: Folder, context, report, prepared) -> tuple:
    """Plan every shard into ``report`` (nothing written). Returns ``({model key: shard}, differences)``.

    ``prepared(state, context, report) -> (plan, converted state)`` plans one state (load.py's)."""
    owner: dict = {}  # model key -> the shard it comes from
    planned: dict = {}  # model key -> the shard whose plan places it
    differences: list = []
    arches: dict = {}
    parts = _waiting(context)
    for shard in folder.shards:
        fragment = type(report)(report.model, report.source_framework)
        plan, state = prepared(parts.chunk(shard, read_shard(folder, shard))[0], context, fragment)
        twice = next((k for k in state if k in owner), None)
        if twice is not None:
            raise XFreezeError(
                f"{folder.what(shard)} gives tensor {twice!r}, which shard {owner[twice].name!r} gives too "
                "(after renaming and conversion); nothing was changed. Re-save the folder, or rename= them apart"
            )
        owner.update(dict.fromkeys(state, shard))
        planned.update(dict.fromkeys(plan, shard))
        _merge(report, fragment)
        differences += [d for d in getattr(state, "differences", []) if d not in differences]
        if getattr(state, "arch", None):
            arches.setdefault(state.arch, []).append(shard.name)
        del plan, state
    parts.finish(folder.what)
    if len(arches) > 1:
        report.notes.append(("", "shards converted with different name maps: " + "; ".join(map(str, arches.items()))))
    _settle(report, context, owner)
    return {key: planned[key] for key in context.targets if key in planned}, differences


def place_all(folder: Folder, context, report, plan: dict, prepared, write) -> None:
    """Read, plan and place every shard that :func:`check_all` found something in (and the shards holding parts of
    a fused layer that one completes); ``write(context, plan)``."""
    done: list = []
    placing = set(plan.values())
    drawn = _fusedshards.draws(folder, lambda: _waiting(context))
    needed = {source for shard in placing for source in drawn[shard]}
    parts = _waiting(context)
    for shard in (s for s in folder.shards if s in needed):
        try:
            chunk = parts.chunk(shard, read_shard(folder, shard))[0]
            if shard not in placing:  # read only for the parts that wait in it
                del chunk
                continue
            fragment_plan, state = prepared(chunk, context, type(report)(report.model))
        except XFreezeError as exc:
            raise XFreezeError(_changed(folder, shard, done, str(exc))) from None
        expected = {key for key, source in plan.items() if source == shard}
        if set(fragment_plan) != expected:
            raise XFreezeError(_changed(folder, shard, done, "its tensors differ from those checked"))
        write(context, fragment_plan)
        done.append(shard.name)
        del fragment_plan, state, chunk  # before the next shard is read


def _waiting(context):
    """Parts of fused layers waiting for their partners in later shards (when the load converts)."""
    return _fusedshards.waiting(
        context.origin if context.converting else None, context.view.adapter.name, targets=context.targets
    )


def _changed(folder: Folder, shard, done: list, why: str) -> str:
    placed = f"shards {done} were already placed" if done else "nothing was placed yet"
    return (
        f"{folder.what(shard)} changed on disk during the load ({why}); {placed}. Load the folder again once no "
        "other process writes it"
    )


def _merge(report, fragment) -> None:
    """A shard's findings into the folder's report; missing and skipped keys are settled over all shards."""
    report.loaded += fragment.loaded
    report.unexpected += fragment.unexpected
    report.notes += [note for note in fragment.notes if note not in report.notes]
    for field in ("adapted", "mismatched", "renamed", "cast", "converted"):
        getattr(report, field).update(getattr(fragment, field))


def _settle(report, context, owner: dict) -> None:
    """Missing and skipped keys over the whole folder, and every list in the model's key order."""
    order = {key: i for i, key in enumerate(context.targets)}
    for key in context.targets:
        if key in context.ignored and key not in owner:
            continue
        if key in context.skipped:
            report.skipped.append(key)
        elif key not in owner:
            report.missing.append(key)
    report.loaded.sort(key=order.__getitem__)
    for field in ("adapted", "mismatched", "cast"):
        items = getattr(report, field)
        setattr(report, field, dict(sorted(items.items(), key=lambda item: order.get(item[0], len(order)))))

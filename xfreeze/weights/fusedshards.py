"""Fused layers whose parts lie in different shards, in a streamed (shard by shard) load or folder conversion.

The target may keep as one tensor what the source keeps apart (PaddleFormers ERNIE 4.5's ``qkv_proj`` is
transformers' ``q_proj``, ``k_proj`` and ``v_proj``), and a sharded source may put those parts in different shards.
:class:`Waiting` takes such a part out of its shard until every part of its layer has been read, then hands the
whole set in with the shard that completes it, so that :func:`~xfreeze.weights.convert.convert` joins them as it
joins a set read from one file. Only the parts still waiting are held: with shards cut at tensor boundaries, at most
one layer's parts. A part whose partners no shard holds is refused, naming both keys.

Which source keys are such parts is told by their names alone, so the same grouping can be replayed on the index's
names without reading data (:func:`draws`: which shards the load's placing pass must read again).
"""

from __future__ import annotations

from ..backends.naming import naming
from ..core.errors import XFreezeError
from . import fusion as _fusion
from .convert import rename
from .statedict import StateDict


def grouping(source: str, to: str, arch: str | None = None, targets=None):
    """``group_of(key) -> (fused target key, source keys of all its parts)`` for the source keys the target joins
    (None for the others): under ``arch``, or every map that fuses, and only into ``targets``' keys when given."""
    src, dst = naming(source), naming(to)
    archs = [arch] if arch else sorted(dst.fusions)
    archs = [a for a in archs if dst.fusions.get(a) and not src.fusions.get(a)]

    def group_of(key: str):
        for name in archs:
            new = rename(key, src, dst, name)
            if not new:
                continue
            fused = _fusion.fused_name(new, dst, name)
            if fused == new or (targets is not None and fused not in targets):
                continue
            partners = tuple(rename(p, dst, src, name) for p in _fusion.part_names(fused, dst, name) or ())
            if key in partners:
                return fused, partners
        return None

    return group_of


class Waiting:
    """The parts of fused layers read so far whose partners are still to come, shard after shard."""

    def __init__(self, group_of):
        self.group_of = group_of
        self.held: dict = {}  # fused target key -> {source key: value}
        self.partners: dict = {}  # fused target key -> source keys of all its parts
        self.origin: dict = {}  # source key -> the shard it was read from

    def chunk(self, shard, state) -> tuple:
        """``(state to convert now, shards it draws from)``: ``state`` less the parts that wait for a later shard,
        plus the waiting parts of earlier shards that it completes."""
        touched = []
        for key in state:
            group = self.group_of(key)
            if group is not None:
                self.partners[group[0]] = group[1]
                self.held.setdefault(group[0], {})[key] = state[key]
                self.origin[key] = shard
                touched.append(group[0])
        complete = [g for g in dict.fromkeys(touched) if set(self.partners[g]) <= set(self.held[g])]
        waiting = {key for g in touched if g not in complete for key in self.held[g]}
        out = _like(state)
        drawn = [shard]
        for fused in complete:
            parts = self.held.pop(fused)
            drawn += [self.origin.pop(k) for k in parts]
            out.update((k, v) for k, v in parts.items() if k not in state)
        out.update((k, v) for k, v in state.items() if k not in waiting)
        return out, list(dict.fromkeys(drawn))

    def finish(self, what) -> None:
        """Refuse parts whose partners never came (``what(shard)`` names a shard)."""
        for fused, parts in self.held.items():
            key = next(iter(parts))
            missing = [k for k in self.partners[fused] if k not in parts]
            raise XFreezeError(
                f"{what(self.origin[key])} holds {key!r}, a part of the fused {fused!r}, but no shard holds its "
                f"partner {missing[0]!r}: {fused!r} cannot be joined; nothing was changed. Is the folder complete "
                "(every shard of its index present and of the same save)?"
            )


def waiting(source: str | None, to: str, arch: str | None = None, targets=None) -> Waiting:
    """A :class:`Waiting` for converting from ``source`` to ``to`` (holding nothing when they are the same
    framework)."""
    if source is None or source == to:
        return Waiting(lambda key: None)
    return Waiting(grouping(source, to, arch, targets))


def draws(folder, make) -> dict:
    """``{shard: [shards its chunk draws from]}``, replayed on the index's names (no data read); ``make()`` gives
    a fresh :class:`Waiting` configured as the real pass's."""
    names: dict = {}
    for name, shard in folder.weight_map.items():
        names.setdefault(shard, []).append(name)
    replay = make()
    return {shard: replay.chunk(shard, dict.fromkeys(names.get(shard, ())))[1] for shard in folder.shards}


def _like(state) -> StateDict:
    out = StateDict(framework=getattr(state, "framework", None), format=getattr(state, "format", None))
    out.notes = list(getattr(state, "notes", []))
    out.metadata = getattr(state, "metadata", {})
    return out

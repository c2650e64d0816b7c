"""What a FeatureCache checks before it caches anything (a prefix that is frozen, locked and deterministic, its
options), and the fingerprint of the prefix: a hash per tensor."""

from __future__ import annotations

import difflib
import numbers
import os


from ..core.errors import XFreezeError
from ..core.hashing import digests as hash_raws
from ..model.head import find_heads

SHOWN = 3  # names listed in an error


def refuse_unfit(view, head: str, inside: list, trains: list, refuse: bool) -> None:
    adapter = view.adapter
    where = f"FeatureCache of {view.label} (head {head!r})"
    if trains and refuse:
        raise XFreezeError(
            f"{where}: {len(trains)} parameters before the head train ({sample(trains)}): their output changes "
            f"at every step, so it cannot be cached. Nothing was changed.\nHINT: xfreeze.freeze(model, '*', "
            f"'!{head}') freezes everything but the head and locks its norm layers"
        )
    unlocked = [
        view.paths[mi]
        for mi in sorted(view.stat_modules)
        if not inside[mi] and not adapter.is_norm_locked(view.modules[mi])
    ]
    if unlocked and refuse:
        raise XFreezeError(
            f"{where}: the norm layers {sample(unlocked)} before the head are not locked: in train mode they "
            "normalize with batch statistics and move their running statistics, so features would drift. Nothing "
            "was changed.\nHINT: freeze them with norm='freeze' (xfreeze.freeze's default), which locks them"
        )
    random = [
        f"{view.paths[mi]} ({type(m).__name__}, rate {adapter.stochastic_rate(m):g})"
        for mi, m in enumerate(view.modules)
        if not inside[mi] and adapter.stochastic_rate(m) > 0 and not adapter.is_norm_locked(m)
    ]
    if random:
        raise XFreezeError(
            f"{where}: {sample(random)} before the head drop activations at random in train mode: cached "
            "features would be one draw, reused every epoch. Nothing was changed.\nHINT: set their rate to 0, or "
            "make them part of the head"
        )


def head_path(view, head) -> str:
    if head == "auto":
        found = find_heads(view, "auto")
        if len(found) != 1:
            raise XFreezeError(f"FeatureCache: {view.label} has several heads ({found}); pass head=NAME")
        return found[0]
    if not isinstance(head, str) or head not in view.module_index or not head:
        close = difflib.get_close_matches(str(head), [p for p in view.paths if p], n=3, cutoff=0.7)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise XFreezeError(f"FeatureCache: head={head!r} is not a module of {view.label}.{hint}")
    return head


def check_size(size) -> int:
    check_int("size", size, 1)
    return int(size)


def check_int(argument: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise XFreezeError(f"{argument} must be an integer >= {minimum}. Received: {argument}={value!r}")


def check_storage(storage) -> None:
    if storage == "memory":
        return
    if not isinstance(storage, (str, os.PathLike)) or not str(storage):
        raise XFreezeError(f"storage must be 'memory' or a file path. Received: storage={storage!r}")
    folder = os.path.dirname(os.fspath(storage)) or "."
    if not os.path.isdir(folder):
        raise XFreezeError(f"storage={os.fspath(storage)!r}: the folder {folder!r} does not exist")


def check_every(every, size: int) -> int | None:
    if every == "pass":
        return size
    if every is None:
        return None
    check_int("verify_every", every, 1)
    return int(every)


def digests(adapter, names: list, tensors: list) -> dict:
    """``{name: sha256(dtype, shape, bits)}`` (:func:`xfreeze.core.hashing.digests`)."""
    return dict(zip(names, hash_raws([adapter.to_raw(t) for t in tensors])))


def with_progress(batches, shown: bool):
    """``batches`` under a tqdm progress bar (imported here: ``import xfreeze`` stays light), or as they are."""
    if not shown:
        return batches
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is installed with the bench and test extras
        return batches
    total = len(batches) if hasattr(batches, "__len__") else None
    return tqdm(batches, total=total, desc="FeatureCache fill", unit="batch")


def sample(names: list) -> str:
    return ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")

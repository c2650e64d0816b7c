"""Which modules are frozen, the buffers they hold, and the frozen parts of tensors that still train.

A module is *frozen* when everything that could train in it is frozen:

* a module with parameters of its own: all of them are frozen (a LoRA-wrapped ``q_proj`` whose base weight is frozen
  is frozen, whatever its trainable children hold);
* a module without parameters of its own but with some below it: every parameter below it is frozen;
* a module with no parameter anywhere below it (IBert's ``QuantAct``, a parameter-free BatchNorm, a router's
  bias-only gate): as its parent.

Its buffers, *any* buffer (a router bias, an fp8 amax history, QuantAct's ``x_min`` / ``x_max``, a statistic), are
state that should not move while the module is frozen: :func:`xfreeze.audit` reports the ones that do, the delta
fingerprint and :func:`xfreeze.verify_frozen` hash them, :func:`xfreeze.lock_buffers` keeps them fixed.

Frozen *regions* of tensors that train (the pretrained rows of an embedding that gains new tokens) are told by the
sources registered with :func:`register_region_source` (row slices register theirs): ``source(view) -> {parameter
index: frozen row indices}``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_REGION_SOURCES: list[Callable] = []


def frozen_modules(view, live: np.ndarray | list | None = None) -> np.ndarray:
    """Per module of ``view``: whether it is frozen (see the module docstring), by ``live`` (trainability per
    parameter; default: the model's live flags)."""
    live = view.trainable() if live is None else np.asarray(live, dtype=bool)
    n = len(view.paths)
    direct = np.zeros(n, dtype=bool)
    direct_train = np.zeros(n, dtype=bool)
    owner = view.owner_array
    direct[owner] = True
    np.logical_or.at(direct_train, owner, live)
    below, below_train = direct.copy(), direct_train.copy()
    parent = view.parent
    for mi in range(n - 1, 0, -1):  # pre-order: every child comes after its parent
        p = parent[mi]
        if p >= 0:
            below[p] |= below[mi]
            below_train[p] |= below_train[mi]
    out = np.zeros(n, dtype=bool)
    for mi in range(n):
        if direct[mi]:
            out[mi] = not direct_train[mi]
        elif below[mi]:
            out[mi] = not below_train[mi]
        else:
            out[mi] = bool(out[parent[mi]]) if parent[mi] >= 0 else False
    return out


def module_buffers(view, mi: int) -> dict:
    """``{local name: tensor}`` of every buffer module ``mi`` holds itself, norm statistics included (Paddle keeps
    those among the parameters)."""
    registries = view.adapter.registries(view.modules[mi])
    out = {local: t for local, t in registries.buffers.items() if t is not None}
    prefix = f"{view.paths[mi]}." if view.paths[mi] else ""
    for s in view.statistics(mi):
        out.setdefault(view.stat_keys[s][len(prefix) :], view.stat_tensors[s])
    return out


def live_buffer(adapter, module, local: str):
    """The tensor registered as ``local`` in ``module`` now (a forward may have assigned a new one), or None."""
    registries = adapter.registries(module)
    found = registries.buffers.get(local)
    return found if found is not None else registries.statistics.get(local)


def frozen_buffers(view, live: np.ndarray | list | None = None, statistics: bool = True) -> list[tuple[str, int, str]]:
    """``(name, module index, local name)`` of every buffer inside a frozen module, in model order; without
    ``statistics``, the buffers of norm layers are left out (the norm lock governs their statistics and counters,
    such as torch's ``num_batches_tracked``, which Paddle lacks)."""
    frozen = frozen_modules(view, live)
    stat_modules = view.stat_modules
    out = []
    for mi in np.flatnonzero(frozen):
        mi = int(mi)
        if not statistics and mi in stat_modules:
            continue
        path = view.paths[mi]
        out += [(f"{path}.{local}" if path else local, mi, local) for local in module_buffers(view, mi)]
    return out


def register_region_source(source: Callable) -> Callable:
    """Register ``source(view) -> {parameter index: frozen row indices}``: the frozen rows of tensors that train.

    Args:
        source: called with a model view; returns the frozen rows (a sequence of ints or an int array) of each
            partly frozen parameter, by its index in ``view.params``.

    Returns:
        Callable: ``source`` itself (usable as a decorator).

    Example:
        >>> source = register_region_source(lambda view: {})
        >>> unregister_region_source(source)
    """
    if source not in _REGION_SOURCES:
        _REGION_SOURCES.append(source)
    return source


def unregister_region_source(source: Callable) -> None:
    """Remove a source added by :func:`register_region_source` (nothing when it is not registered)."""
    if source in _REGION_SOURCES:
        _REGION_SOURCES.remove(source)


def frozen_regions(view) -> dict[int, np.ndarray]:
    """``{parameter index: sorted frozen row indices}`` over every registered source (rows of one tensor joined)."""
    out: dict[int, np.ndarray] = {}
    for source in list(_REGION_SOURCES):
        for index, rows in (source(view) or {}).items():
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
            out[int(index)] = np.union1d(out[int(index)], rows) if int(index) in out else np.unique(rows)
    return {i: rows for i, rows in out.items() if rows.size}

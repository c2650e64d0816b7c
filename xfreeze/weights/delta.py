"""Delta checkpoints: save only what trains, with a fingerprint of the frozen base; load only onto that base.

A delta file is a safetensors file holding
  * the trainable parameters and the live state (statistics of norm layers that are not locked, other buffers);
  * in its metadata (``xfreeze_delta`` = format version): the freeze plan (trainable names, locked norm layers, by
    their statistic names), the framework whose names it uses, and a fingerprint of every frozen tensor and locked
    statistic: ``sha256(dtype, shape, raw bits)`` per tensor.

The fingerprint is framework-neutral by hashing *after conversion*: a base of another framework is first converted
(``xfreeze.convert``: names, Linear layouts, dtypes kept bit for bit) to the delta's framework, then hashed tensor by
tensor. So a torch delta checks and loads onto a Paddle base of the same architecture, and back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .convert import convert
from .files import StateDict, _save, load_checkpoint
from .load import load_matched
from ..backends import FRAMEWORKS
from ..core import tensors as _tensors
from ..core.dispatch import adapter_for
from ..core.errors import XFreezeError
from ..model.freeze import freeze, unfreeze
from ..model.view import view_of

VERSION = "1"
SHOWN = 5  # differing tensors named in an error


@dataclass
class FrozenCheck:
    """What :func:`verify_frozen` found. ``ok`` is True when every fingerprinted frozen tensor is unchanged."""

    checked: int = 0
    drifted: list = field(default_factory=list)
    missing: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.drifted and not self.missing

    def __str__(self) -> str:
        if self.ok:
            return f"frozen tensors: {self.checked} checked, none drifted"
        return (
            f"frozen tensors: {self.checked} checked; drifted {len(self.drifted)}: {self.drifted[:SHOWN]}; "
            f"missing {len(self.missing)}: {self.missing[:SHOWN]}"
        )


@dataclass
class DeltaReport:
    """What :func:`load_delta` did: tensors loaded, the freeze plan applied, the frozen tensors verified."""

    framework: str
    loaded: list = field(default_factory=list)
    trainable: list = field(default_factory=list)
    locked_norms: list = field(default_factory=list)
    verified: int = 0


def save_delta(model, path) -> Path:
    """Save only the trainable tensors and live norm statistics of ``model``, its freeze plan, and a fingerprint of
    every frozen tensor and locked statistic, as a safetensors file.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``, frozen as wanted (see :func:`xfreeze.freeze`).
        path: the file to write (safetensors, whatever the suffix; ``.safetensors`` recommended).

    Returns:
        Path: the written file (atomic, as :func:`xfreeze.save_checkpoint`).

    Raises:
        XFreezeError: not a model, or a write error (disk full, read-only), naming the path.

    Example:
        >>> import torch, tempfile, os, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> _ = xfreeze.freeze(model, "0")
        >>> path = xfreeze.save_delta(model, os.path.join(tempfile.mkdtemp(), "d.safetensors"))
        >>> sorted(xfreeze.load_checkpoint(path))
        ['1.bias', '1.weight']
    """
    adapter = adapter_for(model)
    parts = _parts(adapter, model)
    state = adapter.state_tensors(model)
    delta = StateDict({k: state[k] for k in parts["delta"]}, framework=adapter.name)
    metadata = {
        "xfreeze_delta": VERSION,
        "trainable": json.dumps(parts["trainable"]),
        "locked_norms": json.dumps(parts["locked"]),
        "fingerprint": json.dumps(_hashes(state, parts["frozen"])),
    }
    return _save(delta, path, "safetensors", metadata)


def load_delta(model, path) -> DeltaReport:
    """Load a delta onto ``model``: check its frozen tensors against the fingerprint, apply the freeze plan, load.

    Args:
        model: the base model (either framework; of another framework than the delta's, it is matched through
            ``xfreeze.convert``).
        path: a file written by :func:`save_delta`.

    Returns:
        DeltaReport: the keys loaded, the trainable names and locked norms applied, the frozen tensors verified.

    Raises:
        XFreezeError: not a delta file, a base whose frozen tensors differ from the fingerprint (the first differing
            tensors named), or delta tensors the model has no place for. Checked before anything changes.

    Example:
        >>> import torch, tempfile, os, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> _ = xfreeze.freeze(model, "0")
        >>> path = xfreeze.save_delta(model, os.path.join(tempfile.mkdtemp(), "d.safetensors"))
        >>> xfreeze.load_delta(model, path).loaded
        ['1.weight', '1.bias']
    """
    adapter = adapter_for(model)
    delta, plan = _read_delta(path)
    names = _name_map(adapter, model, delta.framework)  # delta name -> model name
    check = _compare(adapter, model, plan["fingerprint"], delta.framework)
    if not check.ok:
        raise XFreezeError(
            f"delta {str(path)!r} does not fit this base: {check}; the delta was saved on another "
            "base (or the base's frozen tensors changed). Nothing was changed"
        )
    incoming = convert(delta, to=adapter.name, model=model) if delta.framework != adapter.name else delta
    state = adapter.state_tensors(model)
    trainable = [_mapped(names, n, path) for n in plan["trainable"]]
    locked = {_mapped(names, n, path).rpartition(".")[0] for n in plan["locked_norms"]}
    bad = [k for k, v in incoming.items() if k not in state or tuple(_tensors.shape_of(v)) != tuple(state[k].shape)]
    if bad:
        raise XFreezeError(
            f"delta {str(path)!r} holds tensors this model has no place for (name or shape): "
            f"{bad[:SHOWN]}. Nothing was changed"
        )
    _apply_plan(adapter, model, trainable, locked)
    report = DeltaReport(delta.framework, trainable=trainable, locked_norms=sorted(locked), verified=check.checked)
    if incoming:
        loaded = load_matched(model, StateDict(dict(incoming), framework=adapter.name))
        report.loaded = loaded.loaded
    return report


def verify_frozen(model, path_or_fingerprint) -> FrozenCheck:
    """Did any frozen tensor drift? Compare ``model`` with a delta's fingerprint (or :func:`frozen_fingerprint`).

    Args:
        model: the model (either framework).
        path_or_fingerprint: a delta file, or the dict :func:`frozen_fingerprint` returned.

    Returns:
        FrozenCheck: ``ok``, ``drifted`` and ``missing`` names, ``checked`` count. Nothing is changed.

    Raises:
        XFreezeError: not a delta file / fingerprint.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> _ = xfreeze.freeze(model, "0")
        >>> fp = xfreeze.frozen_fingerprint(model)
        >>> xfreeze.verify_frozen(model, fp).ok
        True
    """
    if isinstance(path_or_fingerprint, dict):
        fp = path_or_fingerprint
        if not isinstance(fp.get("tensors"), dict) or not isinstance(fp.get("framework"), str):
            raise XFreezeError(
                "a fingerprint is the dict xfreeze.frozen_fingerprint(model) returns "
                "({'framework': ..., 'tensors': {name: hash}})"
            )
        tensors, framework = fp["tensors"], fp["framework"]
    else:
        delta, plan = _read_delta(path_or_fingerprint)
        tensors, framework = plan["fingerprint"], delta.framework
    adapter = adapter_for(model)
    return _compare(adapter, model, tensors, framework)


def frozen_fingerprint(model) -> dict:
    """``{"framework": ..., "tensors": {name: sha256}}`` of every frozen parameter and locked statistic of ``model``.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Linear(2, 2)
        >>> _ = xfreeze.freeze(model, "*")
        >>> sorted(xfreeze.frozen_fingerprint(model)["tensors"])
        ['bias', 'weight']
    """
    adapter = adapter_for(model)
    state = adapter.state_tensors(model)
    return {"framework": adapter.name, "tensors": _hashes(state, _parts(adapter, model)["frozen"])}


def _hashes(state, keys: list) -> dict:
    """``{key: sha256}`` in ``keys`` order. The bits are taken in this thread (framework calls), the hashing runs on
    up to 8 threads (hashlib releases the GIL on large buffers): the cost of a delta save is this hashing."""
    raws = [_tensors.to_raw(state[k], k) for k in keys]
    total = sum(r.bits.nbytes for r in raws)
    workers = min(8, os.cpu_count() or 1, max(1, total // _PER_THREAD))
    if workers <= 1:
        return {k: _digest(r) for k, r in zip(keys, raws)}
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(keys, pool.map(_digest, raws)))


_PER_THREAD = 16 << 20  # below this many bytes per thread a thread costs more than it saves


def _digest(raw) -> str:
    digest = hashlib.sha256(f"{raw.dtype}{list(raw.shape)}".encode())
    bits = raw.bits.astype(raw.bits.dtype.newbyteorder("<"), copy=False)
    digest.update(bits.reshape(-1).view("u1").data if bits.size else b"")
    return digest.hexdigest()


def _parts(adapter, model) -> dict:
    """State keys split into trainable, frozen (frozen parameters + locked statistics) and delta (what is saved)."""
    key_of: dict = {}
    for key, tensor in adapter.state_tensors(model).items():
        key_of.setdefault(id(tensor), key)
    trainable: list = []
    frozen: list = []
    locked: list = []
    taken: set = set()
    view = view_of(model, adapter.name)
    live = view.trainable()
    for mi, module in enumerate(view.modules):
        for i in view.direct(mi):
            key = key_of.get(id(view.params[i]))
            if key is None or key in taken:
                continue
            taken.add(key)
            (trainable if live[i] else frozen).append(key)
        stats = [key_of.get(id(view.stat_tensors[s])) for s in view.statistics(mi)]
        if stats and adapter.is_norm_locked(module):  # locked statistics are frozen; live ones go in the delta
            frozen += [k for k in stats if k is not None]
            locked.append(stats[0])
            taken |= set(stats)
    state = adapter.state_tensors(model)
    rest = [k for k in state if k not in taken]  # unlocked statistics and other buffers
    return {"trainable": trainable, "frozen": frozen, "locked": locked, "delta": trainable + rest}


def _read_delta(path):
    delta = load_checkpoint(path)
    meta = delta.metadata
    if delta.format != "safetensors" or meta.get("xfreeze_delta") is None:
        raise XFreezeError(
            f"{str(path)!r} is not an xfreeze delta (no xfreeze_delta metadata); write one with "
            "xfreeze.save_delta(model, path)"
        )
    if meta["xfreeze_delta"] != VERSION:
        raise XFreezeError(
            f"delta {str(path)!r} has format version {meta['xfreeze_delta']!r}; this xfreeze reads version {VERSION!r}"
        )
    try:
        plan = {k: json.loads(meta[k]) for k in ("trainable", "locked_norms", "fingerprint")}
    except (KeyError, ValueError) as exc:
        raise XFreezeError(f"delta {str(path)!r} has a damaged freeze plan in its metadata: {exc}") from None
    if meta.get("framework") not in FRAMEWORKS and delta.framework is None:
        raise XFreezeError(f"delta {str(path)!r} does not say which framework's names it uses")
    delta.framework = meta.get("framework") or delta.framework
    return delta, plan


def _name_map(adapter, model, framework: str) -> dict:
    """Delta (``framework``) name -> model name, through the same conversion loading uses."""
    state = adapter.state_tensors(model)
    if framework == adapter.name:
        return {k: k for k in state}
    out = convert(StateDict(state, framework=adapter.name), to=framework)
    dropped = {k for k, note in out.notes if note.startswith("dropped")}
    kept = [k for k in state if k not in dropped]
    if len(kept) != len(out):
        raise XFreezeError(f"cannot match {len(kept)} model keys to {len(out)} converted names; convert by hand")
    return dict(zip(out, kept))


def _mapped(names: dict, name: str, path) -> str:
    if name not in names:
        raise XFreezeError(
            f"delta {str(path)!r} names {name!r}, which this model lacks; it belongs to another "
            "architecture. Nothing was changed"
        )
    return names[name]


def _compare(adapter, model, fingerprint: dict, framework: str) -> FrozenCheck:
    """Hash the model's tensors named in ``fingerprint`` in ``framework``'s names and layout (converted if needed)."""
    state = StateDict(adapter.state_tensors(model), framework=adapter.name)
    if framework != adapter.name:
        state = convert(state, to=framework)
    check = FrozenCheck(checked=len(fingerprint))
    check.missing = [name for name in fingerprint if name not in state]
    now = _hashes(state, [name for name in fingerprint if name in state])
    check.drifted = [name for name, digest in now.items() if digest != fingerprint[name]]
    return check


def _apply_plan(adapter, model, trainable: list, locked: set) -> None:
    freeze(model, "*")
    if trainable:
        unfreeze(model, *[f"re:{re.escape(n)}" for n in trainable])
    training = adapter.module_training(model)
    view = view_of(model, adapter.name)
    for mi in sorted(view.stat_modules):
        path, module = view.paths[mi], view.modules[mi]
        if path in locked and not adapter.is_norm_locked(module):
            adapter.lock_norm(module)
        elif path not in locked and adapter.is_norm_locked(module):
            adapter.unlock_norm(module, training)

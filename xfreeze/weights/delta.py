"""Delta checkpoints: save only what trains, with a fingerprint of the frozen base; load only onto that base.

A delta file is a safetensors file holding
  * the trainable parameters and the live state (statistics of norm layers that are not locked, other buffers);
  * in its metadata (``xfreeze_delta`` = format version): the freeze plan (trainable names, locked norm layers, by
    their statistic names), the framework whose names it uses, and a fingerprint of every frozen tensor and locked
    statistic: ``sha256(dtype, shape, raw bits)`` per tensor.

The fingerprint is framework-neutral by hashing *after conversion*: a base of another framework is first converted
(``xfreeze.convert``: names, Linear layouts, dtypes kept bit for bit) to the delta's framework, then hashed tensor by
tensor. So a torch delta checks and loads onto a Paddle base of the same architecture, and back.

The file cannot change what it says is frozen: :func:`load_delta` refuses a file carrying a tensor its plan freezes
or locks, a fingerprint missing any of them, a cast that changes values, or a plan that does not fit the model, all
checked (``delta_file``, ``delta_check``) before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import delta_rows as _rows
from . import ranks as _ranks
from .delta_check import BUFFERS_HASHED, BUFFERS_KEY, buffers_hashed
from .delta_check import FrozenCheck, Placement, compare, in_delta_names, parts, place, uncovered
from .delta_file import VERSION, VERSION_ROWS, check_fingerprint, read_delta
from .files import StateDict, _save
from .lora import check_wrapped
from ..backends import FRAMEWORKS
from ..core.dispatch import adapter_for
from ..core.errors import XFreezeError
from ..core.table import render
from ..model.freeze import model_lock
from ..model.live import warn_if_out_of_step
from ..model.view import view_of

__all__ = ["DeltaReport", "FrozenCheck", "frozen_fingerprint", "load_delta", "save_delta", "verify_frozen"]


@dataclass
class DeltaReport:
    """What :func:`load_delta` did; prints as a table.

    Attributes:
        framework: whose tensor names the delta uses (``"torch"`` / ``"paddle"``).
        loaded: model keys filled from the file.
        trainable: the parameters the plan trains (every other parameter is now frozen).
        locked_norms: norm layers whose statistics the plan locks.
        verified: frozen tensors whose hash matched the fingerprint.
        cast: ``{key: (file dtype, model dtype)}``: exact widenings made (float16 -> float32, ...).
        missing: trainable parameters the file lacks, kept at the base's values (only with ``allow_missing=True``).
        model: the model's class and framework, e.g. ``"ResNet (paddle)"``.
    """

    framework: str
    loaded: list = field(default_factory=list)
    trainable: list = field(default_factory=list)
    locked_norms: list = field(default_factory=list)
    verified: int = 0
    cast: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    model: str = ""

    def __str__(self) -> str:
        rows = [
            ["loaded", len(self.loaded), _sample(self.loaded)],
            ["trainable", len(self.trainable), _sample(self.trainable)],
            ["locked norms", len(self.locked_norms), _sample(self.locked_norms)],
            ["frozen, hash verified", self.verified, ""],
            ["dtype cast", len(self.cast), _sample([f"{k} {a}->{b}" for k, (a, b) in self.cast.items()])],
            ["trainable, not in file", len(self.missing), _sample(self.missing)],
        ]
        footer = [f"a {self.framework} delta (its tensor names are {self.framework}'s)"]
        return render(f"xfreeze.load_delta: {self.model or 'model'}", ["result", "tensors", "examples"], rows, footer)

    __repr__ = __str__


def save_delta(model, path) -> Path:
    """Save only the trainable tensors and live norm statistics of ``model``, its freeze plan, and a fingerprint of
    every frozen tensor and locked statistic, as a safetensors file.

    The fingerprint also hashes every buffer of a frozen module (QuantAct ranges, a router bias, an fp8 amax
    history): they are frozen state, not carried in the file. A delta saved after such a buffer moved in training
    does not load onto the untouched base (the error names them); :func:`xfreeze.lock_buffers` keeps them fixed.
    Files written before (no ``frozen_buffers`` metadata) still load, their carried buffers with a warning.

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
    state = adapter.state_tensors(model)  # first: a state dict writes the trained rows of split tensors in
    view = view_of(model, adapter.name)
    cut = _rows.sliced(adapter, model, view, state)  # split tensors: only their trainable rows are saved (issue 21)
    split = _rows.adjust_parts(parts(adapter, model), cut)
    delta = StateDict({k: state[k] for k in split["delta"]}, framework=adapter.name)
    delta.update(_rows.rows_values(view, state, cut))
    metadata = {
        "xfreeze_delta": VERSION_ROWS if cut else VERSION,
        "trainable": json.dumps(split["trainable"]),
        "locked_norms": json.dumps(split["locked"]),
        "fingerprint": json.dumps(_rows.frozen_hashes(state, split["frozen"], cut)),
        BUFFERS_KEY: BUFFERS_HASHED,  # the fingerprint covers the buffers of frozen modules
    }
    if cut:
        metadata["slices"] = json.dumps(_rows.metadata(cut))
    return _save(delta, path, "safetensors", metadata)


def load_delta(model, path, *, allow_missing: bool = False) -> DeltaReport:
    """Load a delta onto ``model``: check everything, then load its tensors and apply its freeze plan.

    Checked before anything changes: the file's metadata (types, nesting), that its plan fits the model (it trains
    parameters, it locks norm layers), that the file carries no tensor the plan freezes or locks, that every
    frozen tensor has a hash and the base's tensors match them, that no value would change in a cast (only exact
    widenings such as float16 -> float32 are made), and that every tensor the plan trains is in the file. From the
    first check to the last write it holds the model's lock, the one ``freeze`` / ``unfreeze`` take (reentrant):
    another thread's change of the model waits, and cannot slip between the checks and the writes.

    Args:
        model: the base model (either framework; of another framework than the delta's, it is matched through
            ``xfreeze.convert``).
        path: a file written by :func:`save_delta`.
        allow_missing: load a file that lacks some tensors its plan trains; they keep the base's values and are
            listed in the report's ``missing``.

    Returns:
        DeltaReport: the keys loaded, the trainable names and locked norms applied, the frozen tensors verified;
        prints as a table.

    Raises:
        XFreezeError: not a delta file, damaged metadata (the field named), a plan or tensors that do not fit the
            model, tensors the plan freezes or locks, a fingerprint that misses frozen tensors (their count) or
            that the base does not match (the first differing tensors named), a cast that changes values, or
            trainable tensors missing. The model is left exactly as it was.

    Example:
        >>> import torch, tempfile, os, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> _ = xfreeze.freeze(model, "0")
        >>> path = xfreeze.save_delta(model, os.path.join(tempfile.mkdtemp(), "d.safetensors"))
        >>> xfreeze.load_delta(model, path).loaded
        ['1.weight', '1.bias']
    """
    adapter = adapter_for(model)
    if not isinstance(allow_missing, bool):
        raise XFreezeError(f"allow_missing must be True or False. Received: allow_missing={allow_missing!r}")
    delta, plan = read_delta(path)
    with model_lock(model):  # as freeze / unfreeze: another thread's change waits until checked and written
        check_wrapped(view_of(model, adapter.name), [*plan.trainable, *delta], f"delta file {str(path)!r}")
        view = view_of(model, adapter.name)
        rows = _rows.RowsLoad(adapter, view, plan, f"delta {str(path)!r}") if plan.slices else None
        placement = place(adapter, model, delta, plan, path, allow_missing, rows)  # every check, before any write
        _apply(adapter, model, placement)
    return DeltaReport(
        plan.framework,
        loaded=list(placement.values),
        trainable=placement.trainable,
        locked_norms=placement.locked,
        verified=placement.verified,
        cast=placement.cast,
        missing=placement.missing,
        model=view_of(model, adapter.name).label,
    )


def verify_frozen(model, path_or_fingerprint) -> FrozenCheck:
    """Did any frozen tensor drift? Compare ``model`` with a delta's fingerprint (or :func:`frozen_fingerprint`).

    Args:
        model: the model (either framework).
        path_or_fingerprint: a delta file, or the dict :func:`frozen_fingerprint` returned. For a file, the tensors
            its plan leaves frozen but its fingerprint does not hash are reported too (``uncovered``).

    Returns:
        FrozenCheck: ``ok``, ``drifted``, ``missing`` and ``uncovered`` names, ``checked`` count. Nothing is changed.

    Raises:
        XFreezeError: not a delta file / fingerprint, or damaged metadata (the field named).

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> _ = xfreeze.freeze(model, "0")
        >>> fp = xfreeze.frozen_fingerprint(model)
        >>> xfreeze.verify_frozen(model, fp).ok
        True
    """
    adapter = adapter_for(model)
    if isinstance(path_or_fingerprint, dict):
        fp = path_or_fingerprint
        if not isinstance(fp.get("tensors"), dict) or fp.get("framework") not in FRAMEWORKS:
            raise XFreezeError(
                "a fingerprint is the dict xfreeze.frozen_fingerprint(model) returns "
                "({'framework': ..., 'tensors': {name: hash}})"
            )
        tensors = check_fingerprint(fp["tensors"], "the fingerprint's 'tensors'")
        state, _ = in_delta_names(adapter, model, fp["framework"])
        cut = {k: (np.asarray(r, dtype=np.int64), a) for k, (r, a) in fp.get("slices", {}).items()}
        whole = {k: v for k, v in tensors.items() if k not in cut}
        return _rows.compare_rows(compare(whole, state), tensors, cut, state)
    delta, plan = read_delta(path_or_fingerprint)
    state, names = in_delta_names(adapter, model, plan.framework)
    whole = {k: v for k, v in plan.fingerprint.items() if k not in plan.slices}
    check = _rows.compare_rows(compare(whole, state), plan.fingerprint, plan.slices, state)
    check.uncovered = uncovered(adapter, model, plan, names, buffers=buffers_hashed(delta.metadata))
    return check


def frozen_fingerprint(model) -> dict:
    """``{"framework": ..., "tensors": {name: sha256}}`` of every frozen parameter, locked statistic and buffer of a
    frozen module (see :mod:`xfreeze.model.buffers`) of ``model``.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.

    Returns:
        dict: the framework whose names are used, and one hash per frozen tensor, in model order.

    Raises:
        XFreezeError: not a model.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Linear(2, 2)
        >>> _ = xfreeze.freeze(model, "*")
        >>> sorted(xfreeze.frozen_fingerprint(model)["tensors"])
        ['bias', 'weight']
    """
    adapter = adapter_for(model)
    state = adapter.state_tensors(model)
    cut = _rows.sliced(adapter, model, view_of(model, adapter.name), state)
    tensors = _rows.frozen_hashes(state, _rows.adjust_parts(parts(adapter, model), cut)["frozen"], cut)
    out = {"framework": adapter.name, "tensors": tensors}
    if cut:  # split tensors: the hash covers their frozen rows (issue 21)
        out["slices"] = {k: (rows.tolist(), axis) for k, (rows, axis) in cut.items()}
    return out


def _apply(adapter, model, placement: Placement) -> None:
    """Write a checked placement: tensors first (an FSDP1 model is refused there, before any write), then the
    trainability of every parameter, then the norm locks."""
    _rows.join_all(view_of(model, adapter.name))  # split tensors join back first: what is loaded reaches them
    _ranks.load_tensors(adapter, model, adapter.state_tensors(model), placement.values)
    view = view_of(model, adapter.name)
    before = view.trainable()
    train = set(placement.trainable) - set(placement.rows)
    wanted = [name in train for name in view.names]
    adapter.apply_trainable([p for p, t in zip(view.params, wanted) if t], True)
    adapter.apply_trainable([p for p, t in zip(view.params, wanted) if not t], False)
    adapter.sync_grads(view.modules[mi] for mi in sorted(set(view.owner)))
    training = adapter.module_training(view.inner)
    locked = set(placement.locked)
    for mi in sorted(view.stat_modules):
        path, module = view.paths[mi], view.modules[mi]
        if path in locked and not adapter.is_norm_locked(module):
            adapter.lock_norm(module)
        elif path not in locked and adapter.is_norm_locked(module):
            adapter.unlock_norm(module, training)
    _rows.apply_rows(view, placement.rows)  # split tensors: split like the file's, rows from the file
    warn_if_out_of_step(model, [n for n, t, b in zip(view.names, wanted, before) if t and not b], adapter.name)


def _sample(items: list, n: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... (+{len(items) - n})" if len(items) > n else "")

"""load_matched: load every key whose name and shape match, say exactly what happened, change nothing on error."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


from . import _select
from ._backend import adapter_for
from ._checkpoint import StateDict, as_state_dict, load_checkpoint, to_numpy
from ._convert import convert
from ._errors import XFreezeError
from ._table import render

PREFIXES = ("module.", "_layers.")  # torch DataParallel / DDP, Paddle DataParallel


@dataclass
class LoadReport:
    """What :func:`load_matched` did. Every key of the model and of the source is in exactly one list, except the
    model's keys that the source's framework has no counterpart for (torch's ``num_batches_tracked``), kept as is.

    Attributes:
        loaded: model keys filled from the source.
        mismatched: ``{key: (model shape, source shape)}``, not loaded.
        missing: model keys the source lacks (kept as they were).
        unexpected: source keys the model lacks.
        skipped: model keys excluded by ``skip`` patterns.
        renamed: ``{source key: model key}`` from prefixes, ``rename`` and framework conversion.
        cast: ``{key: (source dtype, model dtype)}`` for loaded keys whose dtype was converted.
        converted: ``{source key: [what the torch <-> Paddle conversion did to it]}``.
        notes: what else happened (unwrapping, transposes, conversion), as ``(key, note)`` pairs.
    """
    model: str
    source_framework: str | None = None
    loaded: list = field(default_factory=list)
    mismatched: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    renamed: dict = field(default_factory=dict)
    cast: dict = field(default_factory=dict)
    converted: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def __str__(self) -> str:
        rows = [["loaded", len(self.loaded), _sample(self.loaded)],
                ["shape mismatch", len(self.mismatched),
                 _sample([f"{k} model {list(a)} source {list(b)}" for k, (a, b) in self.mismatched.items()])],
                ["missing in source", len(self.missing), _sample(self.missing)],
                ["unexpected in source", len(self.unexpected), _sample(self.unexpected)],
                ["skipped", len(self.skipped), _sample(self.skipped)],
                ["renamed", len(self.renamed), _sample([f"{a} -> {b}" for a, b in self.renamed.items()])],
                ["dtype cast", len(self.cast), _sample([f"{k} {a}->{b}" for k, (a, b) in self.cast.items()])],
                ["converted", len(self.converted),
                 _sample([f"{k}: {'; '.join(v)}" for k, v in self.converted.items()], 2)]]
        source = f" from {self.source_framework}" if self.source_framework else ""
        return render(f"xfreeze.load_matched: {self.model}{source}", ["result", "keys", "examples"], rows)

    __repr__ = __str__


def load_matched(model, source, *, rename=None, skip=(), strict: bool = False, allow_empty: bool = False,
                 framework: str | None = None, backend: str | None = None) -> LoadReport:
    """Load the weights of ``source`` whose names and shapes match ``model``; report everything else.

    Args:
        model: the model to fill (``torch.nn.Module`` or ``paddle.nn.Layer``).
        source: a checkpoint path, a state dict (torch tensors, Paddle tensors or numpy arrays), or another model of
            either framework. A checkpoint or model of the other framework is converted (names and layouts).
        rename: ``{source prefix: model prefix}`` or a function ``key -> new key`` (``None`` drops the key).
            ``module.`` (DataParallel/DDP) and ``_layers.`` (Paddle DataParallel) prefixes are removed by themselves.
        skip: xfreeze patterns of model keys not to load (e.g. ``"fc"`` to keep a new head).
        strict: raise (with the report) instead of loading partially.
        allow_empty: accept loading zero keys (otherwise an error: the source belongs to another model).
        framework: whose names the source uses, when it cannot be told (``"torch"`` / ``"paddle"``).
        backend: force ``"torch"`` or ``"paddle"`` for ``model``.

    Returns:
        LoadReport: loaded, shape-mismatched, missing, unexpected, skipped, renamed, converted and cast keys.

    Raises:
        XFreezeError: a bad source (see :func:`load_checkpoint`), non-tensor values, conflicting rename rules,
            a ``skip`` pattern matching nothing, ``strict`` with any difference, or zero keys loaded. The model is
            left exactly as it was.

    Example:
        >>> import torch, xfreeze
        >>> old = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1000))
        >>> new = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 10))
        >>> report = xfreeze.load_matched(new, old.state_dict())
        >>> report.loaded, list(report.mismatched)
        (['0.weight', '0.bias'], ['1.weight', '1.bias'])
    """
    adapter = adapter_for(model, backend)
    state = _source_state(source)
    origin = framework or state.framework
    report = LoadReport(_select.model_name(adapter, model), origin, notes=list(state.notes))
    targets = adapter.state_tensors(model)
    keys = _renamed_keys(list(state), set(targets), rename, report)
    state = StateDict({keys[k]: v for k, v in state.items() if keys[k] is not None}, framework=origin)
    if origin is not None and origin != adapter.name:
        converted = convert(state, to=adapter.name, model=model)
        for key, note in converted.notes:
            report.converted.setdefault(key, []).append(note)
        state = converted
    skipped = _skipped(adapter, model, targets, skip)
    # keys the source's framework has no counterpart for (torch's num_batches_tracked) are kept, not "missing"
    no_counterpart = adapter.own_only_keys(targets) if origin not in (None, adapter.name) else set()
    plan = _plan(adapter, targets, state, skipped, no_counterpart, report)
    if strict and (report.mismatched or report.missing or report.unexpected):
        raise XFreezeError(f"strict load of {report.model} found differences; nothing was loaded:\n{report}")
    if not plan and not allow_empty:
        raise XFreezeError(f"loaded 0 of {len(targets)} keys into {report.model}: the source looks like another "
                           f"model (pass allow_empty=True if that is intended); nothing was changed.\n{report}")
    for key, array in plan.items():
        adapter.assign(targets[key], array)
    return report


def _source_state(source) -> StateDict:
    if isinstance(source, (str, os.PathLike)):
        return load_checkpoint(source)
    if isinstance(source, StateDict):
        return source
    if isinstance(source, dict):
        return as_state_dict(dict(source))
    try:
        adapter = adapter_for(source)
    except XFreezeError:
        raise XFreezeError(f"source must be a checkpoint path, a state dict or a model; received "
                           f"{type(source).__name__}") from None
    return StateDict(adapter.state_arrays(source), framework=adapter.name)


def _renamed_keys(keys: list, targets: set, rename, report: LoadReport) -> dict:
    """Source key -> model key (or None), after framework prefixes and ``rename``; errors on conflicts."""
    out = {}
    rules = _prefix_rules(rename) if isinstance(rename, dict) else None
    for key in keys:
        new = key
        for prefix in PREFIXES:
            if new.startswith(prefix) and not any(t.startswith(prefix) for t in targets):
                new = new[len(prefix):]
        if rules is not None:
            match = next(((old, rep) for old, rep in rules if new.startswith(old)), None)
            new = match[1] + new[len(match[0]):] if match else new
        elif callable(rename):
            new = rename(new)
            if new is not None and not isinstance(new, str):
                raise XFreezeError(f"rename({key!r}) returned {new!r}: return a string, or None to drop the key")
        elif rename is not None:
            raise XFreezeError(f"rename must be a {{prefix: prefix}} dict or a function. Received: {type(rename).__name__}")
        out[key] = new
        if new != key:
            report.renamed[key] = new
    clashes = {}
    for key, new in out.items():
        if new is not None:
            clashes.setdefault(new, []).append(key)
    clashes = {new: olds for new, olds in clashes.items() if len(olds) > 1}
    if clashes:
        new, olds = next(iter(clashes.items()))
        raise XFreezeError(f"rename rules map {len(olds)} source keys to {new!r}: {olds}; make them distinct")
    return out


def _prefix_rules(rename: dict) -> list:
    for a in rename:
        for b in rename:
            if a != b and b.startswith(a):
                raise XFreezeError(f"conflicting rename rules: {a!r} and {b!r} both match keys starting with {b!r}; "
                                   "keep one of them")
    return sorted(rename.items(), key=lambda item: -len(item[0]))


def _skipped(adapter, model, targets: dict, skip) -> set:
    if not skip:
        return set()
    patterns = _select.compile_patterns([skip] if isinstance(skip, str) else list(skip))
    entries = _select.entries_for(adapter, model, list(targets))
    return {e.name for e in _select.resolve(adapter, model, patterns, entries)}


def _plan(adapter, targets: dict, state: StateDict, skipped: set, ignored: set, report: LoadReport) -> dict:
    plan = {}
    for key, tensor in targets.items():
        if key in ignored and key not in state:
            continue
        if key in skipped:
            report.skipped.append(key)
        elif key not in state:
            report.missing.append(key)
        else:
            array = to_numpy(state[key], key)
            shape = tuple(tensor.shape)
            if tuple(array.shape) != shape:
                report.mismatched[key] = (shape, tuple(array.shape))
                continue
            dtype = adapter.numpy_dtype(tensor)
            if array.dtype != dtype:
                report.cast[key] = (str(array.dtype), str(dtype))
                array = array.astype(dtype)
            plan[key] = array
            report.loaded.append(key)
    report.unexpected = [k for k in state if k not in targets]
    return plan


def _sample(items: list, n: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... (+{len(items) - n})" if len(items) > n else "")



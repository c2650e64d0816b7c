"""load_matched: load every key whose name and shape match (or whose shape it knows how to adapt: ``adapt.py``),
say exactly what happened, hold partial loads to one policy (``partial.py``), change nothing on error."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import lora as _lora
from . import partial as _partial
from . import ranks as _distributed
from .adapt import Adaptations
from ..model import select as _select
from ..core import tensors as _tensors
from ..core.dispatch import adapter_for, adapter_named
from . import shards as _shards
from .files import load_checkpoint
from .folders import Folder, is_folder, open_folder, read_all
from .paths import as_path
from .convert import alignment_difference, convert
from .statedict import StateDict, as_state_dict
from ..core.errors import XFreezeError, check_choice
from ..core.table import render
from ..model.provenance import record_load
from ..model.view import view_of
from ..backends import ADAPTERS
from ..backends.naming import naming


@dataclass
class LoadReport:
    """What :func:`load_matched` did. Every key of the model and of the source is in exactly one list, except the
    model's keys that the source's framework has no counterpart for (torch's ``num_batches_tracked``), kept as is.

    Attributes:
        loaded: model keys filled from the source.
        adapted: ``{key: (model shape, source shape, how)}``: filled from a source tensor of another shape,
            adapted (a position grid resampled, input channels or rows added; see ``adapt=``).
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
    adapted: dict = field(default_factory=dict)
    mismatched: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    renamed: dict = field(default_factory=dict)
    cast: dict = field(default_factory=dict)
    converted: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def __str__(self) -> str:
        rows = [
            ["loaded", len(self.loaded), _sample(self.loaded)],
            [
                "adapted",
                len(self.adapted),
                _sample([f"{k} {list(a)} <- {list(b)}: {how}" for k, (a, b, how) in self.adapted.items()], 2),
            ],
            [
                "shape mismatch",
                len(self.mismatched),
                _sample([f"{k} model {list(a)} source {list(b)}" for k, (a, b) in self.mismatched.items()]),
            ],
            ["missing in source", len(self.missing), _sample(self.missing)],
            ["unexpected in source", len(self.unexpected), _sample(self.unexpected)],
            ["skipped", len(self.skipped), _sample(self.skipped)],
            ["renamed", len(self.renamed), _sample([f"{a} -> {b}" for a, b in self.renamed.items()])],
            ["dtype cast", len(self.cast), _sample([f"{k} {a}->{b}" for k, (a, b) in self.cast.items()])],
            ["converted", len(self.converted), _sample([f"{k}: {'; '.join(v)}" for k, v in self.converted.items()], 2)],
        ]
        source = f" from {self.source_framework}" if self.source_framework else ""
        return render(f"xfreeze.load_matched: {self.model}{source}", ["result", "keys", "examples"], rows)

    __repr__ = __str__


def load_matched(
    model,
    source,
    *,
    rename=None,
    skip=(),
    strict: bool = False,
    allow_empty: bool = False,
    allow_partial: bool = False,
    adapt: bool = True,
    framework: str | None = None,
    backend: str | None = None,
) -> LoadReport:
    """Load the weights of ``source`` whose names and shapes match ``model``; report everything else.

    Args:
        model: the model to fill (``torch.nn.Module`` or ``paddle.nn.Layer``).
        source: a checkpoint path, a state dict (torch tensors, Paddle tensors or numpy arrays), or another model of
            either framework. A checkpoint or model of the other framework is converted (names and layouts).
        rename: ``{source prefix: model prefix}`` or a function ``key -> new key`` (``None`` drops the key).
            ``module.`` (DataParallel/DDP) and ``_layers.`` (Paddle DataParallel) prefixes are removed by themselves.
        skip: xfreeze patterns of model keys not to load (e.g. ``"fc"`` to keep a new head).
        strict: raise (with the report) on any missing, unexpected or shape-mismatched key (adapted keys are not
            differences: pass ``adapt=False`` as well to refuse them).
        allow_empty: accept loading zero keys (otherwise an error: the source belongs to another model).
        allow_partial: accept a load that places (loads or adapts) fewer than half of the keys it was asked to fill,
            and silence the warning about missing or mismatched keys outside the head (otherwise: an error naming
            the counts, and where the architectures differ for a conversion; a warning with the counts).
        adapt: adapt what a shape mismatch can mean (a position grid at another resolution, a first conv with
            another number of input channels, an embedding or output layer with more rows): see
            ``docs/weights.md``. ``False``: every shape mismatch is skipped and reported.
        framework: whose names the source uses, when it cannot be told (``"torch"`` / ``"paddle"``).
        backend: force ``"torch"`` or ``"paddle"`` for ``model``.

    Returns:
        LoadReport: loaded, adapted, shape-mismatched, missing, unexpected, skipped, renamed, converted and cast
        keys.

    Raises:
        XFreezeError: a bad source (see :func:`load_checkpoint`), non-tensor, sparse or meta values (named),
            conflicting rename rules, a ``skip`` pattern matching nothing, ``strict`` with any difference, zero keys
            loaded, or fewer than half placed (without ``allow_partial``). The model is left exactly as it was.

    Warns:
        UserWarning: keys outside the model's head left at their initial values (missing or shape-mismatched),
            with a ``HINT:``; not with ``allow_partial=True``.

    Example:
        >>> import collections, torch, xfreeze
        >>> def net(classes):
        ...     layers = collections.OrderedDict(body=torch.nn.Linear(4, 8), fc=torch.nn.Linear(8, classes))
        ...     return torch.nn.Sequential(layers)
        >>> report = xfreeze.load_matched(net(10), net(1000).state_dict())  # a new head: reported, not warned
        >>> report.loaded, list(report.mismatched)
        (['body.weight', 'body.bias'], ['fc.weight', 'fc.bias'])
    """
    _check_options(rename, skip, strict, allow_empty, framework)
    for argument, value in (("allow_partial", allow_partial), ("adapt", adapt)):
        if not isinstance(value, bool):
            raise XFreezeError(f"{argument} must be True or False. Received: {argument}={value!r}")
    view = view_of(model, backend)
    adapter = view.adapter
    source_state = _source_state(source)  # a StateDict, or a checked checkpoint folder (shards read one at a time)
    origin = framework or source_state.framework
    report = LoadReport(view.label, origin, notes=list(source_state.notes))
    targets = adapter.state_tensors(model)
    converting = origin if origin is not None and origin != adapter.name else None
    context = _Context(view, model, targets, rename, origin, converting, Adaptations(view) if adapt else None)
    context.skipped = _skipped(view, list(targets), skip)
    context.lora = _lora.source_of(source, source_state, allow_partial)  # a LoRA adapter's ranks and scaling
    # keys the source's framework has no counterpart for (torch's num_batches_tracked) are kept, not "missing"
    context.ignored = _own_only(adapter.name, targets) if converting else set()
    folder = source_state if isinstance(source_state, Folder) and source_state.sharded else None
    if folder is not None:  # every shard read and planned, one at a time, before the first write
        plan, differences = _shards.check_all(folder, context, report, _prepared)
        source_state = None
    else:
        plan, state = _prepared(source_state, context, report)  # validates before any write
        differences = list(state.differences) if converting else []
    if strict and (report.mismatched or report.missing or report.unexpected):
        raise XFreezeError(f"strict load of {report.model} found differences; nothing was loaded:\n{report}")
    if converting or plan:

        def why() -> list:
            return differences or [
                (source_state is not None and alignment_difference(source_state, model, origin))
                or "the module names did not map"
            ]

        _partial.check_placed(report, allow=allow_partial or allow_empty, converting=converting, why=why)
    if not plan and not allow_empty:
        raise XFreezeError(
            f"loaded 0 of {len(targets)} keys into {report.model}: the source looks like another "
            f"model (pass allow_empty=True if that is intended); nothing was changed.\n{report}"
        )
    if converting:
        _warn_differences(report, differences, origin)
    left = _partial.untouched(report, targets, plan)
    if not (allow_partial or allow_empty):
        _partial.warn_outside_head(view, report, left)
    if folder is not None:  # shard after shard: read, planned again (as checked) and placed
        _shards.place_all(folder, context, report, plan, _prepared, _write)
    else:
        _write(context, plan)
    record_load(model, left)
    return report


@dataclass
class _Context:
    """What every part of a load shares: the model and its keys, the options, and the decisions made once."""

    view: Any
    model: Any
    targets: dict
    rename: Any
    origin: str | None
    converting: str | None
    adaptations: Any
    skipped: set = field(default_factory=set)
    ignored: set = field(default_factory=set)
    lora: object = None  # lora.Source: a LoRA adapter's ranks and scaling (weights/lora.py)


def _prepared(state, context: _Context, report: LoadReport) -> tuple:
    """``(plan, state as converted)`` for one state (a whole source, or one shard of a folder): its values
    checked, keys renamed and converted, matched against the model into ``report``. Writes nothing."""
    _check_readable(state, context.view.label)
    keys = _renamed_keys(list(state), set(context.targets), context.rename, report)
    state = StateDict({keys[k]: v for k, v in state.items() if keys[k] is not None}, framework=context.origin)
    if context.converting:
        state = convert(state, to=context.view.adapter.name, model=context.model, source=context.origin)
        for key, note in state.notes:
            report.converted.setdefault(key, []).append(note)
    view, targets = context.view, context.targets
    state = _lora.fit(context, state, report)  # an adapter: its targets and ranks fit, alpha / r rescaled
    plan = _plan(view, targets, state, context.skipped, context.ignored, report, context.adaptations)
    return plan, state


def _write(context: _Context, plan: dict) -> None:
    view = context.view
    _distributed.load_tensors(view.adapter, context.model, context.targets, plan)
    for path, module in zip(view.paths, view.modules):  # a tensor training some rows: they take what was loaded
        splits = view.adapter.row_splits(module)
        if splits and any((f"{path}.{local}" if path else local) in plan for local in splits):
            view.adapter.reload_rows(module)


def _warn_differences(report, differences, origin) -> None:
    for text in differences:
        warnings.warn(
            f"{report.model} and its {origin} twin differ: {text}.\nHINT: outputs will not match the "
            f"source model's; fine-tune, or use a model built the same way in both frameworks.",
            UserWarning,
            stacklevel=3,
        )


def _check_readable(state, label: str) -> None:
    """Every value a dense tensor with data (or a numpy array of numbers), checked before anything is copied."""
    for key, value in state.items():
        if not _tensors.is_tensor(value):
            raise XFreezeError(
                f"the source for {label} has values that are not tensors: {key!r} ({type(value).__name__}); "
                "pass the weights mapping itself (e.g. ckpt['model']). Nothing was changed"
            )
        backend = _tensors.backend_of(value)
        problem = adapter_named(backend).unreadable(value) if backend is not None else None
        if problem is not None:
            raise XFreezeError(
                f"the source for {label} holds {problem} at {key!r}: load_matched copies dense values only. "
                "Pass dense tensors with data (torch: t.to_dense(), or materialize a meta model before taking its "
                "state_dict; Paddle: t.to_dense()). Nothing was changed"
            )


def _check_options(rename, skip, strict, allow_empty, framework) -> None:
    if (
        rename is not None
        and not callable(rename)
        and not (isinstance(rename, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in rename.items()))
    ):
        raise XFreezeError(
            f"rename must be a {{str prefix: str prefix}} dict or a function key -> key (or None). "
            f"Received: rename={rename!r}"
        )
    if not (isinstance(skip, str) or (isinstance(skip, (list, tuple)) and all(isinstance(p, str) for p in skip))):
        raise XFreezeError(f"skip must be a pattern string or a list of them. Received: skip={skip!r}")
    for argument, value in (("strict", strict), ("allow_empty", allow_empty)):
        if not isinstance(value, bool):
            raise XFreezeError(f"{argument} must be True or False. Received: {argument}={value!r}")
    if framework is not None:
        check_choice("framework", framework, tuple(ADAPTERS))


def _source_state(source):
    if _lora.is_adapter_folder(source):  # PEFT's save_pretrained: adapter_config.json + adapter_model.safetensors
        return _lora.read_adapter_folder(source)
    if is_folder(source):  # a sharded folder is read shard by shard, later
        folder = open_folder(as_path(source, "source"))
        return folder if folder.sharded else read_all(folder)
    if isinstance(source, (str, os.PathLike)):
        return load_checkpoint(source)
    if isinstance(source, StateDict):
        return source
    if isinstance(source, dict):
        return as_state_dict(dict(source))
    try:
        adapter = adapter_for(source)
    except XFreezeError:
        raise XFreezeError(
            f"source must be a checkpoint path, a state dict or a model; received {type(source).__name__}"
        ) from None
    return StateDict(adapter.state_tensors(source), framework=adapter.name)


def _own_only(framework: str, targets) -> set:
    leaves = naming(framework).own_only_leaves
    return {k for k in targets if k.rpartition(".")[2] in leaves}


def _renamed_keys(keys: list, targets: set, rename, report: LoadReport) -> dict:
    """Source key -> model key (or None), after wrapper prefixes and ``rename``; errors on conflicts."""
    out = {}
    rules = _prefix_rules(rename) if isinstance(rename, dict) else None
    prefixes = [p for fw in ADAPTERS for p in naming(fw).wrapper_prefixes if not any(t.startswith(p) for t in targets)]
    for key in keys:
        new = key
        for prefix in prefixes:
            if new.startswith(prefix):
                new = new[len(prefix) :]
        if rules is not None:
            match = next(((old, rep) for old, rep in rules if new.startswith(old)), None)
            new = match[1] + new[len(match[0]) :] if match else new
        elif callable(rename):
            new = rename(new)
            if new is not None and not isinstance(new, str):
                raise XFreezeError(f"rename({key!r}) returned {new!r}: return a string, or None to drop the key")
        out[key] = new
        if new != key:
            report.renamed[key] = new
    clashes: dict = {}
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
                raise XFreezeError(
                    f"conflicting rename rules: {a!r} and {b!r} both match keys starting with {b!r}; keep one of them"
                )
    return sorted(rename.items(), key=lambda item: -len(item[0]))


def _skipped(view, keys: list, skip) -> set:
    if not skip:
        return set()
    patterns = _select.compile_patterns(skip, argument="skip")
    owners = np.asarray([view.module_index.get(k.rpartition(".")[0], 0) for k in keys], dtype=np.int64)
    mask = _select.select_mask(view, patterns, names=keys, owners=owners, allow_stat_only=False)
    return {k for k, hit in zip(keys, mask) if hit}


def _plan(view, targets: dict, state: StateDict, skipped: set, ignored: set, report: LoadReport, adaptations) -> dict:
    """Model key -> a value ready to copy (this framework's tensor, the target's dtype and device); shape
    mismatches are adapted where ``adaptations`` (None: never) knows the case."""
    adapter, plan = view.adapter, {}
    for key, tensor in targets.items():
        if key in ignored and key not in state:
            continue
        if key in skipped:
            report.skipped.append(key)
        elif key not in state:
            report.missing.append(key)
        else:
            value = state[key]
            if (
                isinstance(value, np.ndarray)
                and value.dtype == np.uint16
                and adapter.tensor_dtype(tensor) == "bfloat16"
            ):
                value = adapter.from_raw(_tensors.Raw(value, "bfloat16"))  # Paddle writes bf16 as its uint16 bits
                report.notes.append((key, "uint16 array read as bfloat16 bits (Paddle stores bf16 so)"))
            value = _tensors.to_backend(value, adapter.name, key)
            shape, got = tuple(adapter.full_shape(tensor)), _tensors.shape_of(value)
            adapted = adaptations.adapt(key, value, shape) if got != shape and adaptations is not None else None
            if adapted is not None:
                value = adapted[0]
                report.adapted[key] = (shape, got, adapted[1])
            elif got != shape:
                report.mismatched[key] = (shape, got)
                continue
            else:
                report.loaded.append(key)
            plan[key] = _cast(adapter, key, value, tensor, report)
    report.unexpected = [k for k in state if k not in targets]
    return plan


def _cast(adapter, key, value, tensor, report: LoadReport):
    have, want = adapter.tensor_dtype(value), adapter.tensor_dtype(tensor)
    if have != want:
        report.cast[key] = (have, want)
        value = adapter.cast(value, want)
    return adapter.as_native(value, tensor)


def _sample(items: list, n: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... (+{len(items) - n})" if len(items) > n else "")

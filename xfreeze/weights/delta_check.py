"""Checking a delta against the model it is loaded on, entirely before anything is written.

:func:`place` turns a delta file (its tensors and its checked :class:`~xfreeze.weights.delta_file.DeltaPlan`) into a
:class:`Placement`: the values to copy, already in the model's framework, dtype and device, and the trainability and
norm locks to apply. Everything that can refuse the load does so here: names the model lacks, a plan that trains a
buffer, tensors the plan freezes or locks, casts that change values, trainable tensors the file lacks, a fingerprint
that does not cover every frozen tensor, and a base whose frozen tensors differ from it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from .convert import convert
from .statedict import StateDict
from ..core import hashing as _hashing
from ..core import tensors as _tensors
from ..core.errors import XFreezeError
from ..core.tensors import FLOAT_DTYPES
from ..model.buffers import frozen_buffers
from ..model.guard import guard_trainability_change
from ..model.view import view_of

SHOWN = 5  # names shown in an error
# exact casts only: every value of the file's dtype is a value of the model's (nothing rounds, wraps or is dropped)
WIDENS = {
    "float8_e4m3fn": ("float16", "bfloat16", "float32", "float64"),
    "float8_e5m2": ("float16", "bfloat16", "float32", "float64"),
    "float16": ("float32", "float64"),
    "bfloat16": ("float32", "float64"),
    "float32": ("float64",),
    "int8": ("int16", "int32", "int64"),
    "uint8": ("int16", "int32", "int64"),
    "int16": ("int32", "int64"),
    "int32": ("int64",),
    "complex64": ("complex128",),
}
_UNCHANGED = "Nothing was changed"
# metadata key: the fingerprint hashes the buffers of frozen modules (files written before it carry them as values)
BUFFERS_KEY = "frozen_buffers"
BUFFERS_HASHED = "hashed"


@dataclass
class FrozenCheck:
    """What :func:`xfreeze.verify_frozen` found.

    Attributes:
        checked: fingerprinted tensors compared.
        drifted: tensors whose bits differ from their hash.
        missing: fingerprinted tensors the model lacks.
        uncovered: tensors the delta's plan leaves frozen that its fingerprint has no hash for (a delta file only).
    """

    checked: int = 0
    drifted: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    uncovered: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every fingerprinted tensor is unchanged and every frozen tensor of the plan is fingerprinted."""
        return not self.drifted and not self.missing and not self.uncovered

    def __str__(self) -> str:
        if self.ok:
            return f"frozen tensors: {self.checked} checked, none drifted"
        text = (
            f"frozen tensors: {self.checked} checked; drifted {len(self.drifted)}: {self.drifted[:SHOWN]}; "
            f"missing {len(self.missing)}: {self.missing[:SHOWN]}"
        )
        if self.uncovered:
            text += f"; not fingerprinted {len(self.uncovered)}: {self.uncovered[:SHOWN]}"
        return text


@dataclass
class Placement:
    """A delta checked against a model: what :func:`xfreeze.load_delta` writes, nothing applied yet."""

    values: dict  # model key -> value in the model's framework, dtype and device
    trainable: list  # model parameter names that train; every other parameter is frozen
    locked: list  # paths of the norm layers whose statistics are locked
    cast: dict  # model key -> (file dtype, model dtype), exact widenings only
    missing: list  # trainable parameters the file lacks (allow_missing=True)
    verified: int  # frozen tensors whose hash matched
    rows: dict = field(default_factory=dict)  # split tensors: model parameter name -> (rows, value of the rows)


def place(adapter, model, delta: StateDict, plan, path, allow_missing: bool, rows=None) -> Placement:
    """Check the delta ``delta`` (with its plan) against ``model``; raise before anything changes. ``rows``
    (``delta_rows.RowsLoad``) takes the split tensors of a file whose plan has ``slices`` (issue 21)."""
    where = f"delta {str(path)!r}"
    view = view_of(model, adapter.name)
    state = adapter.state_tensors(model)
    theirs, names = in_delta_names(adapter, model, plan.framework)
    groups = _Groups(view, state)
    trainable = list(dict.fromkeys(_trainable_param(groups, view, names, n, where) for n in plan.trainable))
    locked = sorted({_locked_norm(groups, view, names, n, where) for n in plan.locked_norms})
    hashed = buffers_hashed(delta.metadata)
    frozen = groups.frozen(set(trainable), set(locked), buffers=hashed)
    if not hashed:
        _note_unhashed_buffers(groups, set(trainable), where)
    whole = {k: v for k, v in plan.fingerprint.items() if k not in plan.slices}  # split tensors: see rows
    _check_coverage(groups, frozen, names, whole, where)
    incoming = delta if plan.framework == adapter.name else convert(delta, to=adapter.name, model=model)
    placed = rows.take(incoming, names) if rows is not None else {}
    values, cast = _values(adapter, groups, frozen, incoming, where)
    missing = _missing(groups, trainable, {**values, **{names[n]: None for n in plan.slices}}, where, allow_missing)
    check = compare(whole, theirs)
    if rows is not None:
        check = rows.compare(check, theirs)
    if not check.ok:
        buffer_keys = set(groups.buffer_keys(set(trainable)))
        moved = [n for n in check.drifted if names.get(n) in buffer_keys]
        hint = (
            f"; among them {len(moved)} buffers of frozen modules ({moved[:SHOWN]}), which move when a frozen module "
            "writes them in forward: the delta was saved after they drifted in training. HINT: lock them before "
            "training (xfreeze.lock_buffers(model)); xfreeze.audit names such buffers"
            if moved
            else ""
        )
        raise XFreezeError(
            f"{where} does not fit this base: {check}; the delta was saved on another base (or the base's frozen "
            f"tensors changed){hint}. {_UNCHANGED}"
        )
    live = dict(zip(view.names, view.trainable()))
    train = set(trainable)
    to_train = [n for n in view.names if n in train and not live[n]]
    guard_trainability_change(view, to_train, [n for n in view.names if n not in train and live[n]])
    return Placement(values, trainable, locked, cast, missing, check.checked, placed)


class _Groups:
    """The model's state keys grouped by tensor (tied parameters share one group), each group's kind and owner."""

    def __init__(self, view, state: dict):
        self.state, self.view = state, view
        self.group: dict = {}  # key -> first key of the same tensor
        first: dict = {}
        for key, tensor in state.items():
            self.group[key] = first.setdefault(id(tensor), key)
        self.param = {id(p): name for name, p in zip(view.names, view.params)}  # tensor -> parameter name
        self.stat_owner = {key: view.paths[mi] for key, mi in zip(view.stat_keys, view.stat_owner)}

    def param_name(self, key: str) -> str | None:
        return self.param.get(id(self.state[key])) if key in self.state else None

    def frozen(self, trainable: set, locked: set, buffers: bool = True) -> set:
        """First keys of the groups the plan freezes (parameters that do not train), locks (their statistics) and,
        with ``buffers``, of the buffers of the modules it freezes (:mod:`xfreeze.model.buffers`)."""
        out = set()
        for key, first in self.group.items():
            name = self.param_name(key)
            if (name is not None and name not in trainable) or self.stat_owner.get(key) in locked:
                out.add(first)
        if buffers:
            out |= {self.group[k] for k in self.buffer_keys(trainable)}
        return out

    def buffer_keys(self, trainable: set) -> list:
        """State keys of the buffers (norm statistics aside) of the modules frozen when ``trainable`` train."""
        live = [name in trainable for name in self.view.names]
        return [name for name, _, _ in frozen_buffers(self.view, live, statistics=False) if name in self.state]


def _trainable_param(groups: _Groups, view, names: dict, name: str, where: str) -> str:
    key = _model_key(names, name, where)
    param = groups.param_name(key)
    if param is None:
        what = "a norm statistic" if key in groups.stat_owner else "a buffer"
        raise XFreezeError(
            f"{where} plans to train {name!r}, which is {what} of this model, not a parameter: only parameters train. "
            f"The file is damaged or edited. {_UNCHANGED}"
        )
    dtype = view.dtypes[view.index[param]]
    if dtype not in FLOAT_DTYPES:
        raise XFreezeError(
            f"{where} plans to train {name!r}, a {dtype} parameter of this model: only floating-point parameters "
            f"train. {_UNCHANGED}"
        )
    return param


def _locked_norm(groups: _Groups, view, names: dict, name: str, where: str) -> str:
    key = _model_key(names, name, where)
    if key not in groups.stat_owner:
        raise XFreezeError(
            f"{where} plans to lock the norm layer of {name!r}, which is not a norm statistic of this model "
            f"(its norm layers: {sorted(view.paths[mi] for mi in view.stat_modules)[:SHOWN]}). {_UNCHANGED}"
        )
    return groups.stat_owner[key]


def _model_key(names: dict, name: str, where: str) -> str:
    if name not in names:
        raise XFreezeError(
            f"{where} names {name!r}, which this model lacks; it belongs to another architecture. {_UNCHANGED}"
        )
    return names[name]


def _check_coverage(groups: _Groups, frozen: set, names: dict, fingerprint: dict, where: str) -> None:
    """Every tensor the plan freezes or locks has a hash; no hash is for a tensor the plan trains or keeps live."""
    key_of = {}  # fingerprint name -> first key of its group
    for name in fingerprint:
        key = names.get(name)
        if key is not None and key in groups.group:
            key_of[name] = groups.group[key]
    covered = set(key_of.values())
    delta_name = {key: name for name, key in names.items()}
    lacking = [delta_name.get(k, k) for k in groups.state if k in frozen and k not in covered]
    if lacking:
        raise XFreezeError(
            f"{where}: its fingerprint covers {len(frozen) - len(lacking)} of the {len(frozen)} tensors its plan "
            f"leaves frozen on this base; {len(lacking)} have no hash: {lacking[:SHOWN]}. A delta vouches for its "
            "base only through a hash of every frozen tensor: the file was emptied, edited or damaged. "
            f"{_UNCHANGED}"
        )
    live = [name for name, key in key_of.items() if key not in frozen]
    if live:
        raise XFreezeError(
            f"{where}: its fingerprint hashes {len(live)} tensors its plan does not freeze: {live[:SHOWN]}; the plan "
            f"and the fingerprint disagree (an edited or damaged file). {_UNCHANGED}"
        )


def _values(adapter, groups: _Groups, frozen: set, incoming: StateDict, where: str) -> tuple[dict, dict]:
    """Model key -> the file's value ready to copy, and the exact casts made; every refusal names its tensors."""
    problems: dict = {"place": [], "frozen": [], "cast": [], "twice": []}
    values: dict = {}
    cast: dict = {}
    seen: dict = {}
    for key, value in incoming.items():
        target = groups.state.get(key)
        if target is None:
            problems["place"].append(f"{key} (no such tensor)")
            continue
        first = groups.group[key]
        if first in frozen:
            problems["frozen"].append(key)
            continue
        if first in seen:
            problems["twice"].append(f"{seen[first]} and {key}")
            continue
        seen[first] = key
        value = _tensors.to_backend(value, adapter.name, key)
        shape, want_shape = tuple(_tensors.shape_of(value)), tuple(adapter.full_shape(target))
        have, want = adapter.tensor_dtype(value), adapter.tensor_dtype(target)
        if shape != want_shape:
            problems["place"].append(f"{key} (shape {list(shape)}, the model's {list(want_shape)})")
        elif have != want and want not in WIDENS.get(have, ()):
            problems["cast"].append(f"{key} {have} -> {want}")
        else:
            if have != want:
                cast[key] = (have, want)
                value = adapter.cast(value, want)
            values[key] = adapter.as_native(value, target)
    _refuse(problems, where)
    return values, cast


def _refuse(problems: dict, where: str) -> None:
    if problems["place"]:
        raise XFreezeError(
            f"{where} holds tensors this model has no place for (name or shape): {problems['place'][:SHOWN]}. "
            f"{_UNCHANGED}"
        )
    if problems["frozen"]:
        names = problems["frozen"]
        raise XFreezeError(
            f"{where} carries {len(names)} tensors that its own plan freezes or locks: {names[:SHOWN]}; loading them "
            "would change what the delta says is frozen. xfreeze.save_delta never writes them: the file was "
            f"edited or damaged. {_UNCHANGED}"
        )
    if problems["cast"]:
        raise XFreezeError(
            f"{where} holds {len(problems['cast'])} tensors whose dtype would change their values in this model: "
            f"{problems['cast'][:SHOWN]}; only exact widenings (float16 -> float32, int32 -> int64, ...) are made. "
            f"Cast the model to the delta's dtypes first, or save the delta from a model in these dtypes. {_UNCHANGED}"
        )
    if problems["twice"]:
        raise XFreezeError(
            f"{where} holds two values for one tensor of this model (tied names): {problems['twice'][:SHOWN]}. "
            f"{_UNCHANGED}"
        )


def _missing(groups: _Groups, trainable: list, values: dict, where: str, allow_missing: bool) -> list:
    filled = {groups.group[k] for k in values}
    missing = [n for n in trainable if groups.group[n] not in filled]
    if missing and not allow_missing:
        raise XFreezeError(
            f"{where} lacks {len(missing)} of the {len(trainable)} tensors its plan trains: {missing[:SHOWN]}; they "
            "would keep this base's values. Pass allow_missing=True to load it anyway (they are listed in the "
            f"report's missing). {_UNCHANGED}"
        )
    return missing


def in_delta_names(adapter, model, framework: str) -> tuple[StateDict, dict]:
    """The model's state in ``framework``'s names and layouts, and ``{delta name: model key}``."""
    state = adapter.state_tensors(model)
    mine = StateDict(state, framework=adapter.name)
    if framework == adapter.name:
        return mine, {k: k for k in state}
    out = convert(mine, to=framework)
    dropped = {k for k, note in out.notes if note.startswith("dropped")}
    kept = [k for k in state if k not in dropped]
    if len(kept) != len(out):
        raise XFreezeError(f"cannot match {len(kept)} model keys to {len(out)} converted names; convert by hand")
    return out, dict(zip(out, kept))


def compare(fingerprint: dict, state) -> FrozenCheck:
    """Hash the tensors of ``state`` (in the fingerprint's names and layouts) that ``fingerprint`` names."""
    check = FrozenCheck(checked=len(fingerprint))
    check.missing = [name for name in fingerprint if name not in state]
    now = hashes(state, [name for name in fingerprint if name in state])
    check.drifted = [name for name, digest in now.items() if digest != fingerprint[name]]
    return check


def uncovered(adapter, model, plan, names: dict, buffers: bool = True) -> list:
    """Tensors the plan leaves frozen on ``model`` (in the delta's names) that its fingerprint does not hash
    (``buffers``: the file's fingerprint covers the buffers of frozen modules, see :func:`buffers_hashed`)."""
    view = view_of(model, adapter.name)
    groups = _Groups(view, adapter.state_tensors(model))
    trainable = {groups.param_name(names[n]) for n in plan.trainable if n in names}
    locked = {groups.stat_owner.get(names[n]) for n in plan.locked_norms if n in names}
    frozen = groups.frozen(trainable - {None}, locked - {None}, buffers=buffers)
    covered = {groups.group[names[n]] for n in plan.fingerprint if names.get(n) in groups.group}
    delta_name = {key: name for name, key in names.items()}
    return [delta_name.get(k, k) for k in groups.state if k in frozen and k not in covered]


def parts(adapter, model) -> dict:
    """State keys split into trainable, frozen (frozen parameters + locked statistics) and delta (what is saved);
    a second name of a tied tensor is in none of them (its first name stands for it)."""
    state = adapter.state_tensors(model)
    key_of: dict = {}
    for key, tensor in state.items():
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
    for name, _, _ in frozen_buffers(view, live, statistics=False):  # any buffer of a frozen module is frozen
        key = key_of.get(id(state[name])) if name in state else None
        if key is not None and key not in taken:
            frozen.append(key)
            taken.add(key)
    rest = [k for k, t in state.items() if k not in taken and key_of[id(t)] == k]  # live buffers, once each
    return {"trainable": trainable, "frozen": frozen, "locked": locked, "delta": trainable + rest}


def buffers_hashed(metadata: dict) -> bool:
    """Whether a delta file's fingerprint covers the buffers of frozen modules (written so since the metadata key
    ``frozen_buffers``); an older file carries them as values, loaded unverified (with a warning)."""
    return (metadata or {}).get(BUFFERS_KEY) == BUFFERS_HASHED


def _note_unhashed_buffers(groups: _Groups, trainable: set, where: str) -> None:
    keys = groups.buffer_keys(trainable)
    if keys:
        warnings.warn(
            f"{where} was written before xfreeze fingerprinted the buffers of frozen modules: {len(keys)} of them "
            f"({keys[:SHOWN]}) are loaded from the file as it carries them, not checked against a hash.\nHINT: "
            "save the delta again (xfreeze.save_delta) to have them fingerprinted",
            UserWarning,
            stacklevel=4,
        )


def hashes(state, keys: list) -> dict:
    """``{key: sha256}`` in ``keys`` order (:func:`xfreeze.core.hashing.digests`): the cost of a delta save is this
    hashing."""
    return dict(zip(keys, _hashing.digests([_tensors.to_raw(state[k], k) for k in keys])))

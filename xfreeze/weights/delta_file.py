"""Reading a delta file: its tensors, and its metadata checked field by field before anything is parsed deeper.

The metadata is text another program may have written, so each JSON field is bounded (nesting depth, measured on
the raw text before ``json.loads`` sees it) and typed (a list of names, a ``{name: sha256}`` map) here; the rest of
the delta code reads only a :class:`DeltaPlan`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from ..backends import FRAMEWORKS
from ..core.errors import XFreezeError
from .files import StateDict, load_checkpoint
from ..model.slices import parse_rows

VERSION = "1"
VERSION_ROWS = "2"  # a delta with split tensors (issue 21): its "slices" field says which rows it carries
MAX_DEPTH = 4  # the plan's fields nest one level (a list or a map of strings); deeper text is refused unparsed
_SHA256 = re.compile(r"[0-9a-f]{64}")
_OPEN, _CLOSE, _QUOTE, _BACKSLASH = (np.frombuffer(c, dtype=np.uint8) for c in (b"[{", b"]}", b'"', b"\\"))


@dataclass
class DeltaPlan:
    """A delta file's freeze plan, checked: the names are in the delta's framework (``framework``)."""

    framework: str
    trainable: list
    locked_norms: list
    fingerprint: dict
    slices: dict = field(default_factory=dict)  # name -> (rows, axis in the delta's layout): split tensors


def read_delta(path) -> tuple[StateDict, DeltaPlan]:
    """The tensors and the checked plan of the delta file ``path``; an :class:`XFreezeError` naming the file and
    the field for anything that is not what :func:`xfreeze.save_delta` writes."""
    if not isinstance(path, (str, os.PathLike)):
        raise XFreezeError(
            f"path must be a delta file path (str or os.PathLike). Received: path={path!r} ({type(path).__name__})"
        )
    delta = load_checkpoint(path)
    meta, where = delta.metadata, f"delta {str(path)!r}"
    if delta.format != "safetensors" or meta.get("xfreeze_delta") is None:
        raise XFreezeError(
            f"{str(path)!r} is not an xfreeze delta (no xfreeze_delta metadata); write one with "
            "xfreeze.save_delta(model, path)"
        )
    if meta["xfreeze_delta"] not in (VERSION, VERSION_ROWS):
        raise XFreezeError(
            f"{where} has format version {meta['xfreeze_delta']!r}; this xfreeze reads versions {VERSION!r} and "
            f"{VERSION_ROWS!r}"
        )
    plan = DeltaPlan(
        framework=_framework(delta, meta, where),
        trainable=_names(_field(meta, "trainable", where), "trainable", where),
        locked_norms=_names(_field(meta, "locked_norms", where), "locked_norms", where),
        fingerprint=check_fingerprint(_field(meta, "fingerprint", where), f"{where} metadata field 'fingerprint'"),
    )
    if meta["xfreeze_delta"] == VERSION_ROWS:
        plan.slices = _slices(_field(meta, "slices", where), plan, where)
    delta.framework = plan.framework
    return delta, plan


def _slices(value, plan: DeltaPlan, where: str) -> dict:
    """``{name: (rows, axis)}`` of the field ``slices``: each a trainable name with a hash of its frozen rows."""
    what = f"{where} metadata field 'slices'"
    if not isinstance(value, dict):
        raise XFreezeError(f"{what} must be a map {{tensor name: [rows, axis]}}; it holds a {_kind(value)}")
    out = {}
    for name, entry in value.items():
        ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and entry[1] in (0, 1)
        if not ok or name not in plan.trainable or name not in plan.fingerprint:
            raise XFreezeError(
                f"{what}: the entry for {name!r} ({entry!r}) is not [rows, axis] of a tensor the plan trains and the "
                "fingerprint hashes. Nothing was changed (a damaged or edited file: write it again with "
                "xfreeze.save_delta)"
            )
        out[name] = (parse_rows(entry[0]), int(entry[1]))
    return out


def check_fingerprint(value, what: str) -> dict:
    """``value`` if it is a ``{tensor name: sha256 hex}`` map, else an error saying what ``what`` holds instead."""
    if not isinstance(value, dict):
        raise XFreezeError(
            f"{what} must be a map {{tensor name: sha256 hex digest}}; it holds a {_kind(value)}. Nothing was "
            "changed (a damaged or edited file: write it again with xfreeze.save_delta)"
        )
    bad = [k for k, v in value.items() if not k or not isinstance(v, str) or not _SHA256.fullmatch(v)]
    if bad:
        raise XFreezeError(
            f"{what}: the entries for {bad[:5]} are not sha256 hex digests (e.g. {value[bad[0]]!r}). Nothing was "
            "changed (a damaged or edited file: write it again with xfreeze.save_delta)"
        )
    return value


def _framework(delta: StateDict, meta: dict, where: str) -> str:
    said = meta.get("framework")
    if isinstance(said, str) and said in FRAMEWORKS:
        return said
    guessed = delta.framework
    if not said and guessed is not None and guessed in FRAMEWORKS:  # an older writer left it empty: names tell
        return guessed
    raise XFreezeError(
        f"{where} metadata field 'framework' is {said!r}: expected one of {tuple(FRAMEWORKS)} (whose tensor names "
        "the delta uses)"
    )


def _field(meta: dict, name: str, where: str):
    what = f"{where} metadata field {name!r}"
    text = meta.get(name)
    if not isinstance(text, str):
        raise XFreezeError(f"{what} is missing: the file is damaged or was not written by xfreeze.save_delta")
    depth = nesting_depth(text)
    if depth > MAX_DEPTH:
        raise XFreezeError(
            f"{what} nests {depth:,} levels deep (a delta's plan nests at most 1): refused unparsed; the file is "
            "damaged or hostile. Nothing was changed"
        )
    try:
        return json.loads(text)
    except ValueError as exc:
        raise XFreezeError(f"{what} is not valid JSON ({exc}). Nothing was changed") from None


def _names(value, name: str, where: str) -> list:
    what = f"{where} metadata field {name!r}"
    if not isinstance(value, list):
        raise XFreezeError(
            f"{what} must be a JSON list of tensor names; it holds a {_kind(value)}. Nothing was changed"
        )
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        raise XFreezeError(
            f"{what} must list tensor names (non-empty strings); it holds {bad[0]!r} ({_kind(bad[0])}). Nothing was "
            "changed"
        )
    if len(set(value)) != len(value):
        twice = sorted({v for v in value if value.count(v) > 1})
        raise XFreezeError(f"{what} names {twice[:5]} more than once. Nothing was changed")
    return value


def nesting_depth(text: str) -> int:
    """The deepest ``[``/``{`` nesting of JSON ``text``, outside strings; linear time, no recursion."""
    data = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    if not data.size:
        return 0
    slash = data == _BACKSLASH[0]
    index = np.arange(data.size)
    last_plain = np.maximum.accumulate(np.where(slash, -1, index))  # latest position that is not a backslash
    run_before = np.concatenate(([0], index[:-1] - last_plain[:-1]))  # backslashes right before each position
    quote = (data == _QUOTE[0]) & (run_before % 2 == 0)  # an escaped quote does not open or close a string
    outside = np.cumsum(quote) % 2 == 0  # inside a string: after an odd number of quotes
    step = np.isin(data, _OPEN).astype(np.int64) - np.isin(data, _CLOSE)
    return int(np.cumsum(np.where(outside & ~quote, step, 0)).max(initial=0))


def _kind(value) -> str:
    return {dict: "JSON object", list: "JSON list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), f"JSON {type(value).__name__}"
    )

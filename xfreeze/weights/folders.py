"""Checkpoint folders: what transformers' and PaddleFormers' / PaddleNLP's ``save_pretrained`` write.

A folder holds one weights file or an index (``*.index.json``: ``{"weight_map": {tensor: shard file}}``) naming its
shards, in one of the layouts of :data:`WEIGHT_FILES` (the first found wins, as in transformers: safetensors, then
``pytorch_model.bin``, then ``model_state.pdparams``; a single file before an index). Each shard is read through the
format registry like any checkpoint file.

Before any tensor is read, :func:`open_folder` checks the whole folder: the index parses and maps names to shard
files; every shard stays inside the folder (no ``..``, absolute path or symlink out), exists and is not empty; each
shard's structure is detected (a safetensors header is checked to tile its file exactly, so a truncated shard is
found here, without reading data) and every name the index lists is in the header of its shard, none twice, none
unlisted. Pickle-based shards (``.bin``, ``.pdparams``) have no header: their names are checked when read.

Whose naming and layouts a folder holds is told by its files: the weights format (``.bin``: torch, ``.pdparams``:
Paddle), a safetensors header's ``format`` (``pt``: torch layout, written by transformers; ``np`` / ``pd``: Paddle
layout, PaddleNLP), then ``config.json`` (``"source": "paddle"`` or ``paddlenlp_version``: Paddle layout;
``paddleformers_version``: PaddleFormers 1.x saves transformers' layout by default, without header metadata;
``transformers_version``: torch), then the key names.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..backends import ADAPTERS
from ..core.errors import XFreezeError
from . import formats, safetensors
from .paths import errno_name, shown
from .reading import FORMAT_FRAMEWORKS, read_file
from .statedict import StateDict, describe, guess_framework


@dataclass(frozen=True)
class WeightFiles:
    single: str  # one file holding every tensor
    index: str  # the index of a sharded checkpoint
    framework: str | None  # whose layout the format implies (None: the safetensors header's "format" says)


WEIGHT_FILES = (
    WeightFiles("model.safetensors", "model.safetensors.index.json", None),
    WeightFiles("pytorch_model.bin", "pytorch_model.bin.index.json", "torch"),
    WeightFiles("model_state.pdparams", "model_state.pdparams.index.json", "paddle"),
)
# config.json -> whose layout a safetensors folder without a "format" in its headers holds, first match wins:
# PaddleFormers marks its Paddle-layout saves "source": "paddle"; its default save (save_to_hf, flex checkpoint) is
# transformers' layout without header metadata; PaddleNLP saves Paddle layout
CONFIG_FRAMEWORKS = (
    ("source", "paddle", "paddle"),
    ("paddlenlp_version", None, "paddle"),
    ("paddleformers_version", None, "torch"),
    ("transformers_version", None, "torch"),
)
CONFIG = "config.json"
_SHARD = re.compile(r".+-\d{5}-of-\d{5}\.\w+")  # transformers' and PaddleFormers' shard file names
MAX_INDEX = 64 * 2**20  # an index of 64 MiB names millions of tensors; larger is refused unread


@dataclass
class Folder:
    """A checked checkpoint folder. ``shards`` in index order (one for a single file); ``weight_map``: tensor name ->
    shard (empty for a single file); ``headers``: shard -> ``{name: (dtype, shape)}`` for safetensors shards."""

    path: Path
    entry: str  # the weights file or index the folder is read through
    shards: tuple
    weight_map: dict
    framework: str | None
    config: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def what(self, shard: Path | None = None) -> str:
        """How messages name the folder, or one of its shards."""
        if shard is None:
            return f"checkpoint folder {str(self.path)!r}"
        return f"shard {shard.name!r} of checkpoint folder {str(self.path)!r} (listed in {self.entry})"

    @property
    def sharded(self) -> bool:
        return len(self.shards) > 1


def is_folder(path) -> bool:
    """Whether ``path`` names an existing directory (a checkpoint folder to :func:`open_folder`)."""
    try:
        return isinstance(path, (str, os.PathLike)) and Path(path).is_dir()
    except (OSError, ValueError):
        return False


def open_folder(path: Path, framework: str | None = None) -> Folder:
    """The folder at ``path`` with its index, shards and headers checked (see the module docstring); an
    :class:`XFreezeError` naming the file at fault otherwise. Reads no tensor data."""
    what = f"checkpoint folder {str(path)!r}"
    names = _listing(path, what)
    found = _weight_files(path, names, what)
    if found is None:
        raise XFreezeError(_nothing_known(path, names, what))
    files, entry = found
    notes = [("", f"read through {entry}")]
    others = [w.single for w in WEIGHT_FILES if w is not files and (w.single in names or w.index in names)]
    if others:
        notes.append(("", f"also holds {', '.join(others)}; {entry} is read (as transformers does)"))
    config = _config(path, names, notes)
    if entry == files.index:
        weight_map = _index(path / entry, what)
        shards = _shards(path, entry, weight_map)
    else:
        weight_map, shards = {}, {entry: path / entry}
    folder = Folder(path, entry, tuple(shards.values()), {}, None, config, notes=notes)
    folder.weight_map = {name: shards[file] for name, file in weight_map.items()}
    for shard in folder.shards:
        folder.headers.update(_header(folder, shard))
    _check_headers(folder)
    folder.framework = framework or _framework(folder, files)
    return folder


def read_shard(folder: Folder, shard: Path) -> StateDict:
    """One shard's tensors, checked against the index: every name the index gives this shard present, none that
    the index gives another shard or does not list."""
    state = read_file(shard, folder.framework, what=folder.what(shard))
    if folder.weight_map:
        listed = {name for name, file in folder.weight_map.items() if file == shard}
        _check_names(folder, shard, listed, set(state))
    return state


def read_folder(path: Path, framework: str | None = None) -> StateDict:
    """Every tensor of the checkpoint folder at ``path``, merged (shard after shard), as one :class:`StateDict`."""
    return read_all(open_folder(path, framework))


def read_all(folder: Folder) -> StateDict:
    """Every tensor of a checked folder, merged shard after shard."""
    out = StateDict(framework=folder.framework, notes=list(folder.notes))
    out.config, out.config_from = dict(folder.config), folder.what()  # convert() reads fused layers' heads there
    owner: dict = {}
    for shard in folder.shards:
        state = read_shard(folder, shard)
        twice = next((k for k in state if k in owner), None)
        if twice is not None:
            raise XFreezeError(
                f"{folder.what(shard)} holds tensor {twice!r}, which shard {owner[twice].name!r} holds too; "
                "a checkpoint names each tensor once. Re-save the folder"
            )
        owner.update(dict.fromkeys(state, shard))
        out.update(state)
        out.format = out.format or state.format
        out.metadata = out.metadata or state.metadata
        out.notes += [note for note in state.notes if note not in out.notes]
    return out


def describe_folder(folder: Folder) -> dict:
    """What ``xfreeze inspect`` shows of a folder (:func:`~xfreeze.weights.statedict.describe`'s keys, plus
    ``shards`` and ``entry``): from the safetensors headers when every shard has one (no tensor data read),
    else from the tensors."""
    if len(folder.headers) == len(folder.shards):
        rows = [(name, entry) for entries, _ in folder.headers.values() for name, entry in entries.items()]
        info = {
            "framework": folder.framework,
            "format": "safetensors",
            "keys": len(rows),
            "bytes": sum(nbytes for _, (_, _, nbytes) in rows),
            "tensors": [(name, shape, dtype) for name, (dtype, shape, _) in rows],
            "notes": list(folder.notes),
        }
    else:
        info = describe(read_all(folder))
    return {**info, "shards": len(folder.shards), "entry": folder.entry}


# --- finding the weights ------------------------------------------------------------------------------------
def _listing(path: Path, what: str) -> set:
    try:
        return set(os.listdir(path))
    except OSError as exc:
        raise XFreezeError(f"cannot read {what}: {exc.strerror or exc} ({errno_name(exc)})") from None


def _weight_files(path: Path, names: set, what: str):
    """(the layout, the file to read it through), the first of :data:`WEIGHT_FILES` the folder holds."""
    for files in WEIGHT_FILES:
        for entry in (files.single, files.index):
            if entry in names:
                if (path / entry).is_dir():
                    raise XFreezeError(f"{what}: {entry} is a directory, not a file")
                return files, entry
    return None


def _nothing_known(path: Path, names: set, what: str) -> str:
    known = [f for files in WEIGHT_FILES for f in (files.single, files.index)]
    files = sorted(n for n in names if not n.startswith("."))
    loose = [n for n in files if formats.SUFFIXES.get(Path(n).suffix.lower()) and (path / n).is_file()]
    held = f"it holds {', '.join(files[:6])}{' ...' if len(files) > 6 else ''}" if files else "it is empty"
    hint = f"; to read a single file, pass it: {shown(path / loose[0])}" if loose else ""
    index = next(
        (
            f.index
            for f in WEIGHT_FILES
            for n in files
            if _SHARD.fullmatch(n) and n.startswith(f.single.split(".")[0] + "-")
        ),
        None,
    )
    if index is not None:
        hint = f"; it holds shards but not their index {index}: an interrupted download? Fetch the index"
    return (
        f"checkpoint {str(path)!r} is a directory with no checkpoint xfreeze knows (expected one of "
        f"{', '.join(known)}); {held}{hint}"
    )


def _config(path: Path, names: set, notes: list) -> dict:
    if CONFIG not in names:
        return {}
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        notes.append(("", f"{CONFIG} ignored: unreadable ({type(exc).__name__})"))
        return {}
    if not isinstance(config, dict):
        notes.append(("", f"{CONFIG} ignored: not a JSON object"))
        return {}
    return config


# --- the index ----------------------------------------------------------------------------------------------
def _index(path: Path, what: str) -> dict:
    """The index's ``weight_map``, checked: a JSON object mapping tensor names to file names."""
    shown_index = f"index {str(path)!r} of {what}"
    try:
        size = path.stat().st_size
        if size > MAX_INDEX:
            raise XFreezeError(f"{shown_index} is {size:,} bytes, more than an index needs ({MAX_INDEX:,}); refused")
        index = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise XFreezeError(f"cannot read {shown_index}: {exc.strerror or exc} ({errno_name(exc)})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise XFreezeError(
            f"{shown_index} is not valid JSON ({type(exc).__name__}: {str(exc)[:120]}): a broken download or save? "
            "Restore it from the checkpoint's source"
        ) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise XFreezeError(
            f"{shown_index} has no weight_map (a non-empty {{tensor name: shard file}} object), so its shards are "
            "unknown. Restore the index from the checkpoint's source"
        )
    bad = next(((k, v) for k, v in weight_map.items() if not (isinstance(v, str) and v and k)), None)
    if bad is not None:
        raise XFreezeError(f"{shown_index}: weight_map entry {bad[0]!r} -> {bad[1]!r} does not name a shard file")
    return weight_map


def _shards(path: Path, entry: str, weight_map: dict) -> dict:
    """Shard file name -> path, in index order; every shard a file inside the folder."""
    root = os.path.realpath(path)
    shards: dict = {}
    for name in weight_map.values():
        if name in shards:
            continue
        where = f"index {entry!r} of checkpoint folder {str(path)!r} names shard {name!r}"
        if os.path.isabs(name) or ".." in Path(name).parts or "\x00" in name:
            raise XFreezeError(f"{where}, a path outside the folder; refused (shards are files of the folder itself)")
        real = os.path.realpath(path / name)
        if os.path.commonpath([root, real]) != root:
            raise XFreezeError(f"{where}, which leads outside the folder (to {shown(real)}); refused")
        try:
            info = os.stat(real)
        except FileNotFoundError:
            count = sum(1 for v in weight_map.values() if v == name)
            raise XFreezeError(
                f"{where} (holding {count} tensors), which is missing: an interrupted download or copy? "
                "Fetch the missing shard"
            ) from None
        except OSError as exc:
            raise XFreezeError(f"{where}, which cannot be read: {exc.strerror or exc} ({errno_name(exc)})") from None
        if not Path(real).is_file():
            raise XFreezeError(f"{where}, which is not a file")
        if info.st_size == 0:
            raise XFreezeError(f"{where}, which is empty (0 bytes): an interrupted download or save?")
        shards[name] = path / name
    return shards


# --- headers ------------------------------------------------------------------------------------------------
def _header(folder: Folder, shard: Path) -> dict:
    """``{shard: ({name: (dtype, shape, bytes)}, metadata)}`` for a safetensors shard (its structure checked to
    tile the file: a truncated shard is refused here); ``{}`` for formats without a header. Detects every shard's
    format."""
    what = folder.what(shard)
    try:
        fmt = formats.detect(shard, what)
    except OSError as exc:
        raise XFreezeError(f"cannot read {what}: {exc.strerror or exc} ({errno_name(exc)})") from None
    if fmt.name != "safetensors":
        return {}
    with open(shard, "rb") as f:
        header = safetensors.check(shard, f.read(16))[0]
    meta = header.get("__metadata__") or {}
    entries = {
        k: (safetensors.ST_DTYPES[v["dtype"]], tuple(v["shape"]), v["data_offsets"][1] - v["data_offsets"][0])
        for k, v in header.items()
        if k != "__metadata__"
    }
    return {shard: (entries, meta)}


def _check_headers(folder: Folder) -> None:
    """Every name of the index in its shard's header, none in two shards, none unlisted."""
    owner: dict = {}
    for shard, (entries, _) in folder.headers.items():
        for name in entries:
            if name in owner:
                raise XFreezeError(
                    f"{folder.what(shard)} holds tensor {name!r}, which shard {owner[name].name!r} holds too; "
                    "a checkpoint names each tensor once. Re-save the folder"
                )
            owner[name] = shard
        if folder.weight_map:
            listed = {name for name, file in folder.weight_map.items() if file == shard}
            _check_names(folder, shard, listed, set(entries))


def _check_names(folder: Folder, shard: Path, listed: set, held: set) -> None:
    lacking = sorted(listed - held)
    if lacking:
        raise XFreezeError(
            f"{folder.what(shard)} lacks {len(lacking)} tensors the index puts there (e.g. {lacking[0]!r}): the "
            "index and its shards disagree (shards of two saves?). Re-download or re-save the folder"
        )
    extra = sorted(held - listed)
    if extra:
        where = folder.weight_map.get(extra[0])
        elsewhere = f"the index puts it in {where.name!r}" if where is not None else "the index does not list it"
        raise XFreezeError(
            f"{folder.what(shard)} holds tensor {extra[0]!r} ({len(extra)} such), but {elsewhere}: the index and "
            "its shards disagree. Re-download or re-save the folder"
        )


def _framework(folder: Folder, files: WeightFiles) -> str | None:
    """Whose layout the folder's tensors follow, from its files (see the module docstring)."""
    if files.framework is not None:
        return files.framework
    said = {FORMAT_FRAMEWORKS.get(meta.get("format")) or meta.get("framework") for _, meta in folder.headers.values()}
    said &= set(ADAPTERS)
    if len(said) == 1:
        return said.pop()
    config = folder.config
    by_config = next((fw for key, v, fw in CONFIG_FRAMEWORKS if key in config and v in (None, config[key])), None)
    if by_config is not None:
        return by_config
    return guess_framework([name for entries, _ in folder.headers.values() for name in entries])

"""Converting a checkpoint folder to the other framework's folder, shard by shard (``xfreeze convert`` on a folder).

transformers -> Paddle writes what PaddleFormers (and PaddleNLP) read natively: ``model_state.pdparams`` (or
``model_state-0000k-of-0000n.pdparams`` shards with ``model_state.pdparams.index.json``), Paddle names and layouts,
and ``config.json`` marked ``"source": "paddle"``; PaddleFormers 1.2 loads it with
``from_pretrained(folder, load_checkpoint_format="", convert_from_hf=False)``. Paddle -> torch writes a transformers
folder: ``model.safetensors`` (or shards with ``model.safetensors.index.json``), header ``{"format": "pt"}``, which
``from_pretrained`` requires. Each input shard becomes one output shard: memory is one shard, never the model.

``config.json`` is copied with the keys that tell the writer mapped (:func:`map_config`); the other small files of a
``save_pretrained`` folder (generation config, tokenizer files) are copied as they are. The output folder is written
beside its final place and renamed into it when complete: a failed conversion leaves no half-written folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..core import tensors as _tensors
from ..core.errors import XFreezeError
from .convert import convert
from .files import _save
from .folders import CONFIG, WEIGHT_FILES, Folder, open_folder, read_shard
from .paths import errno_name, shown

TARGET_FILES = {"paddle": ("model_state", ".pdparams"), "torch": ("model", ".safetensors")}
SAFETENSORS_METADATA = {"torch": {"format": "pt"}, "paddle": {"format": "np"}}
# keys a framework's writer adds to config.json, dropped when the folder changes framework
WRITER_KEYS = {
    "torch": ("transformers_version",),
    "paddle": ("paddleformers_version", "paddlenlp_version", "source"),
}
# what marks a config.json as written for a framework's layout (PaddleFormers reads "source": "paddle" so)
CONFIG_MARKS = {"paddle": {"source": "paddle"}}
COPIED_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja")


def map_config(config: dict, to: str) -> dict:
    """``config.json`` for the other framework: the source writer's own keys dropped, the dtype under both names
    (transformers 5 reads ``dtype``, 4.x and PaddleFormers ``torch_dtype``), Paddle's marked ``"source": "paddle"``.

    Args:
        config: the source folder's ``config.json`` as a dict.
        to: the target framework.

    Returns:
        dict: the mapped configuration (a new dict).

    Example:
        >>> map_config({"model_type": "llama", "transformers_version": "5.3.0", "dtype": "float32"}, "paddle")
        {'model_type': 'llama', 'dtype': 'float32', 'torch_dtype': 'float32', 'source': 'paddle'}
    """
    dropped = {key for framework, keys in WRITER_KEYS.items() if framework != to for key in keys}
    out = {key: value for key, value in config.items() if key not in dropped}
    dtype = out.get("dtype") or out.get("torch_dtype")
    if isinstance(dtype, str):
        out["dtype"] = out["torch_dtype"] = dtype
    out.update(CONFIG_MARKS.get(to, {}))
    return out


def convert_folder(source, output, *, to: str, arch: str | None = None, model=None) -> dict:
    """Convert the checkpoint folder ``source`` into a new folder ``output`` for framework ``to``.

    Args:
        source: a checkpoint folder (see :func:`xfreeze.load_checkpoint`).
        output: the folder to create (absent, or an empty directory).
        to: the target framework.
        arch: a name map of :func:`xfreeze.convert_archs` (``"paddleformers"``, ``"llama"``: PaddleNLP).
        model: a target model deciding the layouts (optional).

    Returns:
        dict: ``{"files": [written files], "keys": tensors written, "notes": [(key, note)], "unplaced": [...]}``.

    Raises:
        XFreezeError: a bad source folder (named), ``output`` not empty or not writable, a source already of ``to``.
    """
    folder = open_folder(Path(source))
    output = Path(output)
    _check_output(output)
    if folder.framework == to:
        raise XFreezeError(f"{folder.what()} already holds {to} names and layouts; nothing to convert")
    staging = output.parent / f".{output.name}.xfreeze-{os.getpid()}-{os.urandom(4).hex()}.tmp"
    staging.mkdir()
    try:
        result = _write_shards(folder, staging, to, arch, model)
        _copy_extras(folder, staging, to)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result["files"] = [output / name for name in result["files"]]
    return result


def _check_output(output: Path) -> None:
    if output.exists() and not (output.is_dir() and not any(output.iterdir())):
        raise XFreezeError(
            f"cannot write the converted folder to {shown(output)}: it exists and is not an empty directory; "
            "name a new folder"
        )
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise XFreezeError(f"cannot write the converted folder to {shown(output)}: {shown(parent)} is not writable")


def _write_shards(folder: Folder, staging: Path, to: str, arch, model) -> dict:
    stem, suffix = TARGET_FILES[to]
    count = len(folder.shards)
    names = (
        [f"{stem}{suffix}"] if count == 1 else [f"{stem}-{i:05d}-of-{count:05d}{suffix}" for i in range(1, count + 1)]
    )
    weight_map, notes, unplaced, total = {}, [], [], 0
    for shard, name in zip(folder.shards, names):
        out = convert(read_shard(folder, shard), to=to, model=model, arch=arch, source=folder.framework)
        _save(out, staging / name, None, SAFETENSORS_METADATA[to] if suffix == ".safetensors" else None)
        weight_map.update(dict.fromkeys(out, name))
        notes += out.notes
        unplaced += out.unplaced
        total += sum(int(_tensors.to_raw(value, key).bits.nbytes) for key, value in out.items())
    if count > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (staging / f"{stem}{suffix}.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return {"files": names, "keys": len(weight_map), "notes": notes, "unplaced": unplaced}


def _copy_extras(folder: Folder, staging: Path, to: str) -> None:
    """config.json mapped; tokenizer and generation files copied; the source's weights and indexes not."""
    weights = {name for files in WEIGHT_FILES for name in (files.single, files.index)}
    weights |= {shard.name for shard in folder.shards}
    if folder.config:
        text = json.dumps(map_config(folder.config, to), indent=2, sort_keys=True) + "\n"
        (staging / CONFIG).write_text(text, encoding="utf-8")
    for entry in sorted(folder.path.iterdir()):
        name = entry.name
        if name in weights or name == CONFIG or name.startswith(".") or not name.endswith(COPIED_SUFFIXES):
            continue
        if not entry.is_file() or entry.is_symlink():
            continue
        try:
            shutil.copyfile(entry, staging / name)
        except OSError as exc:
            raise XFreezeError(f"cannot copy {shown(entry)}: {exc.strerror or exc} ({errno_name(exc)})") from None

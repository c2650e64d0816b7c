"""Converting a checkpoint folder to the other framework's folder, shard by shard (``xfreeze convert`` on a folder).

transformers -> Paddle writes what PaddleFormers (and PaddleNLP) read natively: ``model_state.pdparams`` (or
``model_state-0000k-of-0000n.pdparams`` shards with ``model_state.pdparams.index.json``), Paddle names and layouts,
and ``config.json`` marked ``"source": "paddle"``; PaddleFormers 1.2 loads it with
``from_pretrained(folder, load_checkpoint_format="", convert_from_hf=False)``. Paddle -> torch writes a transformers
folder: ``model.safetensors`` (or shards with ``model.safetensors.index.json``), header ``{"format": "pt"}``, which
``from_pretrained`` requires. Each input shard becomes one output shard: memory is one shard, never the model.

A fused layer (PaddleFormers ERNIE 4.5 / Gemma3 ``qkv_proj``) is split or joined with the numbers of heads of the
folder's ``config.json`` (``num_attention_heads``, ``num_key_value_heads``, ``head_dim``) unless ``model=`` gives
them (then both must agree); its parts may lie in different shards: the earlier ones wait for the shard that completes
them (:mod:`~xfreeze.weights.fusedshards`), so an output shard may hold a tensor of an earlier input shard. Without
``arch=`` or ``model=``, ``config.json``'s ``model_type`` picks the name map where it tells one
(:data:`CONFIG_ARCHS`); otherwise the names decide as :func:`~xfreeze.weights.convert.convert` does (a transformers
Llama goes to PaddleNLP's names: pass ``arch="paddleformers"`` for PaddleFormers').

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
from ..model.view import view_of
from . import fusedshards as _fusedshards
from . import fusion as _fusion
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
# config.json model_type -> the name map of a folder converted without arch= or model=: the architectures whose
# PaddleFormers and PaddleNLP names differ, or that PaddleFormers fuses (a Llama's names tell it on the Paddle side)
CONFIG_ARCHS = {"ernie4_5": "ernie4_5", "gemma3": "ernie4_5", "gemma3_text": "ernie4_5", "phi3": "paddleformers"}


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
    for fix in CONFIG_FIXES.get(to, ()):
        fix(out)
    return out


def _global_rope(config: dict) -> None:
    """transformers 5 writes per-layer-type rope parameters (Gemma3: ``{"full_attention": {"rope_theta": ...},
    "sliding_attention": ...}``, the top-level ``rope_theta`` None); PaddleFormers reads the top-level one (else its
    default, 1e6): the full-attention layers' theta is written there."""
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict):
        return
    full = rope.get("full_attention")
    theta = full.get("rope_theta") if isinstance(full, dict) else None
    if theta is None or rope.get("rope_theta") is not None:
        return
    config["rope_parameters"] = {**rope, "rope_theta": theta}
    if config.get("rope_theta") is None:
        config["rope_theta"] = theta


# target framework -> what its libraries read differently in config.json (fixed in place, after the marks)
CONFIG_FIXES = {"paddle": (_global_rope,)}


def convert_folder(source, output, *, to: str, arch: str | None = None, model=None) -> dict:
    """Convert the checkpoint folder ``source`` into a new folder ``output`` for framework ``to``.

    Args:
        source: a checkpoint folder (see :func:`xfreeze.load_checkpoint`).
        output: the folder to create (absent, or an empty directory).
        to: the target framework.
        arch: a name map of :func:`xfreeze.convert_archs` (``"paddleformers"``, ``"llama"``: PaddleNLP); default:
            the one ``config.json``'s ``model_type`` tells (:data:`CONFIG_ARCHS`), else the one the names tell.
        model: a target model deciding the layouts (optional); fused query/key/value layers otherwise take their
            numbers of heads from the folder's ``config.json``.

    Returns:
        dict: ``{"files": [written files], "keys": tensors written, "notes": [(key, note)], "unplaced": [...]}``.

    Raises:
        XFreezeError: a bad source folder (named), ``output`` not empty or not writable, a source already of ``to``,
            a fused query/key/value layer without the numbers of heads (no ``model=``, and ``config.json`` missing
            or lacking them), ``model=`` whose heads differ from ``config.json``'s, or a fused layer's part whose
            partners no shard holds. Nothing is written then.

    Example:
        >>> convert_folder("ernie45-hf", "ernie45-pd", to="paddle")  # doctest: +SKIP
        {'files': [...], 'keys': 21, 'notes': [...], 'unplaced': []}
    """
    folder = open_folder(Path(source))
    output = Path(output)
    _check_output(output)
    if folder.framework == to:
        raise XFreezeError(f"{folder.what()} already holds {to} names and layouts; nothing to convert")
    _check_heads(folder, model)
    told = CONFIG_ARCHS.get(str(folder.config.get("model_type"))) if arch is None and model is None else None
    staging = output.parent / f".{output.name}.xfreeze-{os.getpid()}-{os.urandom(4).hex()}.tmp"
    staging.mkdir()
    try:
        result = _write_shards(folder, staging, to, arch or told, model)
        if told:
            result["notes"].insert(
                0, ("", f"name map {told!r}: config.json says model_type {folder.config['model_type']!r}")
            )
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
    """Each input shard, converted, as one output shard (fused layers' parts gathered first); a shard whose every
    tensor waits for a later one writes nothing."""
    stem, suffix = TARGET_FILES[to]
    targets = set(view_of(model).key_info()) if model is not None else None
    parts = _fusedshards.waiting(folder.framework, to, arch, targets)
    written: list = []
    weight_map: dict = {}
    notes: list = []
    unplaced: list = []
    total = 0
    for shard in folder.shards:
        chunk = parts.chunk(shard, read_shard(folder, shard))[0]
        if not chunk:
            continue
        chunk.config, chunk.config_from = folder.config, folder.what()  # without a model: the heads come from there
        out = convert(chunk, to=to, model=model, arch=arch, source=folder.framework)
        written.append(staging / f"part-{len(written):05d}{suffix}")
        _save(out, written[-1], None, SAFETENSORS_METADATA[to] if suffix == ".safetensors" else None)
        weight_map.update(dict.fromkeys(out, len(written) - 1))
        notes += out.notes
        unplaced += out.unplaced
        total += sum(int(_tensors.to_raw(value, key).bits.nbytes) for key, value in out.items())
        del chunk, out  # before the next shard is read
    parts.finish(folder.what)
    count = len(written)
    names = (
        [f"{stem}{suffix}"] if count == 1 else [f"{stem}-{i:05d}-of-{count:05d}{suffix}" for i in range(1, count + 1)]
    )
    for path, name in zip(written, names):
        os.replace(path, staging / name)
    if count > 1:
        mapped = {key: names[i] for key, i in sorted(weight_map.items())}
        index = {"metadata": {"total_size": total}, "weight_map": mapped}
        (staging / f"{stem}{suffix}.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return {"files": names, "keys": len(weight_map), "notes": notes, "unplaced": unplaced}


def _check_heads(folder: Folder, model) -> None:
    """Refuse ``model=`` whose numbers of heads differ from the folder's ``config.json``."""
    ours = _fusion.heads_of(model) if model is not None else None
    theirs = _fusion.heads_in_config(folder.config)
    if not _fusion.same_heads(ours, theirs):
        raise XFreezeError(
            f"model= has {_heads_text(ours)} where config.json of {folder.what()} says {_heads_text(theirs)}: "
            "the model is not the checkpoint's architecture. Pass a model built from that config.json, or leave "
            "model= out (config.json gives the heads); nothing was written"
        )


def _heads_text(heads) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip((*_fusion.HEAD_KEYS, "head_dim"), heads) if v is not None)


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

"""Zip archives (the container of torch's files and of npz) and the npz format: one ``.npy`` member per tensor.

Every member an archive declares is bounded by the archive's bytes before anything reads it (a compressed member by
1032x its compressed size, deflate's ceiling), and each ``.npy`` member's header by the member's size."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from ..core import tensors as _tensors
from ..core.errors import XFreezeError
from ..core.table import plain

DEFLATE_RATIO = 1032  # the most deflate can expand; a compressed npz member may not claim more


def probe(path: Path, head: bytes, what: str):
    """The container probe: ``(member names, None)`` for a zip archive whose members fit in it, ``(None, None)`` for
    anything else; a corrupt archive, or one whose members declare more than it holds, is an error."""
    if head[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        return None, None
    return _member_names(path, what), None


def unmatched(what: str, names: list, formats) -> str:
    """The refusal for a zip archive no format recognises."""
    return f"{what} is a zip archive but neither {' nor '.join(f.missing for f in formats if f.missing)}: {names[:3]}"


def sniff(head: bytes, names: list) -> bool:
    return bool(names) and all(n.endswith(".npy") for n in names)


def _member_names(path: Path, what: str) -> list:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except UnicodeDecodeError:
        raise XFreezeError(
            f"{what} is a zip archive whose member names do not decode (not UTF-8 where the archive says so): corrupt"
        ) from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise XFreezeError(
            f"{what} is truncated or corrupt: an incomplete zip archive (torch .pt or .npz): {exc}"
        ) from None
    size = path.stat().st_size
    for info in infos:  # a reader allocates what a member declares: bound it by the archive's bytes
        stored = info.compress_type == zipfile.ZIP_STORED
        limit = info.compress_size if stored else DEFLATE_RATIO * max(info.compress_size, 1)
        if info.file_size > limit or info.header_offset + info.compress_size > size:
            raise XFreezeError(
                f"{what}: zip member {plain(info.filename)!r} declares {info.file_size:,} bytes "
                f"({info.compress_size:,} stored) in an archive of {size:,} bytes; refused (a file "
                "may not declare more than it holds)"
            )
    return [info.filename for info in infos]


def read(path: Path, size: int, fmt):
    """``({member name without .npy: array}, {})``."""
    out = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED and info.file_size > DEFLATE_RATIO * max(info.compress_size, 1):
                raise XFreezeError(
                    f"member {info.filename!r} declares {info.file_size:,} bytes from "
                    f"{info.compress_size:,} compressed: beyond what compression can give; refused"
                )
            with archive.open(info) as member:
                out[info.filename[:-4]] = _read_npy(member, info)
    return out, {}


def _read_npy(member, info) -> np.ndarray:
    version = npy.read_magic(member)
    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, fortran, dtype = read_header(member)
    if dtype.hasobject:
        raise XFreezeError(f"member {info.filename!r} holds Python objects (dtype {dtype}); refused")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > info.file_size:
        raise XFreezeError(
            f"member {info.filename!r} declares {nbytes:,} bytes of data but holds "
            f"{info.file_size:,}; refused (a file may not declare more than it holds)"
        )
    data = member.read(nbytes)
    if len(data) != nbytes:
        raise XFreezeError(f"member {info.filename!r} is truncated")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return np.require(array, requirements=["C", "W"])


def write(state: dict, fmt, framework, metadata: dict):
    """Checks the keys, converts to numpy (bfloat16 / float8 refused, naming the tensor), returns ``write(file)``."""
    bad = [k for k in state if "\x00" in k]
    if bad:
        raise XFreezeError(
            f"key {bad[0]!r} holds a NUL character, which zip member names (npz) cannot; "
            "use .safetensors, .pt or .pdparams"
        )
    arrays = {k: _tensors.to_numpy(v, k) for k, v in state.items()}
    return lambda f: _write(arrays, f)


def _write(arrays: dict, f) -> None:
    # written member by member: np.savez(**arrays) breaks on keys such as "file" (its own parameter name)
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            with archive.open(key + ".npy", "w", force_zip64=True) as member:
                npy.write_array(member, np.require(array, requirements="C"), allow_pickle=False)

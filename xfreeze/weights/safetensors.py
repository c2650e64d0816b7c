"""The safetensors format: an 8-byte little-endian header length, a JSON header that parses, fits in the file and
whose offsets tile the data exactly, then the data. Read from a memory map, written here (not by the safetensors
package, whose ``serialize`` changed its signature between 0.4 and 0.8)."""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import numpy as np

from ..core import tensors as _tensors
from ..core.errors import XFreezeError
from ..core.table import plain
from .statedict import native

# safetensors dtype codes <-> neutral names
ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "BOOL": "bool",
    "C64": "complex64",
}
ST_CODES = {v: k for k, v in ST_DTYPES.items()}
MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


def probe(path: Path, head: bytes, what: str):
    """The container probe: ``(header, None)`` for a well-formed safetensors file; ``(None, problem)`` for one that
    starts like one (a header length, then ``{``) but breaks its structure; ``(None, None)`` for anything else."""
    header, problem = check(path, head)
    return header, (f"is not a valid safetensors file: {problem}" if problem else None)


def sniff(head: bytes, header: dict) -> bool:
    return True  # the probe checked the whole structure


def check(path: Path, head: bytes):
    """``(header, None)``, ``(None, problem)`` or ``(None, None)``, as :func:`probe` (never raises)."""
    size = path.stat().st_size
    if len(head) < 10 or head[8:9] != b"{":
        return None, None
    (n,) = struct.unpack("<Q", head[:8])
    if n > min(MAX_HEADER, size - 8):
        return None, f"its safetensors header declares {n:,} bytes, more than the file's {size:,}"
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"its safetensors header is not valid JSON ({type(exc).__name__})"
    if not isinstance(header, dict):
        return None, "its safetensors header is not a JSON object"
    problem: list = []
    if layout(header, size - 8 - n, problem) is None:
        return None, f"its safetensors header is forged or damaged: {problem[0] if problem else 'bad entries'}"
    return header, None


def layout(header: dict, data_len: int, problem_out: list | None = None):
    """``{key: (dtype, shape, start, end)}`` when every entry is valid and the offsets tile the data exactly."""
    problem: list = [] if problem_out is None else problem_out
    out, spans = {}, []
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                problem.append("__metadata__ is not a mapping of strings")
                return None
            continue
        try:
            dtype, shape, (start, end) = ST_DTYPES[entry["dtype"]], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            problem.append(f"entry {plain(key)!r} lacks a known dtype, a shape or two data offsets")
            return None
        if not (
            isinstance(shape, list)
            and all(type(d) is int and d >= 0 for d in shape)
            and type(start) is int
            and type(end) is int
            and 0 <= start <= end <= data_len
        ):
            problem.append(f"entry {plain(key)!r} has a bad shape or offsets beyond the data ({data_len:,} bytes)")
            return None
        itemsize = np.dtype(_tensors.BIT_CARRIERS.get(dtype, dtype)).itemsize
        if int(np.prod(shape, dtype=object)) * itemsize != end - start:
            problem.append(f"entry {plain(key)!r}: shape {shape} of {dtype} does not fill offsets {start}-{end}")
            return None
        out[key] = (dtype, shape, start, end)
        spans.append((start, end))
    position = 0
    for start, end in sorted(spans):
        if start != position:
            problem.append("tensor data overlaps or leaves gaps")
            return None
        position = end
    if position != data_len:
        problem.append(f"the tensors cover {position:,} of the {data_len:,} data bytes")
        return None
    return out


def read(path: Path, size: int, fmt):
    """``(tensors, the header's __metadata__)``; numpy arrays, or a framework tensor for bfloat16 / float8."""
    with open(path, "rb") as f:
        head = f.read(16)
        header = check(path, head)[0]
        (n,) = struct.unpack("<Q", head[:8])
        entries = layout(header, size - 8 - n)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            out = {}
            for key, (dtype, shape, start, end) in entries.items():
                carrier = np.dtype(_tensors.BIT_CARRIERS.get(dtype, dtype)).newbyteorder("<")
                bits = (
                    np.frombuffer(mm, dtype=carrier, count=(end - start) // carrier.itemsize, offset=8 + n + start)
                    .reshape(shape)
                    .astype(carrier.newbyteorder("="))
                )
                out[key] = native(_tensors.Raw(bits, dtype), None, key)
    return out, header.get("__metadata__") or {}


def write(state: dict, fmt, framework, metadata: dict):
    """Checks the keys and dtypes, then returns ``write(file)``."""
    if "__metadata__" in state:
        raise XFreezeError(
            "key '__metadata__' is reserved by the safetensors format; rename it, or save as .pt / .pdparams"
        )
    raws = {k: _tensors.to_raw(v, k) for k, v in state.items()}
    bad = [k for k, r in raws.items() if r.dtype not in ST_CODES]
    if bad:
        raise XFreezeError(f"tensor {bad[0]!r} has dtype {raws[bad[0]].dtype}, which safetensors cannot hold")
    return lambda f: _write(raws, f, framework, metadata)


def _write(raws: dict, f, framework, metadata: dict) -> None:
    """Header length, JSON header (padded to 8 bytes), data in header order."""
    header, offset = {}, 0
    for key, raw in raws.items():
        header[key] = {
            "dtype": ST_CODES[raw.dtype],
            "shape": list(raw.shape),
            "data_offsets": [offset, offset + raw.bits.nbytes],
        }
        offset += raw.bits.nbytes
    header["__metadata__"] = {"framework": framework or "", "writer": "xfreeze", **metadata}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    f.write(struct.pack("<Q", len(text)) + text)
    for raw in raws.values():
        f.write(np.require(raw.bits, dtype=raw.bits.dtype.newbyteorder("<"), requirements="C").tobytes())

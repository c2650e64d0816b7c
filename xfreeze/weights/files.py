"""Checkpoint files: torch .pt/.pth/.bin, Paddle .pdparams, .safetensors and .npz, detected from their structure.

Guarantees (the README's weights section states them for users):
  * **Detection follows each format's real structure**, never one format guessed from another's first byte:
    safetensors = an 8-byte little-endian header length, then a JSON header that parses, fits in the file and whose
    offsets cover the data exactly; zip (torch, npz) = a central directory that reads, with member names that decode;
    pickle = a protocol opcode (2-5), then the frameworks' own sniffers (``backends/formats.py``).
  * **No code runs**: torch files go through ``torch.load(weights_only=True)``; Paddle pickles through a restricted
    unpickler that admits what ``paddle.save`` writes (numpy arrays by ``_reconstruct``/``_frombuffer``,
    ``_codecs.encode`` with latin1, tuples, dicts, numbers, strings) and nothing else.
  * **Bounded**: what a file declares is bounded by what it holds: an array may not declare more bytes than the file
    has (compressed npz members: 1032x their compressed size, deflate's ceiling); pickles are read from a memory map,
    so a declared length beyond the file's end is "truncated", never an allocation. Containers that refer to
    themselves are refused.
  * **Native values, bit for bit**: torch files give torch tensors; the other formats give numpy arrays where numpy
    holds the dtype, and a framework tensor for bfloat16 / float8 (the file's framework if installed, else any
    installed one). Every format keeps float64/32/16, bfloat16, float8, int, uint8 and bool bits exactly, except npz,
    which refuses bfloat16/float8 with an error naming the tensor (numpy has no such dtype).
  * **Saving is atomic**: a temporary ``.<name>.xfreeze-<pid>-<random>.tmp`` beside the target, fsync, rename. A
    killed save leaves at most that temporary file, which the next save to the same path removes (when process
    <pid> is gone).
    The file gets the mode a plain ``open()`` would give (an existing file keeps its mode; a new one 0o666 & ~umask).
    Saving to a symlink writes through to its target; the link stays. A full disk, a read-only file system or a
    permission error is one ``XFreezeError`` naming the path; the previous file is intact.
"""

from __future__ import annotations

import json
import mmap
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path

import numpy as np

from ..core import tensors as _tensors
from ..core.dispatch import adapter_named, installed
from ..core.table import escape, plain  # noqa: F401  (re-exported: the CLI uses them)
from ..core.errors import XFreezeError, check_choice
from ..backends import ADAPTERS, formats

FORMATS = {
    ".safetensors": "safetensors",
    ".npz": "npz",
    **{s: f.name for f in formats.FILE_FORMATS for s in f.suffixes},
}
FORMAT_NAMES = ("safetensors", "npz", *dict.fromkeys(f.name for f in formats.FILE_FORMATS))
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "params", "weights")
PADDLE_BOOKKEEPING = "StructuredToParameterName@@"
DTYPE_ENTRY = "xfreeze@@dtypes"  # in pickles: {key: dtype} for tensors whose bits alone do not tell (fp8)
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
DEFLATE_RATIO = 1032  # the most deflate can expand; a compressed npz member may not claim more
MAX_DEPTH = 8  # "state_dict"-style wrappers unwrapped at most this deep


class StateDict(dict):
    """A ``{name: tensor}`` mapping that remembers where it came from.

    Attributes:
        framework: ``"torch"``, ``"paddle"`` or None (unknown): whose names and layouts the keys follow.
        format: the file format it was read from (``"torch"``, ``"paddle"``, ``"safetensors"``, ``"npz"``) or None.
        notes: what was done to it on the way (unwrapping, conversion, ignored metadata), as ``(key, note)`` pairs;
            notes about the whole file have the key ``""``.
        metadata: what a safetensors file says of itself (its ``__metadata__``, verbatim; never trusted over the
            file's structure); empty for other formats.
        arch, unplaced, differences: set by :func:`xfreeze.convert`: the architecture map used, the keys the
            target model has no place for, and the known architecture differences it found.
    """

    def __init__(self, *args, framework=None, format=None, notes=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.framework, self.format, self.notes = framework, format, list(notes or [])
        self.metadata: dict = {}  # what a safetensors file says of itself (``__metadata__``), verbatim
        self.arch: str | None = None
        self.unplaced: list = []
        self.differences: list = []


def load_checkpoint(path, *, framework: str | None = None) -> StateDict:
    """Read a checkpoint file safely; the format is detected from the file's structure, not its suffix.

    Args:
        path: a ``.pt``/``.pth``/``.bin`` (torch), ``.pdparams`` (Paddle), ``.safetensors`` or ``.npz`` file.
        framework: whose names the file uses (``"torch"``/``"paddle"``), when neither key names nor format tell.

    Returns:
        StateDict: ``{name: value}``, unwrapped from ``{"state_dict": ...}``-style containers, with ``framework``,
        ``format`` and ``notes`` set. Values are torch tensors for torch files; for the other formats numpy arrays,
        or a framework tensor for bfloat16/float8 (numpy has no such dtype), bit for bit.

    Raises:
        XFreezeError: a missing, empty, truncated, corrupt, self-referencing or oversized-declaring file, an unknown
            format, keys that are not strings, values that are not tensors, or a pickle that asks to run code (the
            code never runs). The message names the file and what was wrong.

    Example:
        >>> import numpy as np, tempfile, os, xfreeze
        >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
        >>> _ = xfreeze.save_checkpoint({"fc.weight": np.ones((2, 3), "float32")}, path)
        >>> xfreeze.load_checkpoint(path)["fc.weight"].shape
        (2, 3)
    """
    if framework is not None:
        check_choice("framework", framework, tuple(ADAPTERS))
    path = Path(path)
    what = f"checkpoint {str(path)!r}"
    if not path.exists():
        raise XFreezeError(f"{what} does not exist")
    if path.is_dir():
        raise XFreezeError(f"{what} is a directory; pass the weights file inside it")
    size = path.stat().st_size
    if size == 0:
        raise XFreezeError(f"{what} is empty (0 bytes): an interrupted save or download?")
    kind, spec = detect_format(path)
    try:
        data, meta = _read(kind, spec, path, size)
    except XFreezeError as exc:
        raise XFreezeError(str(exc) if str(path) in str(exc) else f"{what}: {exc}") from None
    except (MemoryError, RecursionError) as exc:
        raise XFreezeError(
            f"{what} ({kind} format) declares more than it can hold ({type(exc).__name__}); refused"
        ) from None
    except Exception as exc:  # every reader's own way of saying "truncated" or "corrupt"
        raise XFreezeError(
            f"{what} ({kind} format) is truncated or corrupt: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    state = as_state_dict(data, format=kind, what=what)
    state.framework = _decide_framework(state, framework, meta, spec)
    state.metadata = dict(meta) if isinstance(meta, dict) else {}
    return state


def save_checkpoint(obj, path, *, format: str | None = None, rank: int | None = None) -> Path:
    """Write a state dict (tensors of either framework or numpy arrays) or a model's weights, atomically.

    Dtypes are kept bit for bit (bfloat16 and float8 included; npz refuses them, naming the tensor). The file gets
    the mode a plain ``open()`` would give; a symlink is written through (its target is replaced, the link stays);
    a killed save leaves only ``.<name>.xfreeze-<pid>-<random>.tmp``, removed by the next save to the same path.

    Args:
        obj: a ``{name: tensor}`` mapping (string keys), or a torch / Paddle model (its ``state_dict()``).
        path: where to write; the suffix picks the format (``.pt``/``.pth``/``.bin``, ``.pdparams``,
            ``.safetensors``, ``.npz``) unless ``format`` is given.
        format: ``"torch"``, ``"paddle"``, ``"safetensors"`` or ``"npz"``.
        rank: under a process group, call on every rank: all gather the full state (FSDP shards too), this rank
            writes, all wait at a barrier.

    Returns:
        Path: the path written (as given, a symlink stays a symlink).

    Raises:
        XFreezeError: an unknown format, non-string keys, non-tensor values, a dtype the format cannot hold, a key
            the format reserves (``__metadata__`` in safetensors), a folder that does not exist, or the disk full /
            read-only / not permitted (the previous file is intact).

    Example:
        >>> import numpy as np, tempfile, os, xfreeze
        >>> path = xfreeze.save_checkpoint({"w": np.zeros(2, "float32")}, os.path.join(tempfile.mkdtemp(), "w.pt"))
        >>> path.name
        'w.pt'
    """
    if rank is not None:
        from .ranks import save_on_rank

        save_on_rank(obj, rank, lambda state: _save(state, path, format))
        return Path(path)
    return _save(obj, path, format)


def _save(obj, path, format, metadata: dict | None = None) -> Path:
    path = Path(path)
    if format is not None:
        check_choice("format", format, FORMAT_NAMES)
    kind = format or FORMATS.get(path.suffix.lower())
    if kind is None:
        raise XFreezeError(
            f"cannot tell the format of {str(path)!r}: use a suffix among {sorted(FORMATS)} or "
            f"format={'|'.join(map(repr, FORMAT_NAMES))}"
        )
    target = Path(os.path.realpath(path))  # a symlink is written through: its target is what gets replaced
    if not target.parent.is_dir():
        raise XFreezeError(f"folder {str(target.parent)!r} does not exist")
    state = obj if isinstance(obj, dict) else _model_state(obj)
    _check_keys(state, f"state dict for {str(path)!r}")
    framework = getattr(state, "framework", None) or _values_framework(state)
    write = _writer(kind, state, framework, metadata or {})
    try:
        _atomic_write(target, write)
    except OSError as exc:
        raise XFreezeError(
            f"cannot write {str(path)!r}: {exc.strerror or exc} ({_errno_name(exc)}); any previous file there is intact"
        ) from None
    return path


def detect_format(path: Path):
    """``(format name, FileFormat or None)`` from the file's structure; an error naming the file otherwise."""
    what = f"checkpoint {str(path)!r}"
    with open(path, "rb") as f:
        head = f.read(16)
    header, problem = _safetensors_check(path, head)
    if header is not None:
        return "safetensors", None
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        names = _zip_names(path, what)
        if names and all(n.endswith(".npy") for n in names):
            return "npz", None
        spec = formats.sniff("zip", head, names)
        if spec is None:
            raise XFreezeError(
                f"{what} is a zip archive but neither a torch checkpoint (no data.pkl) nor an npz "
                f"(members not all .npy): {names[:3]}"
            )
        return spec.name, spec
    if head[:1] == b"\x80" and 2 <= head[1:2][0] <= 5 if len(head) > 1 else False:
        spec = formats.sniff("pickle", head)
        if spec is not None:
            return spec.name, spec
    if problem:
        raise XFreezeError(f"{what} is not a valid safetensors file: {problem}")
    suffix = FORMATS.get(path.suffix.lower())
    raise XFreezeError(
        f"{what} is not a torch, Paddle, safetensors or npz file"
        + (f" (the suffix says {suffix}, the content does not)" if suffix else "")
    )


def as_state_dict(data, *, framework=None, format=None, what="the state dict") -> StateDict:
    """Unwrap ``{"state_dict": {...}, "epoch": 3}``-style containers and check keys (strings) and values (tensors).

    Paddle's ``(name, array)`` tuples become the array; Paddle's ``StructuredToParameterName@@`` bookkeeping is
    dropped. A container that holds itself is refused.
    """
    if framework is not None:
        check_choice("framework", framework, tuple(ADAPTERS))
    notes: list = []
    seen: set = set()
    while isinstance(data, dict) and not _all_tensors(data):
        if id(data) in seen or len(seen) >= MAX_DEPTH:
            raise XFreezeError(
                f"{what} holds containers that refer to themselves (or nest deeper than {MAX_DEPTH}); refused"
            )
        seen.add(id(data))
        inner = [k for k in WRAPPER_KEYS if isinstance(data.get(k), dict)]
        if not inner:
            break
        notes.append((inner[0], f"unwrapped {what}[{inner[0]!r}]"))
        data = data[inner[0]]
    if not isinstance(data, dict):
        raise XFreezeError(f"{what} holds a {type(data).__name__}, not a mapping of names to tensors")
    data = {k: _untuple(v) for k, v in data.items() if k not in (PADDLE_BOOKKEEPING, DTYPE_ENTRY)}
    _check_keys(data, what)
    bad = [k for k, v in data.items() if not _tensors.is_tensor(v)]
    if bad:
        shown = ", ".join(f"{k!r} ({type(data[k]).__name__})" for k in bad[:5])
        raise XFreezeError(
            f"{what} has values that are not tensors: {shown}"
            f"{' ...' if len(bad) > 5 else ''}. Pass the weights mapping itself (e.g. ckpt['model'])"
        )
    return StateDict(data, framework=framework or _values_framework(data), format=format, notes=notes)


def describe(state: StateDict) -> dict:
    """Keys, shapes, dtypes and total bytes of a state dict (for ``xfreeze inspect``); any dtype, bf16 included."""
    tensors = [(k, _tensors.shape_of(v), _tensors.dtype_name(v)) for k, v in state.items()]
    nbytes = sum(_tensors.to_raw(v, k).bits.nbytes for k, v in state.items())
    return {
        "framework": state.framework,
        "format": state.format,
        "keys": len(tensors),
        "bytes": int(nbytes),
        "tensors": tensors,
        "notes": list(state.notes),
    }


def to_numpy(value, key="") -> np.ndarray:
    """Kept for callers of the earlier API: :func:`xfreeze.core.tensors.to_numpy`."""
    return _tensors.to_numpy(value, key)


# --- detection helpers ---------------------------------------------------------------------------------------
def _safetensors_header(path: Path, head: bytes):
    """The parsed header when the file is a well-formed safetensors file, else None (never raises)."""
    return _safetensors_check(path, head)[0]


def _safetensors_check(path: Path, head: bytes):
    """``(header, None)`` for a well-formed safetensors file; ``(None, problem)`` for one that starts like one
    (a header length, then ``{``) but breaks its structure; ``(None, None)`` for anything else."""
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
    if _safetensors_layout(header, size - 8 - n, problem) is None:
        return None, f"its safetensors header is forged or damaged: {problem[0] if problem else 'bad entries'}"
    return header, None


def _safetensors_layout(header: dict, data_len: int, problem_out: list | None = None):
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


def _zip_names(path: Path, what: str) -> list:
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


# --- readers ------------------------------------------------------------------------------------------------
def _read(kind: str, spec, path: Path, size: int):
    """``(data, metadata)``: data as the file holds it; metadata a dict of what the file says of itself."""
    if kind == "safetensors":
        return _read_safetensors(path, size)
    if kind == "npz":
        return _read_npz(path), {}
    if spec.reader == "pickle":
        return _read_pickle(path, size, spec), {}
    if spec.container == "pickle":  # a framework's own pickle reader: its opcodes are checked first
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            _scan_pickle(_MappedReader(mm), size, spec.pickles)
    if spec.declared_bytes is not None:
        declared = spec.declared_bytes(path)
        if declared > size:
            raise XFreezeError(
                f"it declares {declared:,} bytes of tensor data in a file of {size:,} bytes; refused "
                "(a file may not declare more than it holds)"
            )
    return adapter_named(spec.framework).load_file(path), {}


def _read_safetensors(path: Path, size: int):
    with open(path, "rb") as f:
        head = f.read(16)
        header = _safetensors_header(path, head)
        (n,) = struct.unpack("<Q", head[:8])
        layout = _safetensors_layout(header, size - 8 - n)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            out = {}
            for key, (dtype, shape, start, end) in layout.items():
                carrier = np.dtype(_tensors.BIT_CARRIERS.get(dtype, dtype)).newbyteorder("<")
                bits = (
                    np.frombuffer(mm, dtype=carrier, count=(end - start) // carrier.itemsize, offset=8 + n + start)
                    .reshape(shape)
                    .astype(carrier.newbyteorder("="))
                )
                out[key] = _native(_tensors.Raw(bits, dtype), None, key)
    return out, header.get("__metadata__") or {}


def _read_npz(path: Path) -> dict:
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
    return out


def _read_npy(member, info) -> np.ndarray:
    from numpy.lib import format as npy

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


_MEMO_OPCODES = ("PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET")


def _scan_pickle(reader, size: int, count: int = 1) -> None:
    """Walk the opcodes of ``count`` consecutive pickles without building anything: Python's unpickler allocates a
    declared length before reading it, and grows its memo to any index a file names, so lengths beyond the file's
    end and memo indices beyond its size are refused here, before they can become allocations."""
    import pickletools

    try:
        for _ in range(count):
            for opcode, arg, _pos in pickletools.genops(reader):
                if opcode.name in _MEMO_OPCODES and isinstance(arg, int) and not 0 <= arg <= size:
                    raise XFreezeError(
                        f"a pickle memo index {arg:,} is beyond the file's {size:,} bytes; refused "
                        "(a file may not declare more than it holds)"
                    )
    except ValueError as exc:
        if isinstance(exc, XFreezeError):
            raise
        raise XFreezeError(
            f"a pickle opcode declares more bytes than the file holds, or the pickle is cut short "
            f"(truncated or forged): {str(exc)[:200]}"
        ) from None


class _MappedReader:
    """A read-only file over a memory map: reads past the end come back short (pickle says "truncated"), so a
    declared length never becomes an allocation."""

    def __init__(self, mm):
        self.mm, self.pos = mm, 0

    def read(self, n=-1):
        end = len(self.mm) if n is None or n < 0 else min(self.pos + n, len(self.mm))
        out, self.pos = self.mm[self.pos : end], end
        return out

    def readline(self):
        end = self.mm.find(b"\n", self.pos)
        return self.read(-1 if end < 0 else end + 1 - self.pos)

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _read_pickle(path: Path, size: int, spec):
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        _scan_pickle(_MappedReader(mm), size)
        data = _RestrictedUnpickler(_MappedReader(mm), size).load()
    return _pickle_dtypes(data, spec)


def _pickle_dtypes(data, spec):
    """Apply the file's dtype conventions: xfreeze's own ``xfreeze@@dtypes`` entry, else the format's (Paddle:
    uint16 is bfloat16), turning bf16 / fp8 bit patterns into native values."""
    if not isinstance(data, dict):
        return data
    declared = data.get(DTYPE_ENTRY) if isinstance(data.get(DTYPE_ENTRY), dict) else {}
    out = {}
    for key, value in data.items():
        value = _untuple(value)
        if isinstance(value, np.ndarray):
            dtype = declared.get(key) or (spec.uint16_is if value.dtype == np.uint16 else None)
            if dtype in _tensors.BIT_CARRIERS:
                carrier = _tensors.BIT_CARRIERS[dtype]
                value = _native(
                    _tensors.Raw(np.require(value, requirements="C").view(carrier), dtype), spec.framework, key
                )
        out[key] = value
    return out


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits what paddle.save writes and nothing that runs code; every array it builds is bounded by the file."""

    def __init__(self, file, size: int):
        super().__init__(file)
        self.size = size
        self.allowed = {
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): self._reconstruct,
            ("numpy.core.numeric", "_frombuffer"): self._frombuffer,
            ("numpy._core.numeric", "_frombuffer"): self._frombuffer,
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): self._dtype,
            ("numpy.core.multiarray", "scalar"): self._scalar,
            ("numpy._core.multiarray", "scalar"): self._scalar,
            ("collections", "OrderedDict"): dict,
            ("builtins", "tuple"): tuple,
            ("builtins", "list"): list,
            ("__builtin__", "tuple"): tuple,
            ("__builtin__", "list"): list,
            ("_codecs", "encode"): _latin1_encode,
        }

    def find_class(self, module, name):
        found = self.allowed.get((module, name))
        if found is None:
            raise XFreezeError(
                f"refused to load {module}.{name}: the file asks to run code, and only numpy arrays "
                "and plain containers are admitted. If you trust the file, load it with paddle.load "
                "yourself"
            )
        return found

    def persistent_load(self, pid):
        raise XFreezeError("refused: the pickle refers to external (persistent) objects, which .pdparams never do")

    def _bounded(self, shape, itemsize: int):
        count = int(np.prod(tuple(shape), dtype=object)) if len(tuple(shape)) else 1
        if count * itemsize > self.size:
            raise XFreezeError(
                f"an array declares shape {tuple(shape)} ({count * itemsize:,} bytes) in a file of "
                f"{self.size:,} bytes; refused (a file may not declare more than it holds)"
            )

    def _reconstruct(self, cls, shape, dtype):
        if cls is not _NDARRAY:
            raise XFreezeError("refused: an array of a class other than numpy.ndarray")
        self._bounded(shape, 1)
        return np.ndarray.__new__(np.ndarray, shape, dtype)  # what numpy's _reconstruct does

    def _frombuffer(self, buffer, dtype, shape, order):
        dtype = self._dtype(dtype)
        self._bounded(shape, dtype.itemsize)
        return np.frombuffer(buffer, dtype).reshape(shape, order=order).copy(order="K")

    def _dtype(self, *args):
        dtype = np.dtype(*args)
        if dtype.hasobject:
            raise XFreezeError(f"refused: an array of Python objects (dtype {dtype})")
        return dtype

    def _scalar(self, dtype, data=None):
        dtype = self._dtype(dtype)
        if data is None:
            return np.zeros((), dtype)[()]
        if not isinstance(data, bytes) or len(data) != dtype.itemsize:
            raise XFreezeError(f"refused: a {dtype} scalar built from {type(data).__name__} data")
        return np.frombuffer(data, dtype, count=1)[0]


class _NDArrayClass:
    """What the unpickler gets for ``numpy.ndarray``: only an argument of ``_reconstruct``, never called (calling
    ``numpy.ndarray(shape)`` would allocate whatever shape the file declares)."""

    def __call__(self, *args, **kwargs):
        raise XFreezeError("refused: the pickle calls numpy.ndarray directly, which .pdparams files never do")


_NDARRAY = _NDArrayClass()


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    if encoding not in ("latin1", "latin-1"):  # protocol-2 pickles carry array bytes as latin1 text, nothing else
        raise XFreezeError(f"refused: _codecs.encode with encoding {encoding!r} (only latin1 is admitted)")
    return text.encode("latin1")


def _untuple(value):
    """Paddle pickles a tensor beside other objects as ``(name, array)``: the array."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], np.ndarray):
        return value[1]
    return value


def _native(raw, framework, key: str):
    """numpy where numpy holds the dtype; else a tensor of ``framework`` (if installed) or any installed one."""
    if raw.dtype not in _tensors.BIT_CARRIERS:
        return raw.bits if raw.bits.flags.writeable else raw.bits.copy()
    order = [framework] + [n for n in ADAPTERS if n != framework]
    for name in order:
        if name is not None and installed(name) and raw.dtype in adapter_named(name).DTYPES:
            return adapter_named(name).from_raw(raw)
    raise XFreezeError(
        f"tensor {key!r} is {raw.dtype}, which numpy cannot hold, and no installed framework holds "
        f"it: install one of {list(ADAPTERS)}"
    )


# --- writers ------------------------------------------------------------------------------------------------
def _writer(kind: str, state: dict, framework, metadata: dict):
    """A function ``write(file)``, built after every check passed (nothing is written before)."""
    if kind == "safetensors":
        if "__metadata__" in state:
            raise XFreezeError(
                "key '__metadata__' is reserved by the safetensors format; rename it, or save as .pt / .pdparams"
            )
        raws = {k: _tensors.to_raw(v, k) for k, v in state.items()}
        bad = [k for k, r in raws.items() if r.dtype not in ST_CODES]
        if bad:
            raise XFreezeError(f"tensor {bad[0]!r} has dtype {raws[bad[0]].dtype}, which safetensors cannot hold")
        return lambda f: _write_safetensors(raws, f, framework, metadata)
    if kind == "npz":
        bad = [k for k in state if "\x00" in k]
        if bad:
            raise XFreezeError(
                f"key {bad[0]!r} holds a NUL character, which zip member names (npz) cannot; "
                "use .safetensors, .pt or .pdparams"
            )
        arrays = {k: _tensors.to_numpy(v, k) for k, v in state.items()}
        return lambda f: _write_npz(arrays, f)
    spec = formats.by_name(kind)
    if spec.reader == "pickle":
        raws = {k: _tensors.to_raw(v, k) for k, v in state.items()}
        return lambda f: _write_pickle(raws, f, spec)
    adapter = adapter_named(spec.framework)
    tensors = {k: _tensors.to_backend(v, spec.framework, k) for k, v in state.items()}
    return lambda f: adapter.save_file(tensors, f)


def _write_safetensors(raws: dict, f, framework, metadata: dict) -> None:
    """The safetensors layout (header length, JSON header, data in header order, 8-byte aligned header), written
    here because safetensors' own ``serialize`` changed its signature between 0.4 and 0.8 (dicts -> raw pointers)."""
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


def _write_pickle(raws: dict, f, spec) -> None:
    out, declared = {}, {}
    for key, raw in raws.items():
        out[key] = raw.bits
        if (
            raw.dtype in _tensors.BIT_CARRIERS
            and raw.dtype != spec.uint16_is
            or raw.bits.dtype == np.uint16
            and raw.dtype != spec.uint16_is
        ):
            declared[key] = raw.dtype  # bits alone would read back as another dtype
    if declared:
        out[DTYPE_ENTRY] = declared
    pickle.dump(out, f, protocol=4)  # what paddle.load reads


def _write_npz(arrays: dict, f) -> None:
    # written member by member: np.savez(**arrays) breaks on keys such as "file" (its own parameter name)
    from numpy.lib import format as npy

    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            with archive.open(key + ".npy", "w", force_zip64=True) as member:
                npy.write_array(member, np.require(array, requirements="C"), allow_pickle=False)


def _atomic_write(target: Path, write) -> None:
    _remove_stale_temps(target)
    tmp = target.parent / f".{target.name}.xfreeze-{os.getpid()}-{os.urandom(4).hex()}.tmp"  # threads: distinct
    existing = target.stat().st_mode & 0o7777 if target.exists() else None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            if existing is not None:
                os.fchmod(f.fileno(), existing)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove_stale_temps(target: Path) -> None:
    """Temporary files of earlier saves to ``target`` whose process is gone (killed mid-save)."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.xfreeze-(\d+)-[0-9a-f]{{8}}\.tmp$")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        match = pattern.match(name)
        if match and not _alive(int(match.group(1))):
            (target.parent / name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread's save in progress (our own failed saves remove their file)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _errno_name(exc: OSError) -> str:
    import errno

    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


# --- helpers ------------------------------------------------------------------------------------------------
def _check_keys(state: dict, what: str) -> None:
    bad = [k for k in state if not isinstance(k, str) or not k]
    if bad:
        shown = ", ".join(f"{k!r} ({type(k).__name__})" for k in bad[:3])
        raise XFreezeError(f"{what} has keys that are not non-empty strings: {shown}; tensor names must be strings")


def _all_tensors(data: dict) -> bool:
    return bool(data) and all(
        _tensors.is_tensor(_untuple(v)) for k, v in data.items() if k not in (PADDLE_BOOKKEEPING, DTYPE_ENTRY)
    )


def _values_framework(state) -> str | None:
    kinds = {_tensors.backend_of(v) for v in state.values()} - {None}
    return kinds.pop() if len(kinds) == 1 else None


def _decide_framework(state: StateDict, framework, meta: dict, spec) -> str | None:
    """``framework=`` first, then the key names (the file's own structure), then metadata, then the format.
    Metadata that disagrees with the names, or names no framework, is reported in ``notes`` and not used."""
    if framework is not None:
        return framework
    from .convert import guess_framework

    by_names = guess_framework(list(state))
    said = meta.get("framework") if isinstance(meta, dict) else None
    if said and said not in ADAPTERS:
        state.notes.append(("", f"metadata framework={said!r} ignored: not one of {tuple(ADAPTERS)}"))
        said = None
    if said and by_names and said != by_names:
        state.notes.append(
            ("", f"metadata says framework={said!r} but the key names are {by_names}'s; using {by_names}")
        )
    return by_names or said or (spec.framework if spec else None) or state.framework


def _model_state(model) -> dict:
    from ..core.dispatch import adapter_for

    adapter = adapter_for(model)
    return StateDict(adapter.state_tensors(model), framework=adapter.name)


__all__ = [
    "StateDict",
    "load_checkpoint",
    "save_checkpoint",
    "as_state_dict",
    "describe",
    "detect_format",
    "escape",
    "plain",
]

"""Pickle streams (the container of Paddle's files and of torch's legacy ones) and xfreeze's restricted pickle reader
and writer, which a framework's format names with ``read="pickle"`` / ``write="pickle"``.

No code runs: the restricted unpickler admits what ``paddle.save`` writes (numpy arrays by ``_reconstruct`` /
``_frombuffer``, ``_codecs.encode`` with latin1, tuples, dicts, numbers, strings) and nothing else. Bounded: the
opcodes are walked first, so a declared length beyond the file's end or a memo index beyond its size is refused before
it can become an allocation; the file is read from a memory map, and every array it builds is bounded by the file.
"""

from __future__ import annotations

import mmap
import pickle
import pickletools
from pathlib import Path

import numpy as np

from ..core import tensors as _tensors
from ..core.errors import XFreezeError
from .statedict import DTYPE_ENTRY, native, untuple


def probe(path: Path, head: bytes, what: str):
    """The container probe: ``(protocol, None)`` when the file starts with a pickle protocol opcode (2-5), else
    ``(None, None)``."""
    if len(head) > 1 and head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return head[1], None
    return None, None


def read(path: Path, size: int, fmt):
    """``(what the pickle holds, {})``, through the restricted unpickler, after its opcodes were checked."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        _scan(_MappedReader(mm), size, fmt.pickles)
        data = _RestrictedUnpickler(_MappedReader(mm), size).load()
    return _dtypes(data, fmt), {}


def guard(path: Path, size: int, fmt) -> None:
    """Before a framework's own pickle reader runs: check the opcodes of the ``fmt.pickles`` pickles the file starts
    with."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        _scan(_MappedReader(mm), size, fmt.pickles)


def write(state: dict, fmt, framework, metadata: dict):
    """Returns ``write(file)``: a protocol-4 pickle of numpy arrays (what ``paddle.load`` reads), with an
    ``xfreeze@@dtypes`` entry for the tensors whose bits alone would read back as another dtype."""
    raws = {k: _tensors.to_raw(v, k) for k, v in state.items()}
    return lambda f: _write(raws, f, fmt)


_MEMO_OPCODES = ("PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET")


def _scan(reader, size: int, count: int = 1) -> None:
    """Walk the opcodes of ``count`` consecutive pickles without building anything: Python's unpickler allocates a
    declared length before reading it, and grows its memo to any index a file names, so lengths beyond the file's
    end and memo indices beyond its size are refused here, before they can become allocations."""
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


def _dtypes(data, fmt):
    """Apply the file's dtype conventions: xfreeze's own ``xfreeze@@dtypes`` entry, else the format's (Paddle:
    uint16 is bfloat16), turning bf16 / fp8 bit patterns into native values."""
    if not isinstance(data, dict):
        return data
    entry = data.get(DTYPE_ENTRY)
    declared = entry if isinstance(entry, dict) else {}
    out = {}
    for key, value in data.items():
        value = untuple(value)
        if isinstance(value, np.ndarray):
            dtype = declared.get(key) or (fmt.uint16_is if value.dtype == np.uint16 else None)
            if dtype in _tensors.BIT_CARRIERS:
                carrier = _tensors.BIT_CARRIERS[dtype]
                value = native(
                    _tensors.Raw(np.require(value, requirements="C").view(carrier), dtype), fmt.framework, key
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


def _write(raws: dict, f, fmt) -> None:
    out, declared = {}, {}
    for key, raw in raws.items():
        out[key] = raw.bits
        if (
            raw.dtype in _tensors.BIT_CARRIERS
            and raw.dtype != fmt.uint16_is
            or raw.bits.dtype == np.uint16
            and raw.dtype != fmt.uint16_is
        ):
            declared[key] = raw.dtype  # bits alone would read back as another dtype
    if declared:
        out[DTYPE_ENTRY] = declared
    pickle.dump(out, f, protocol=4)  # what paddle.load reads

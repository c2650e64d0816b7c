"""Native tensors, framework-free: dtype names, shapes and bit-exact moves between frameworks.

Values flowing through xfreeze are the framework's own tensors (torch / Paddle) or numpy arrays, never converted
through numpy on the way. Each adapter keeps a dtype table (``DTYPES``: neutral name -> framework dtype, probed for
bf16 / fp8 support) and moves tensors through a :class:`Raw` bit pattern, the way safetensors keeps byte views:
bfloat16 travels as its uint16 bits, float8 as its 8-bit pattern, so a bf16 tensor converted from torch to Paddle
and back is the same bits. numpy is used only where the user hands numpy.

Neutral dtype names: float64, float32, float16, bfloat16, float8_e4m3fn, float8_e5m2, int64, int32, int16, int8,
uint8, bool, complex64, complex128.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dispatch import adapter_named, tensor_backend
from .errors import XFreezeError

# dtypes numpy cannot hold, and the unsigned integer type of the same width that carries their bits
BIT_CARRIERS = {
    "bfloat16": np.uint16,
    "float8_e4m3fn": np.uint8,
    "float8_e5m2": np.uint8,
    "float8_e4m3fnuz": np.uint8,
    "float8_e5m2fnuz": np.uint8,
}
FLOAT_DTYPES = (
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
)
# every neutral dtype name; an adapter's DTYPES maps those its framework build has
DTYPE_NAMES = (*FLOAT_DTYPES, "int64", "int32", "int16", "int8", "uint8", "bool", "complex64", "complex128")


@dataclass(frozen=True)
class Raw:
    """A tensor's exact contents outside any framework: ``bits`` is a C-contiguous numpy array of ``shape`` whose
    dtype is the real one, or, for dtypes numpy lacks, the same-width unsigned carrier (``BIT_CARRIERS``)."""

    bits: np.ndarray
    dtype: str

    @property
    def shape(self) -> tuple:
        return tuple(self.bits.shape)


def is_tensor(value) -> bool:
    return isinstance(value, np.ndarray) or tensor_backend(value) is not None


def backend_of(value) -> str | None:
    """``"torch"``, ``"paddle"`` or None (numpy arrays)."""
    return tensor_backend(value)


def dtype_name(value) -> str:
    if isinstance(value, np.ndarray):
        return "bool" if value.dtype == np.bool_ else str(value.dtype)
    return _adapter_of(value).tensor_dtype(value)


def shape_of(value) -> tuple:
    return tuple(int(n) for n in value.shape)


def numel(value) -> int:
    out = 1
    for n in shape_of(value):
        out *= n
    return out


def to_raw(value, key: str = "") -> Raw:
    """The exact bits of ``value`` (a tensor of any framework, or a numpy array)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            raise XFreezeError(f"value of {key!r} is a numpy array of dtype {value.dtype}, not numbers")
        return Raw(np.require(value, requirements="C"), dtype_name(value))
    if tensor_backend(value) is None:
        raise XFreezeError(f"value of {key!r} is a {type(value).__name__}, not a tensor or numpy array")
    return _adapter_of(value).to_raw(value)


def to_backend(value, backend: str | None, key: str = ""):
    """``value`` as a tensor of framework ``backend`` (None: a numpy array), bit for bit, dtype kept."""
    source = tensor_backend(value)
    if source == backend:
        return value
    raw = to_raw(value, key)
    if backend is None:
        return to_numpy(value, key)
    adapter = adapter_named(backend)
    if raw.dtype not in adapter.DTYPES:
        raise XFreezeError(
            f"tensor {key!r} has dtype {raw.dtype}, which {backend} cannot hold "
            f"(its dtypes: {', '.join(adapter.DTYPES)}); cast it first"
        )
    return adapter.from_raw(raw)


def to_numpy(value, key: str = "") -> np.ndarray:
    """A numpy array of ``value``; an error naming the tensor for dtypes numpy cannot hold (bf16, fp8)."""
    raw = to_raw(value, key)
    if raw.dtype in BIT_CARRIERS:
        raise XFreezeError(
            f"tensor {key!r} is {raw.dtype}, which numpy cannot hold; keep it as a torch or Paddle "
            "tensor, or save it in a format that keeps it (.safetensors, .pt, .pdparams)"
        )
    return raw.bits


def same_bits(a, b) -> bool:
    """True when two values (any frameworks) have the same dtype, shape and bits."""
    ra, rb = to_raw(a), to_raw(b)
    return (
        ra.dtype == rb.dtype
        and ra.shape == rb.shape
        and np.array_equal(ra.bits.view(_carrier(ra.bits)), rb.bits.view(_carrier(rb.bits)))
    )


def _carrier(bits: np.ndarray):
    return (
        {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64, 16: np.complex128}[bits.dtype.itemsize]
        if bits.dtype.kind != "b"
        else np.bool_
    )


def transpose(value):
    """A 2-D value transposed (contiguous), in its own framework."""
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value.T)
    return _adapter_of(value).transpose(value)


def row_nonzero(value, index: int) -> bool:
    if isinstance(value, np.ndarray):
        return bool(np.any(value[index] != 0))
    return _adapter_of(value).row_nonzero(value, index)


def zero_row(value, index: int):
    """A copy of ``value`` with row ``index`` set to zero."""
    if isinstance(value, np.ndarray):
        out = value.copy()
        out[index] = 0
        return out
    return _adapter_of(value).zero_row(value, index)


def _adapter_of(value):
    name = tensor_backend(value)
    if name is None:
        raise XFreezeError(f"{type(value).__name__} is not a tensor of a supported framework or a numpy array")
    return adapter_named(name)

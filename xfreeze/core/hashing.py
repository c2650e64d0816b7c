"""Hashes of tensor bits: sha256 over (dtype, shape, little-endian bytes), in one place for the frozen fingerprint of
delta files (the text of :func:`digest` is part of that file format), a FeatureCache's staleness check and the audit.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .tensors import Raw

PER_THREAD = 16 << 20  # below this many bytes per thread a second thread costs more than it saves


def bits_digest(bits: np.ndarray, dtype: str | None = None, shape: tuple | None = None) -> str:
    """``sha256(dtype, shape, little-endian bits)`` of an array of bits (dtype and shape: the array's own, unless
    given: a :class:`Raw` names bf16 and fp8 dtypes numpy has not)."""
    out = hashlib.sha256(
        f"{bits.dtype if dtype is None else dtype}{list(bits.shape if shape is None else shape)}".encode()
    )
    little = bits.astype(bits.dtype.newbyteorder("<"), copy=False)
    out.update(np.ascontiguousarray(little).reshape(-1).view("u1").data if little.size else b"")
    return out.hexdigest()


def digest(raw: Raw) -> str:
    """:func:`bits_digest` of one tensor's :class:`Raw` (its neutral dtype name and shape)."""
    return bits_digest(raw.bits, raw.dtype, raw.shape)


def digests(raws: list) -> list[str]:
    """:func:`digest` of each, in order; large totals hash on up to 8 threads (hashlib releases the GIL on large
    buffers). The bits are taken by the caller, in its thread (framework calls)."""
    total = sum(r.bits.nbytes for r in raws)
    workers = min(8, os.cpu_count() or 1, max(1, total // PER_THREAD))
    if workers <= 1:
        return [digest(r) for r in raws]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(digest, raws))

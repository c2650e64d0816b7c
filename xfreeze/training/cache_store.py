"""Where a :class:`~xfreeze.FeatureCache` keeps its features: a numpy array in memory, or a memory-mapped ``.npy``
file on disk (chosen, or spilled to when the features would pass the memory limit).

Rows hold a feature tensor's exact bits (``xfreeze.core.tensors.Raw``): dtypes numpy lacks (bfloat16, float8) are
stored as the bits of the unsigned integer of the same width. A row counts as filled only once it is written, so an
error while filling (a full disk, an interrupt) never leaves a row that is read before it was written. A file is
allocated in full before the first row is written (``posix_fallocate``): a disk without room fails there, with an
``XFreezeError``, instead of a ``SIGBUS`` on a later write into the mapping.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..core.errors import XFreezeError

MEMORY_LIMIT = 4 << 30  # bytes of features held in memory before spilling to a temporary file


class FeatureStore:
    """``size`` rows of features, allocated when the first batch gives their shape.

    Args:
        size: number of samples (rows).
        storage: ``"memory"`` or a file path (a ``.npy`` memory map, overwritten).
        memory_limit: past this many bytes, ``"memory"`` spills to a temporary file in ``spill_dir``.
        spill_dir: where a spilled file goes (default: the system's temporary folder).
    """

    def __init__(self, size: int, storage, memory_limit: int = MEMORY_LIMIT, spill_dir=None):
        self.size, self.storage, self.memory_limit, self.spill_dir = size, storage, memory_limit, spill_dir
        self.filled = np.zeros(size, dtype=bool)
        self.rows: np.ndarray | None = None
        self.path: Path | None = None  # the file this store created (removed by close)

    @property
    def allocated(self) -> bool:
        return self.rows is not None

    @property
    def nbytes(self) -> int:
        return 0 if self.rows is None else int(self.rows.nbytes)

    def allocate(self, row_shape: tuple, carrier: np.dtype) -> None:
        """Create the rows: in memory, or as a fully allocated file. Raises ``XFreezeError`` (nothing kept) when
        the disk has no room."""
        needed = self.size * int(np.prod(row_shape, dtype=np.int64)) * np.dtype(carrier).itemsize
        if self.storage == "memory" and needed <= self.memory_limit:
            self.rows = np.empty((self.size, *row_shape), dtype=carrier)
            return
        path = self._file_for(needed)
        self.rows = _mapped(path, (self.size, *row_shape), np.dtype(carrier), needed)
        self.path = path

    def _file_for(self, needed: int) -> Path:
        if self.storage != "memory":
            return Path(self.storage)
        warnings.warn(
            f"FeatureCache: {needed / 2**30:.2f} GiB of features pass memory_limit={self.memory_limit} bytes; they "
            "go to a memory-mapped temporary file.\nHINT: pass storage=<path> to choose where (a fast local disk)",
            UserWarning,
            stacklevel=5,
        )
        fd, name = tempfile.mkstemp(prefix="xfreeze-features-", suffix=".npy", dir=self.spill_dir)
        os.close(fd)
        return Path(name)

    def write(self, indices: np.ndarray, bits: np.ndarray) -> None:
        """Store rows, then mark them filled."""
        assert self.rows is not None
        self.rows[indices] = bits
        self.filled[indices] = True

    def read(self, indices: np.ndarray) -> np.ndarray:
        assert self.rows is not None
        return np.asarray(self.rows[indices])

    def close(self) -> None:
        """Drop the rows (and the file this store created)."""
        rows, self.rows = self.rows, None
        self.filled[:] = False
        if isinstance(rows, np.memmap):
            rows._mmap.close()  # type: ignore[attr-defined]
        del rows
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


def _mapped(path: Path, shape: tuple, dtype: np.dtype, needed: int) -> np.ndarray:
    """A ``.npy`` memory map of ``shape``, its blocks allocated on disk before any row is written."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise XFreezeError(f"FeatureCache storage={str(path)!r}: the folder {str(parent)!r} does not exist")
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise _no_room(path, needed, free)
    try:
        rows = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        header = rows.offset
        with open(path, "r+b") as f:
            allocate(f.fileno(), 0, header + needed)
        return rows
    except OSError as exc:
        path.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise _no_room(path, needed, shutil.disk_usage(parent).free) from None
        raise XFreezeError(f"FeatureCache storage={str(path)!r}: cannot create the feature file: {exc}") from None


def allocate(fd: int, offset: int, length: int) -> None:
    """Reserve the file's blocks (a full disk fails here, not in a later write into the mapping)."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, offset, length)
            return
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
    os.ftruncate(fd, offset + length)  # no fallocate on this platform or file system: sparse, as numpy makes it


def _no_room(path: Path, needed: int, free: int) -> XFreezeError:
    return XFreezeError(
        f"FeatureCache storage={str(path)!r}: the features need {needed / 2**20:.1f} MiB and the disk has "
        f"{free / 2**20:.1f} MiB free; nothing was cached and nothing trained on these features.\nHINT: free room, "
        "pass another storage path, or a smaller dtype (dtype='bfloat16' halves float32 features)"
    )

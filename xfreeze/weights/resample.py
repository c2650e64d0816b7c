"""Shape adaptation kernels in plain numpy, so that torch and Paddle models get bit-identical adapted weights.

* :func:`resize` is a separable, antialiased resize with explicit weights per output pixel, the way PIL and torch's
  ``F.interpolate(..., antialias=True, align_corners=False)`` compute it (``_upsample_bicubic2d_aa``: bicubic with
  ``a = -0.5``, the filter stretched by the scale when shrinking, each row of weights normalised to sum to 1).
  It runs in float64, so it differs from torch's float32 kernel only by float32 rounding (see docs/weights.md).
* :func:`resample_grid` is timm's ``resample_abs_pos_embed`` / ``resample_abs_pos_embed_nhwc``: prefix tokens kept
  as they are, the grid resized bicubically with antialiasing.
* :func:`adapt_input_channels` is timm's ``adapt_input_conv``; :func:`grow_rows` appends rows holding the mean of
  the old ones (transformers' ``resize_token_embeddings(mean_resizing=True)``, without its random perturbation).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# kernel -> (filter, half support at scale 1): torch's aa_filter for bicubic (a = -0.5, as PIL) and bilinear
A = -0.5


def _cubic(x: float) -> float:
    x = abs(x)
    if x < 1.0:
        return ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    if x < 2.0:
        return ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    return 0.0


def _triangle(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


KERNELS = {"bicubic": (_cubic, 2.0), "linear": (_triangle, 1.0)}


@lru_cache(maxsize=64)
def weights(n_in: int, n_out: int, kernel: str = "bicubic") -> np.ndarray:
    """The ``[n_out, n_in]`` float64 matrix of an antialiased resize along one axis (rows sum to 1).

    Example:
        >>> weights(4, 2, "linear").sum(axis=1).tolist()
        [1.0, 1.0]
    """
    filt, half = KERNELS[kernel]
    scale = n_in / n_out
    support = half * scale if scale >= 1.0 else half
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    out = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        low = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as the C++ cast does
        high = min(int(center + support + 0.5), n_in)
        row = np.array([filt((j + low - center + 0.5) * invscale) for j in range(high - low)], dtype=np.float64)
        total = row.sum()
        out[i, low:high] = row / total if total != 0.0 else row
    out.setflags(write=False)
    return out


def resize(array: np.ndarray, axes: tuple, sizes: tuple, kernel: str = "bicubic") -> np.ndarray:
    """``array`` resized along ``axes`` to ``sizes`` (float64), one axis after the other.

    Example:
        >>> resize(np.arange(4.0).reshape(1, 4), (1,), (8,), "linear").shape
        (1, 8)
    """
    out = np.asarray(array, dtype=np.float64)
    for axis, size in zip(axes, sizes):
        if out.shape[axis] == size:
            continue
        moved = np.moveaxis(out, axis, -1)
        out = np.moveaxis(moved @ weights(moved.shape[-1], int(size), kernel).T, -1, axis)
    return np.ascontiguousarray(out)


def resample_grid(array: np.ndarray, prefix: int, old: tuple, new: tuple) -> np.ndarray:
    """A position table ``[1, prefix + H*W, D]`` (or ``[1, H, W, D]`` with ``prefix=0``) resized from grid ``old``
    to grid ``new``: prefix tokens kept, the grid bicubic with antialiasing, float64.

    Example:
        >>> resample_grid(np.zeros((1, 1 + 4, 3)), 1, (2, 2), (3, 3)).shape
        (1, 10, 3)
    """
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 4:
        return resize(array, (1, 2), new)
    dim = array.shape[-1]
    head, grid = array[:, :prefix], array[:, prefix:].reshape(1, old[0], old[1], dim)
    grid = resize(grid, (1, 2), new).reshape(1, new[0] * new[1], dim)
    return np.concatenate([head, grid], axis=1)


def resample_sequence(array: np.ndarray, prefix: int, rows: int) -> np.ndarray:
    """A 1-D position table ``[prefix + n, D]`` given ``rows`` rows: the first ``prefix`` rows (padding positions)
    kept; a longer table stretches the rest linearly (antialiased), a shorter one keeps its first rows.

    Example:
        >>> resample_sequence(np.arange(4.0).reshape(4, 1), 0, 2).ravel().tolist()
        [0.0, 1.0]
    """
    array = np.asarray(array, dtype=np.float64)
    if rows <= array.shape[0]:
        return array[:rows].copy()
    body = resize(array[prefix:], (0,), (rows - prefix,), "linear")
    return np.concatenate([array[:prefix], body], axis=0)


def adapt_input_channels(weight: np.ndarray, channels: int) -> np.ndarray:
    """timm's ``adapt_input_conv``: a conv weight ``[out, in, ...]`` for ``channels`` inputs. One channel: the sum
    over the source's inputs; more: the inputs repeated to ``channels`` and scaled by ``in / channels``. Computed in
    the weight's dtype (float32 for float16, as timm does).

    Example:
        >>> adapt_input_channels(np.ones((2, 3, 1, 1), np.float32), 1).ravel().tolist()
        [3.0, 3.0]
    """
    wide = np.float64 if weight.dtype == np.float64 else np.float32
    weight = np.asarray(weight, dtype=wide)
    have = weight.shape[1]
    if channels == 1:
        return weight.sum(axis=1, keepdims=True, dtype=wide)
    repeat = int(math.ceil(channels / have))
    out = np.concatenate([weight] * repeat, axis=1)[:, :channels]
    return np.ascontiguousarray(out * wide(have / float(channels)))


def grow_rows(array: np.ndarray, axis: int, rows: int) -> np.ndarray:
    """``array`` with ``rows`` entries along ``axis``: the old ones, then new ones equal to their mean (float64).

    Example:
        >>> grow_rows(np.array([[1.0], [3.0]]), 0, 3).ravel().tolist()
        [1.0, 3.0, 2.0]
    """
    array = np.asarray(array, dtype=np.float64)
    mean = array.mean(axis=axis, keepdims=True)
    extra = list(array.shape)
    extra[axis] = rows - array.shape[axis]
    return np.concatenate([array, np.broadcast_to(mean, extra)], axis=axis)

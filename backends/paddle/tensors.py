"""Paddle tensors: the dtype table, exact bits, state dicts and EMA kernels. Paddle's own ``.pdparams`` files are
a pickle the core reads and writes itself (``formats.py``: ``reader="pickle"``), so no ``load_file`` here."""

from __future__ import annotations

from typing import Any

import numpy as np

import paddle
from paddle import _C_ops

from ..contract import Adapter, Module, Raw, Tensor
from ...core.errors import XFreezeError
from ...core.tensors import DTYPE_NAMES

# neutral dtype name -> Paddle dtype, for the dtypes this Paddle build has (fp8 since 2.6)
DTYPES = {name: getattr(paddle, name) for name in DTYPE_NAMES if hasattr(paddle, name)}
_NAMES = {str(dtype): name for name, dtype in DTYPES.items()}
# Tensor.numpy() gives bf16 as its uint16 bits and fp8 as its int8 bits; the carriers xfreeze uses are unsigned
_BIT_CARRIERS = {"bfloat16": np.uint16, "float8_e4m3fn": np.uint8, "float8_e5m2": np.uint8}
_lerp_ = _C_ops.lerp_  # type: ignore[attr-defined]  # Paddle's type stubs omit its in-place ops


class PaddleTensors(Adapter):
    """Native Paddle tensors, state dicts and EMA updates."""

    DTYPES = DTYPES

    def tensor_dtype(self, tensor: Tensor) -> str:
        try:
            return _NAMES[str(tensor.dtype)]
        except KeyError:
            raise XFreezeError(
                f"Paddle dtype {tensor.dtype} is not supported by xfreeze (supported: {', '.join(DTYPES)})"
            ) from None

    def to_raw(self, tensor: Tensor) -> Raw:
        name = self.tensor_dtype(tensor)
        bits = np.require(tensor.detach().cpu().numpy(), requirements="C")  # ascontiguousarray makes 0-d 1-d
        if name in _BIT_CARRIERS:
            bits = bits.view(_BIT_CARRIERS[name])
        return Raw(bits, name)

    def from_raw(self, raw: Raw) -> Tensor:
        if raw.dtype in _BIT_CARRIERS:  # a uint16 array becomes bfloat16 by itself; view keeps the bits either way
            carrier = paddle.to_tensor(raw.bits.view(np.int8) if raw.bits.itemsize == 1 else raw.bits)
            return paddle.view(carrier, DTYPES[raw.dtype])
        return paddle.to_tensor(raw.bits)

    def cast(self, tensor: Tensor, dtype: str) -> Tensor:
        return tensor.astype(DTYPES[dtype])

    def transpose(self, tensor: Tensor) -> Tensor:
        return paddle.transpose(tensor, [1, 0]).contiguous()

    def element_size(self, tensor: Tensor) -> int:
        return tensor.element_size()

    def clone(self, tensor: Tensor) -> Tensor:
        return tensor.detach().clone()

    def same_layout(self, value: Tensor, param: Tensor) -> bool:
        return value.dtype == param.dtype and str(value.place) == str(param.place)

    def like(self, value: Tensor, param: Tensor) -> Tensor:
        if value.dtype != param.dtype:  # the model was cast (Layer.to(dtype=...), .astype) after the EMA was built
            value = value.astype(param.dtype)
        if str(value.place) != str(param.place):
            value = value._copy_to(param.place, True)
        return value

    def as_native(self, value: Tensor, like: Tensor) -> Tensor:
        return value.astype(like.dtype) if value.dtype != like.dtype else value

    # --- state dicts -------------------------------------------------------------------------------------------
    def state_tensors(self, model: Module) -> dict[str, Tensor]:
        return dict(self.unwrap(model)[0].state_dict())

    def load_tensors(self, targets: list[Tensor], values: list[Tensor]) -> None:
        with paddle.no_grad():
            for target, value in zip(targets, values):
                target.set_value(value)

    # --- EMA ---------------------------------------------------------------------------------------------------
    def ema_update(self, averages: list[Tensor], values: list[Tensor], weight: float) -> None:
        # Paddle has no foreach kernels: one in-place lerp per tensor (e exactly e when m == e), on flat views.
        # Paddle's CPU kernels run on one core (torch's lerp on all): splitting an update over threads of our own
        # measured 33 -> 21 ms on ResNet-50, but a library's hidden thread pool oversubscribes the cores of
        # multi-process training, so it runs on the caller's thread
        weights: dict = {}
        _lerp_all(
            [
                (average, value, _weight(weights, weight, _lerp_dtype(average), average.place))
                for average, value in zip(averages, values)
            ]
        )

    def copy_into(self, targets: list[Tensor], sources: list[Tensor]) -> None:
        with paddle.no_grad():  # paddle.assign(source, output=target) without its per-call type checks
            for target, source in zip(targets, sources):
                _C_ops.assign_out_(source, target)

    # --- cached frozen prefix (FeatureCache) -------------------------------------------------------------------
    def no_grad(self) -> Any:
        return paddle.no_grad()

    def change_tokens(self, tensors: list[Tensor]) -> list:
        # in-place ops bump the inplace version; set_value / set_state_dict write the same memory and bump nothing:
        # the full check per pass catches those
        return [(t._inplace_version(), t.data_ptr()) for t in tensors]

    def unreadable(self, tensor: Tensor) -> str | None:
        if tensor.is_sparse():
            return f"a sparse tensor ({'COO' if tensor.is_sparse_coo() else 'CSR'})"
        return None if tensor._is_initialized() else "a tensor with no data (not initialized)"


def _flat(target: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
    """Both tensors as 1-D when the target's 1-D reshape is a view of it (in-place ops write through); the pair as
    it is otherwise: 0-D and 1-D tensors, auto-parallel (sharded) and strided ones (a 0-D reshape is a copy)."""
    if target.ndim > 1 and not target.is_dist() and target.is_contiguous():
        flat = _C_ops.reshape(target, [-1])
        if flat.data_ptr() == target.data_ptr():
            return flat, _C_ops.reshape(source, [-1])
    return target, source


def _weight(cache: dict, weight: float, dtype: Any, place: Any) -> Tensor:
    """The lerp weight as a 0-D tensor of that dtype and place, made once per update (kept in ``cache``)."""
    key = (dtype, str(place))
    if key not in cache:
        cache[key] = paddle.to_tensor(weight, dtype=dtype, place=place)  # 0-D: a 0-D average stays 0-D
    return cache[key]


def _lerp_dtype(average: Tensor) -> Any:
    """The dtype an average lerps in: its own where Paddle has a lerp kernel for it (float32/64), else float32."""
    return average.dtype if average.dtype in (paddle.float32, paddle.float64) else paddle.float32


def _lerp_all(jobs: list) -> None:
    """Lerp each ``(average, value, weight)`` in place. Paddle's CPU lerp broadcasts the weight with Eigen at the
    tensor's rank (4-D ~7x slower than 1-D): pairs lerp as flat views. ``_C_ops`` skips ``Tensor.lerp_``'s per-call
    checks and weight tensor (ResNet-50 on one core: 106 -> 33 ms)."""
    with paddle.no_grad():  # per thread in Paddle: a worker thread starts with gradients on
        for average, value, weight in jobs:
            if average.dtype == weight.dtype:
                _lerp_(*_flat(average, value), weight)
            else:  # Paddle 3.3's CPU lerp has float32/64 kernels only: lerp in float32, round once (as torch does)
                wide = average.astype("float32")
                _lerp_(*_flat(wide, value.astype("float32")), weight)
                _C_ops.assign_out_(wide.astype(average.dtype), average)

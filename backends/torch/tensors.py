"""torch tensors: the dtype table, exact bits, state dicts, EMA kernels and ``torch.save`` files."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

import torch

from ..contract import Adapter, Module, Raw, Tensor
from .model import peft_state
from ...core.errors import XFreezeError
from ...core.tensors import DTYPE_NAMES

# neutral dtype name -> torch dtype, for the dtypes this torch build has (fp8 since 2.1)
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES if hasattr(torch, name)}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# dtypes numpy lacks travel as the bits of a same-width integer (view, not cast)
_BIT_VIEWS = {
    "bfloat16": (torch.int16, np.uint16),
    "float8_e4m3fn": (torch.uint8, np.uint8),
    "float8_e5m2": (torch.uint8, np.uint8),
    "float8_e4m3fnuz": (torch.uint8, np.uint8),
    "float8_e5m2fnuz": (torch.uint8, np.uint8),
}


class TorchTensors(Adapter):
    """Native torch tensors (DTensor shards included), state dicts, EMA kernels and torch's own files."""

    DTYPES = DTYPES

    def tensor_dtype(self, tensor: Tensor) -> str:
        try:
            return _NAMES[tensor.dtype]
        except KeyError:
            raise XFreezeError(
                f"torch dtype {tensor.dtype} is not supported by xfreeze (supported: {', '.join(DTYPES)})"
            ) from None

    def to_raw(self, tensor: Tensor) -> Raw:
        name = self.tensor_dtype(tensor)
        t = whole(tensor).detach().cpu().contiguous()
        if name in _BIT_VIEWS:
            carrier, np_carrier = _BIT_VIEWS[name]
            return Raw(t.view(carrier).numpy().view(np_carrier), name)
        return Raw(t.numpy(), name)

    def from_raw(self, raw: Raw) -> Tensor:
        bits = np.require(raw.bits, requirements=["C", "W"])  # from_numpy shares memory and wants it writeable
        if raw.dtype in _BIT_VIEWS:
            carrier, _ = _BIT_VIEWS[raw.dtype]
            return torch.from_numpy(bits.view(np.int16 if carrier is torch.int16 else np.uint8)).view(DTYPES[raw.dtype])
        return torch.from_numpy(bits)

    def cast(self, tensor: Tensor, dtype: str) -> Tensor:
        return tensor.to(DTYPES[dtype])

    def transpose(self, tensor: Tensor) -> Tensor:
        return tensor.t().contiguous()

    def numel(self, tensor: Tensor) -> int:
        return tensor.numel()

    def element_size(self, tensor: Tensor) -> int:
        return tensor.element_size()

    def clone(self, tensor: Tensor) -> Tensor:
        return tensor.detach().clone()

    def same_layout(self, value: Tensor, param: Tensor) -> bool:
        return value.dtype == param.dtype and value.device == param.device

    def like(self, value: Tensor, param: Tensor) -> Tensor:
        sharded, is_sharded = hasattr(param, "device_mesh"), hasattr(value, "device_mesh")
        if sharded and not is_sharded:  # FSDP2 swapped the parameter for a DTensor after the EMA was built
            from torch.distributed.tensor import distribute_tensor

            return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
        if is_sharded and not sharded:
            return value.full_tensor()
        if not sharded and not self.same_layout(value, param):  # the model was moved or cast (Lightning, .to())
            return value.to(device=param.device, dtype=param.dtype)
        return value

    def as_native(self, value: Tensor, like: Tensor) -> Tensor:
        return value.to(device=like.device, dtype=like.dtype)

    # --- state dicts and files ---------------------------------------------------------------------------------
    def state_tensors(self, model: Module) -> dict[str, Tensor]:
        inner = self.unwrap(model)[0]
        return peft_state(inner, dict(inner.state_dict(keep_vars=True)))  # PEFT layers under the view's names

    def load_file(self, path: Any) -> dict[str, Tensor]:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # weights_only refuses globals: the file asks to run code
            raise XFreezeError(
                f"checkpoint {str(path)!r}: refused to load it: it asks to run code and torch.load "
                f"ran with weights_only=True ({str(exc).splitlines()[0]})"
            ) from None

    def save_file(self, tensors: dict[str, Tensor], f: Any) -> None:
        # native tensors, dtype kept; a view is saved alone, not with the whole storage it looks into
        torch.save({k: whole(v).detach().cpu().contiguous().clone() for k, v in tensors.items()}, f)

    # --- EMA: fused foreach kernels (timm ModelEmaV3) ----------------------------------------------------------
    def ema_update(self, averages: list[Tensor], values: list[Tensor], weight: float) -> None:
        with torch.no_grad():  # one fused lerp: e + w * (m - e), exactly e when m == e
            for group_a, group_v in _foreach_groups(averages, values):
                torch._foreach_lerp_(group_a, group_v, weight)

    def copy_into(self, targets: list[Tensor], sources: list[Tensor]) -> None:
        with torch.no_grad():
            for group_t, group_s in _foreach_groups(targets, sources):
                if hasattr(group_t[0], "device_mesh"):  # DTensor has no sharding rule for _foreach_copy_
                    for target, source in zip(group_t, group_s):
                        target.copy_(source)
                else:
                    torch._foreach_copy_(group_t, group_s)

    # --- cached frozen prefix (FeatureCache) -------------------------------------------------------------------
    def no_grad(self) -> Any:
        return torch.no_grad()

    def change_tokens(self, tensors: list[Tensor]) -> list:
        # ``_version`` counts in-place writes (copy_, load_state_dict, optimizer steps); the data pointer changes
        # with ``.data =`` and ``module.to(...)``. ``p.data.copy_`` bypasses both: the full check per pass catches it
        return [(t._version, t.data_ptr()) for t in tensors]

    def unreadable(self, tensor: Tensor) -> str | None:
        if tensor.layout != torch.strided:
            return f"a sparse tensor ({tensor.layout})"
        return "a meta tensor (no data)" if tensor.is_meta else None


def whole(tensor: Tensor) -> Tensor:
    """The logical (whole) value of a DTensor (FSDP2: a collective, so every rank calls it), else the tensor."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def local(tensor: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _foreach_groups(first: list, second: list) -> list:
    """The pairs split into plain tensors and DTensors (FSDP2 parameters beside plain BatchNorm buffers): a foreach
    kernel takes one kind at a time."""
    plain = [(a, b) for a, b in zip(first, second) if not hasattr(a, "device_mesh")]
    sharded = [(a, b) for a, b in zip(first, second) if hasattr(a, "device_mesh")]
    return [tuple(map(list, zip(*pairs))) for pairs in (plain, sharded) if pairs]

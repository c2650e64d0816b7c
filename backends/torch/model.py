"""torch model structure, trainability and heads: trainability is ``requires_grad``; BatchNorm statistics are
buffers."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..contract import Adapter, Module, Registries, Tensor

_NORMS = tuple(
    c
    for c in (
        nn.modules.batchnorm._NormBase,
        nn.GroupNorm,
        nn.LayerNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if c is not None
)
STATS = ("running_mean", "running_var")
_INITS: dict[str, Any] = {
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, a=math.sqrt(5)),
    "normal": lambda w: nn.init.normal_(w, std=0.01),
    "zeros": nn.init.zeros_,
}


class TorchModel(Adapter):
    """Structure (the model walk), trainability, heads and named models of torch."""

    KINDS = (
        ("norm", _NORMS),
        ("conv", (nn.modules.conv._ConvNd,)),
        ("linear", (nn.Linear,)),
        ("embedding", (nn.Embedding, nn.EmbeddingBag)),
    )
    # Wrappers seen through, by class name -> the attribute holding the wrapped module. Their own path segment
    # ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.") never reaches a name.
    WRAPPERS = {
        "DataParallel": "module",
        "DistributedDataParallel": "module",
        "OptimizedModule": "_orig_mod",  # torch.compile
        "FullyShardedDataParallel": "_fsdp_wrapped_module",  # FSDP1, at the root and around inner units
        "CheckpointWrapper": "_checkpoint_wrapped_module",  # activation checkpointing
        "OffloadWrapper": "_checkpoint_wrapped_module",
    }

    # --- structure ---------------------------------------------------------------------------------------------
    def registries(self, module: Module) -> Registries:
        buffers = module._buffers
        return Registries(module._parameters, buffers, module._modules, buffers, module._forward_pre_hooks)

    def tensor_dicts(self, module: Module) -> tuple[dict, dict]:
        return module._parameters, module._buffers

    def children(self, module: Module) -> list[tuple[str, Module]]:
        return [(name, child) for name, child in module._modules.items() if child is not None]  # hot: the walk

    def unwrap(self, model: Module) -> tuple[Module, list[str]]:
        inner, wrappers = super().unwrap(model)
        if any(cls.__name__ == "FSDPModule" for cls in type(inner).__mro__):  # FSDP2: the module itself, sharded
            wrappers.append("fully_shard")
        return inner, wrappers

    def module_tensors(self, module: Module) -> tuple[list[tuple[str, Tensor]], list[tuple[str, str, Tensor]]]:
        registered, buffers = module._parameters, module._buffers  # hot: once per module on the first call
        params = [(local, p) for local, p in registered.items() if p is not None] if registered else []
        if not buffers:
            return params, []
        return params, [(local, local, buffers[local]) for local in STATS if buffers.get(local) is not None]

    def state_keys(self, view: Any) -> list[str]:
        return [
            f"{path}.{local}" if path else local
            for path, m in zip(view.paths, view.modules)
            for local, b in m._buffers.items()
            if b is not None and local not in STATS and local not in m._non_persistent_buffers_set
        ]

    def padding_idx(self, module: Module) -> int | None:
        return module.padding_idx if isinstance(module, nn.Embedding) else None

    # --- trainability ------------------------------------------------------------------------------------------
    def trainable_flags(self, params: list[Tensor]) -> list[bool]:
        return [p.requires_grad for p in params]

    def is_trainable(self, param: Tensor) -> bool:
        return param.requires_grad

    def set_trainable(self, param: Tensor, trainable: bool) -> None:
        param.requires_grad_(trainable)

    def drop_grad(self, param: Tensor) -> None:
        param.grad = None  # a zeroed grad still feeds momentum and weight decay in torch optimizers

    # --- heads -------------------------------------------------------------------------------------------------
    def linear_features(self, module: Module) -> tuple[int, int, bool]:
        return module.in_features, module.out_features, module.bias is not None

    def new_linear(self, like: Module, out_features: int, init: str) -> Module:
        w = like.weight
        layer = nn.Linear(like.in_features, out_features, bias=like.bias is not None, device=w.device, dtype=w.dtype)
        return _initialized(layer, init)

    def conv_head_features(self, module: Module) -> tuple[int, int] | None:
        ok = isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and module.groups == 1
        return (module.in_channels, module.out_channels) if ok else None

    def new_conv_head(self, like: Module, out_channels: int, init: str) -> Module:
        w = like.weight
        layer = nn.Conv2d(like.in_channels, out_channels, 1, bias=like.bias is not None, device=w.device, dtype=w.dtype)
        return _initialized(layer, init)

    # --- named models (the command line) -----------------------------------------------------------------------
    model_zoo = "a torchvision name (or a timm name, when timm is installed)"

    def model_names(self) -> list[str]:
        import importlib.util
        import torchvision

        names = list(torchvision.models.list_models())
        if importlib.util.find_spec("timm"):
            import timm

            names += timm.list_models()
        return names

    def build_named_model(self, name: str) -> Module | None:
        """A torchvision model (random weights), else a timm model when timm is installed; None if unknown."""
        import torchvision

        if name in torchvision.models.list_models():
            return torchvision.models.get_model(name, weights=None)
        try:
            import timm
        except ImportError:
            return None
        return timm.create_model(name, pretrained=False) if name in timm.list_models() else None


def _initialized(layer: Module, init: str) -> Module:
    if init != "default":
        with torch.no_grad():
            _INITS[init](layer.weight)
            if layer.bias is not None:
                layer.bias.zero_()
    return layer

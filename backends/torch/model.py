"""torch model structure, trainability and heads: trainability is ``requires_grad``; BatchNorm statistics are
buffers."""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch import nn

from ..contract import Adapter, Module, Registries, Tensor, record, tensors_of

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
_PEFT_TASKS = (
    *("", "ForCausalLM", "ForSeq2SeqLM", "ForSequenceClassification", "ForTokenClassification"),
    *("ForQuestionAnswering", "ForFeatureExtraction"),
)
_PEFT_TUNERS = ("LoraModel", "AdaLoraModel", "LoHaModel", "LoKrModel", "IA3Model", "MixedModel")
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
        # PEFT (issue 19): PeftModel(ForCausalLM, ...) -> its tuner (LoraModel, ...) -> the base model; the LoRA layers
        # inside are seen through by `_peft_role` below (their names are the base model's, adapters as leaves)
        **{f"PeftModel{task}": "base_model" for task in _PEFT_TASKS},
        "PeftMixedModel": "base_model",
        **{tuner: "model" for tuner in _PEFT_TUNERS},
    }

    # --- structure ---------------------------------------------------------------------------------------------
    def registries(self, module: Module) -> Registries:
        if "peft" in sys.modules and _peft_role(type(module)):  # hot: no PEFT layer without peft
            params, buffers = self.tensor_dicts(module)
            return Registries(params, buffers, dict(self.children(module)), buffers, module._forward_pre_hooks)
        buffers = module._buffers
        return Registries(module._parameters, buffers, module._modules, buffers, module._forward_pre_hooks)

    def tensor_dicts(self, module: Module) -> tuple[dict, dict]:
        if "peft" in sys.modules and _peft_role(type(module)):  # hot: no PEFT layer without peft
            params, buffers = _peft_tensors(module)
            return {local: t for local, t, _ in params}, {local: t for local, t, _ in buffers}
        return module._parameters, module._buffers

    def children(self, module: Module) -> list[tuple[str, Module]]:
        if "peft" in sys.modules and _peft_role(type(module)):  # hot: no PEFT layer without peft
            module = _peft_base(module)[1]
        return [(name, child) for name, child in module._modules.items() if child is not None]  # hot: the walk

    def unwrap(self, model: Module) -> tuple[Module, list[str]]:
        inner, wrappers = super().unwrap(model)
        if any(cls.__name__ == "FSDPModule" for cls in type(inner).__mro__):  # FSDP2: the module itself, sharded
            wrappers.append("fully_shard")
        return inner, wrappers

    def module_tensors(self, module: Module) -> tuple[list[tuple[str, Tensor]], list[tuple[str, str, Tensor]]]:
        return tensors_of(self, module)

    def walk_module(self, modules: list, params: list, stats: list, token: list, module: Module) -> Any:
        if "peft" in sys.modules and _peft_role(type(module)):  # hot: no PEFT layer without peft
            registered, buffers = self.tensor_dicts(module)
            statistics = [(s, s, buffers[s]) for s in STATS if buffers.get(s) is not None]
            tensors = [*registered.values(), *buffers.values()]
            record((modules, params, stats, token), module, list(registered.items()), statistics, tensors)
            return self.children(module)
        index = len(modules)  # the view build's inner loop: straight from the registries
        modules.append(module)
        token.append(id(module))
        registered, buffers = module._parameters, module._buffers
        if registered:
            own = [(index, local, p) for local, p in registered.items() if p is not None]
            params.extend(own)
            token.extend([id(p) for _, _, p in own])
        if buffers:
            token.extend([id(b) for b in buffers.values() if b is not None])
            stats.extend([(index, local, buffers[local], local) for local in STATS if buffers.get(local) is not None])
        return module._modules.items()

    def state_keys(self, view: Any) -> list[str]:
        return [
            f"{path}.{local}" if path else local
            for path, m in zip(view.paths, (_peft_base(m)[1] if _peft_role(type(m)) else m for m in view.modules))
            for local, b in m._buffers.items()
            if b is not None and local not in STATS and local not in m._non_persistent_buffers_set
        ]

    def padding_idx(self, module: Module) -> int | None:
        if "peft" in sys.modules and _peft_role(type(module)):  # hot: no PEFT layer without peft
            module = _peft_base(module)[1]
        return module.padding_idx if isinstance(module, nn.Embedding) else None

    def module_kind(self, module: Module) -> str | None:
        return super().module_kind(_peft_base(module)[1] if _peft_role(type(module)) else module)

    def class_names(self, module: Module) -> list[str]:
        names = super().class_names(module)
        return names + super().class_names(_peft_base(module)[1]) if _peft_role(type(module)) else names

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
        if "peft" in sys.modules and _peft_role(type(module)):  # hot: no PEFT layer without peft
            module = _peft_base(module)[1]
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


# --- PEFT layers, seen through (issue 19) -----------------------------------------------------------------------------
_peft_roles: dict = {}  # class -> "tuner" (a LoRA / IA3 / ... layer), "copy" (ModulesToSaveWrapper) or ""


def _peft_role(cls: type) -> str:
    role = _peft_roles.get(cls)  # hot: once per module in every walk
    if role is None:
        names = {f"{(k.__module__ or '').partition('.')[0]}:{k.__name__}" for k in cls.__mro__}
        role = "tuner" if "peft:BaseTunerLayer" in names else "copy" if "peft:ModulesToSaveWrapper" in names else ""
        _peft_roles[cls] = role
    return role


def _peft_base(module: Module) -> tuple[str, Module]:
    """(state-dict prefix, layer) of the layer a PEFT layer stands for: a LoRA layer's base layer, or the active
    adapter's copy of a ``modules_to_save`` module (the original when no adapter is active)."""
    if _peft_role(type(module)) == "tuner":
        return "base_layer.", module.base_layer
    copies = module.modules_to_save
    active = next((a for a in module.active_adapters if a in copies), None)
    return (f"modules_to_save.{active}.", copies[active]) if active else ("original_module.", module.original_module)


def _peft_tensors(module: Module) -> tuple[list, list]:
    """``[(name in the layer, tensor, state-dict key in the layer)]`` of its parameters and of its buffers: the base
    layer's under their own names, each adapter weight under its leaf: ``lora_A`` (``lora_A.<adapter>`` when the
    layer holds several adapters; a tensor other than ``weight`` keeps its name: ``lora_B.bias``)."""
    prefix, base = _peft_base(module)
    params = [(k, t, prefix + k) for k, t in base._parameters.items() if t is not None]
    buffers = [(k, t, prefix + k) for k, t in base._buffers.items() if t is not None]
    for leaf in getattr(module, "adapter_layer_names", ()) if _peft_role(type(module)) == "tuner" else ():
        holder = module._modules.get(leaf)
        if holder is None:
            continue
        entries = [*holder._parameters.items(), *holder._modules.items()]  # ParameterDict / ModuleDict
        several = len(entries) > 1
        for adapter, entry in entries:
            stem = f"{leaf}.{adapter}" if several else leaf
            if isinstance(entry, nn.Module):
                params += [
                    (stem if n == "weight" else f"{stem}.{n}", t, f"{leaf}.{adapter}.{n}")
                    for n, t in entry.named_parameters()
                ]
            elif entry is not None:
                params.append((stem, entry, f"{leaf}.{adapter}"))
    return params, buffers


def peft_state(inner: Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` (``inner``'s state dict) under the view's names: a PEFT layer's base tensors under the base
    model's names, its adapter weights as leaves (``q_proj.lora_A``), inactive copies left out."""
    if "peft" not in sys.modules:  # a model without PEFT layers: no walk
        return state
    rules = {}
    for path, module in inner.named_modules():
        if "peft" in sys.modules and _peft_role(type(module)):  # hot: no PEFT layer without peft
            rules[path] = (_peft_base(module)[0], {raw: local for local, _, raw in _peft_tensors(module)[0]})
    if not rules:
        return state
    out = {}
    for key, value in state.items():
        new = _peft_key(key, rules)
        if new is not None:
            out[new] = value
    return out


def _peft_key(key: str, rules: dict) -> str | None:
    """``key`` under the view's names: the nearest PEFT layer above it decides (None: a tensor the view hides)."""
    path = key
    while "." in path:
        path = path.rpartition(".")[0]
        rule = rules.get(path)
        if rule is not None:
            rest = key[len(path) + 1 :]
            prefix, adapters = rule
            if rest.startswith(prefix):
                return f"{path}.{rest[len(prefix) :]}"
            local = adapters.get(rest)
            return f"{path}.{local}" if local else None
    return key

"""Paddle model structure, trainability and heads: trainability is ``stop_gradient``; BatchNorm ``_mean`` /
``_variance`` are statistics.

Paddle registers a BatchNorm's running statistics as (stop_gradient) Parameters. xfreeze treats them as torch
treats buffers: they are never listed, selected or made trainable, so both frameworks show the same names.
"""

from __future__ import annotations

import math
import types
from typing import Any, Iterable

import paddle
from paddle import nn

from ..contract import Adapter, Module, Registries, Tensor, tensors_of

_STAT_NAMES = ("_mean", "_variance")
_NEUTRAL_STAT = {"_mean": "running_mean", "_variance": "running_var"}
_NORMS = tuple(
    c
    for c in (
        nn.layer.norm._BatchNormBase,
        nn.BatchNorm,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.layer.norm._InstanceNormBase,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if c is not None
)
# Paddle 3.3's batch_norm computes the gradient of neither scale nor bias when either one is stop_gradient
# (measured: freezing a BatchNorm2D's bias leaves its weight with grad None), so BitFit-style "train only biases"
# silently trains no BatchNorm bias. See PaddleModel.sync_grads.
_JOINT_GRAD = (nn.layer.norm._BatchNormBase, nn.BatchNorm)
_INITS: dict[str, Any] = {
    "xavier_uniform": nn.initializer.XavierUniform,
    "xavier_normal": nn.initializer.XavierNormal,
    # torch's default Linear init (kaiming_uniform, a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    "kaiming_uniform": lambda: nn.initializer.KaimingUniform(negative_slope=math.sqrt(5), nonlinearity="leaky_relu"),
    "normal": lambda: nn.initializer.Normal(std=0.01),
    "zeros": lambda: nn.initializer.Constant(0.0),
}


class PaddleModel(Adapter):
    """Structure (the model walk), trainability, heads and named models of Paddle."""

    KINDS = (
        ("norm", _NORMS),
        ("conv", (nn.layer.conv._ConvNd,)),
        ("linear", (nn.Linear,)),
        ("embedding", (nn.Embedding,)),
    )
    # Wrappers seen through, by class name -> the attribute holding the wrapped layer (its "_layers." segment never
    # reaches a name).
    WRAPPERS = {
        "DataParallel": "_layers",
        "LoRAModel": "model",  # PaddleFormers / PaddleNLP LoRA (issue 19): its LoRALinear layers are already flat
    }

    # --- structure ---------------------------------------------------------------------------------------------
    def registries(self, module: Module) -> Registries:
        params = module._parameters  # Paddle registers running statistics as parameters
        return Registries(params, module._buffers, module._sub_layers, params, module._forward_pre_hooks)

    def tensor_dicts(self, module: Module) -> tuple[dict, dict]:
        return module._parameters, module._buffers

    def children(self, module: Module) -> list[tuple[str, Module]]:
        return [(name, child) for name, child in module._sub_layers.items() if child is not None]  # hot: the walk

    def module_tensors(self, module: Module) -> tuple[list[tuple[str, Tensor]], list[tuple[str, str, Tensor]]]:
        return tensors_of(self, module)

    def walk_module(self, modules: list, params: list, stats: list, token: list, module: Module) -> Any:
        index = len(modules)  # the view build's inner loop: straight from the registries
        modules.append(module)
        token.append(id(module))
        registered, buffers = module._parameters, module._buffers
        if registered:
            own = [(local, p) for local, p in registered.items() if p is not None]
            token.extend([id(p) for _, p in own])
            if isinstance(module, _NORMS):  # Paddle registers running statistics as Parameters
                stats.extend([(index, _NEUTRAL_STAT[local], p, local) for local, p in own if local in _STAT_NAMES])
                own = [(local, p) for local, p in own if local not in _STAT_NAMES]
            params.extend([(index, local, p) for local, p in own])
        if buffers:
            token.extend([id(b) for b in buffers.values() if b is not None])
        return module._sub_layers.items()

    def state_keys(self, view: Any) -> list[str]:
        return [
            f"{path}.{local}" if path else local
            for path, m in zip(view.paths, view.modules)
            for local, b in m._buffers.items()
            if b is not None and local not in m._non_persistable_buffer_names_set
        ]

    def padding_idx(self, module: Module) -> int | None:
        if not isinstance(module, nn.Embedding):
            return None
        index = module._padding_idx  # Paddle stores -1 (or None) for "no padding row"
        return None if index is None or index < 0 else int(index)

    # --- trainability ------------------------------------------------------------------------------------------
    def trainable_flags(self, params: list[Tensor]) -> list[bool]:
        return [not p.stop_gradient for p in params]

    def is_trainable(self, param: Tensor) -> bool:
        return not param.stop_gradient

    def set_trainable(self, param: Tensor, trainable: bool) -> None:
        param.stop_gradient = not trainable

    def apply_trainable(self, params: list[Tensor], trainable: bool) -> None:
        for p in params:  # hot: every parameter of a first freeze (the default's two calls each cost 0.1 s on 100k)
            p.stop_gradient = not trainable
            if not trainable:
                p.clear_gradient(False)

    def drop_grad(self, param: Tensor) -> None:
        param.clear_gradient(False)  # False releases the gradient (grad becomes None) instead of zeroing it

    def sync_grads(self, modules: Iterable[Module]) -> None:
        for module in modules:
            if not isinstance(module, _JOINT_GRAD):  # only these ever get the stand-in forward
                continue
            trainable = [not p.stop_gradient for _, p in self.module_tensors(module)[0]]
            partial = any(trainable) and not all(trainable)
            if partial and "forward" not in module.__dict__:
                object.__setattr__(module, "forward", types.MethodType(_forward_with_live_stand_ins, module))
            elif not partial and "forward" in module.__dict__:
                object.__delattr__(module, "forward")

    # --- heads -------------------------------------------------------------------------------------------------
    def linear_features(self, module: Module) -> tuple[int, int, bool]:
        in_features, out_features = module.weight.shape  # Paddle Linear weights are [in, out]
        return in_features, out_features, module.bias is not None

    def new_linear(self, like: Module, out_features: int, init: str) -> Module:
        in_features, _, has_bias = self.linear_features(like)
        layer = nn.Linear(in_features, out_features, bias_attr=None if has_bias else False)
        return _initialized(layer, init, like)

    def conv_head_features(self, module: Module) -> tuple[int, int] | None:
        if not isinstance(module, nn.Conv2D) or module._groups not in (1, None):
            return None
        out_channels, in_channels, kh, kw = module.weight.shape  # Paddle conv weights share torch's layout
        return (in_channels, out_channels) if (kh, kw) == (1, 1) else None

    def new_conv_head(self, like: Module, out_channels: int, init: str) -> Module:
        in_channels = like.weight.shape[1]
        layer = nn.Conv2D(in_channels, out_channels, 1, bias_attr=None if like.bias is not None else False)
        return _initialized(layer, init, like)

    # --- named models (the command line) -----------------------------------------------------------------------
    model_zoo = "a paddle.vision.models name"

    def model_names(self) -> list[str]:
        models = paddle.vision.models
        return [n for n in dir(models) if n[:1].islower() and callable(getattr(models, n))]

    def build_named_model(self, name: str) -> Module | None:
        """A paddle.vision model (random weights); None if unknown."""
        return getattr(paddle.vision.models, name)() if name in self.model_names() else None

    def forward_post_hook(self, module: Module, hook: Any) -> Any:
        return module.register_forward_post_hook(hook)


def _initialized(layer: Module, init: str, like: Module) -> Module:
    """``layer`` initialized by ``init`` (biases at zero), on ``like``'s device and in its dtype."""
    if init != "default":
        with paddle.no_grad():
            _INITS[init]()(layer.weight)
            if layer.bias is not None:
                nn.initializer.Constant(0.0)(layer.bias)
    return layer.to(device=like.weight.place, dtype=like.weight.dtype)


def _forward_with_live_stand_ins(layer, *args, **kwargs):
    """Run a half-frozen BatchNorm with a detached, grad-enabled copy of its frozen parameter, so that Paddle's
    kernel computes the trainable parameter's gradient; the frozen Parameter itself gets no gradient, ever."""
    saved = dict(layer._parameters)
    for name in ("weight", "bias"):
        param = saved.get(name)
        if param is not None and param.stop_gradient:
            stand_in = param.detach()
            stand_in.stop_gradient = False
            layer._parameters[name] = stand_in
    try:
        return type(layer).forward(layer, *args, **kwargs)
    finally:
        layer._parameters.update(saved)

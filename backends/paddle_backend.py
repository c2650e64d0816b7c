"""Paddle adapter: trainability is ``stop_gradient``; BatchNorm ``_mean``/``_variance`` are statistics.

Paddle registers a BatchNorm's running statistics as (stop_gradient) Parameters. xfreeze treats them as torch
treats buffers: they are never listed, selected or made trainable, so both frameworks show the same names.
"""
from __future__ import annotations

import math
import types

import paddle
from paddle import nn

from ._base import Adapter

_STAT_NAMES = ("_mean", "_variance")
_NORMS = tuple(c for c in (nn.layer.norm._BatchNormBase, nn.BatchNorm, nn.LayerNorm, nn.GroupNorm,
                           nn.layer.norm._InstanceNormBase, nn.LocalResponseNorm,
                           getattr(nn, "RMSNorm", None)) if c is not None)
# Paddle 3.3's batch_norm computes the gradient of neither scale nor bias when either one is stop_gradient
# (measured: freezing a BatchNorm2D's bias leaves its weight with grad None), so BitFit-style "train only biases"
# silently trains no BatchNorm bias. See PaddleAdapter.sync_grads.
_JOINT_GRAD = (nn.layer.norm._BatchNormBase, nn.BatchNorm)
_KINDS = (("norm", _NORMS), ("conv", (nn.layer.conv._ConvNd,)), ("linear", (nn.Linear,)),
          ("embedding", (nn.Embedding,)))
_INITS = {
    "xavier_uniform": nn.initializer.XavierUniform,
    "xavier_normal": nn.initializer.XavierNormal,
    # torch's default Linear init (kaiming_uniform, a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    "kaiming_uniform": lambda: nn.initializer.KaimingUniform(negative_slope=math.sqrt(5), nonlinearity="leaky_relu"),
    "normal": lambda: nn.initializer.Normal(std=0.01),
    "zeros": lambda: nn.initializer.Constant(0.0),
}


class PaddleAdapter(Adapter):
    name = "paddle"

    def named_modules(self, model):
        return model.named_sublayers(include_self=True)

    def direct_parameters(self, module):
        stats = self.module_kind(module) == "norm"
        return [(n, p) for n, p in module.named_parameters(include_sublayers=False)
                if not (stats and n in _STAT_NAMES)]

    def norm_statistics(self, module):
        return [getattr(module, n) for n in _STAT_NAMES if getattr(module, n, None) is not None]

    def module_kind(self, module):
        return next((kind for kind, classes in _KINDS if isinstance(module, classes)), None)

    def sync_grads(self, module) -> None:
        trainable = [not p.stop_gradient for _, p in self.direct_parameters(module)]
        partial = isinstance(module, _JOINT_GRAD) and any(trainable) and not all(trainable)
        if partial and "forward" not in module.__dict__:
            object.__setattr__(module, "forward", types.MethodType(_forward_with_live_stand_ins, module))
        elif not partial and "forward" in module.__dict__:
            object.__delattr__(module, "forward")

    def is_trainable(self, param) -> bool:
        return not param.stop_gradient

    def set_trainable(self, param, trainable: bool) -> None:
        param.stop_gradient = not trainable

    def drop_grad(self, param) -> None:
        param.clear_gradient(False)  # False releases the gradient (grad becomes None) instead of zeroing it

    def numel(self, param) -> int:
        return math.prod(param.shape)

    def nbytes(self, param) -> int:
        return math.prod(param.shape) * param.element_size()

    def dtype_name(self, param) -> str:
        return str(param.dtype).replace("paddle.", "")

    def linear_features(self, module):
        in_features, out_features = module.weight.shape  # Paddle Linear weights are [in, out]
        return in_features, out_features, module.bias is not None

    def new_linear(self, like, out_features: int, init: str):
        in_features, _, has_bias = self.linear_features(like)
        layer = nn.Linear(in_features, out_features, bias_attr=None if has_bias else False)
        if init != "default":
            with paddle.no_grad():
                _INITS[init]()(layer.weight)
                if layer.bias is not None:
                    nn.initializer.Constant(0.0)(layer.bias)
        return layer.to(device=like.weight.place, dtype=like.weight.dtype)

    def to_numpy(self, tensor):
        return tensor.detach().cpu().numpy()


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


ADAPTER = PaddleAdapter()

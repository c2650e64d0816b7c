"""The cross-framework parity harness: the one place where torch and Paddle differences are neutralized.

Differences neutralized here (measured on torch 2.14.1 / paddlepaddle 3.3.1):
  * Linear weights are [out, in] in torch and [in, out] in Paddle (Conv weights share a layout): the canonical
    layout is torch's, and Paddle Linear weights are transposed on the way in and out.
  * BatchNorm statistics are ``running_mean``/``running_var`` buffers in torch and ``_mean``/``_variance``
    (stop_gradient) Parameters in Paddle: canonical names are torch's.
  * BatchNorm momentum is ``m`` in torch and ``1 - m`` in Paddle: models are built with torch 0.125 / Paddle 0.875.
  * torch ``SGD(momentum=...)`` is ``paddle.optimizer.Momentum`` (Paddle's SGD has no momentum); torch's
    ``weight_decay`` on SGD/Adam is L2 added to the gradient, Paddle's float ``weight_decay`` is ``L2Decay``,
    the same rule; AdamW is decoupled in both.
  * Gradients are cleared the way that keeps a tensor around (``zero_grad(set_to_none=False)`` / ``clear_grad()``),
    the setting in which torch optimizers move "frozen" weights without xfreeze.
Not neutralized, so not compared across frameworks: Paddle updates ``_variance`` with the biased batch variance
where torch uses the unbiased one, so running variances differ by design (running means agree).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

BACKENDS = ("torch", "paddle")
# Paddle keeps learning rates, momentum, weight decay and BatchNorm epsilon as float32 attributes even for float64
# models, which alone moves float64 results by ~1e-8 relative. The harness uses values that are exact in float32
# (dyadic fractions), so float64 runs of the two frameworks agree to rounding (see TOLERANCE).
BN_EPS = 2.0**-16


@dataclass(frozen=True)
class Spec:
    """A small model both frameworks build identically. kind 'mlp': widths; kind 'cnn': conv channels;
    kind 'blocks': an MLP whose layers are repeated blocks (``0.0``, ``1.0``, ...), for layer-wise decay."""

    kind: str
    sizes: tuple
    classes: int = 3
    image: int = 5  # cnn input is [N, 3, image, image]

    def input_shape(self, batch: int):
        return (batch, 3, self.image, self.image) if self.kind == "cnn" else (batch, self.sizes[0])

    def module_names(self) -> list[str]:
        """Names of the parameter-owning modules, identical in both frameworks."""
        if self.kind == "mlp":
            return [str(2 * i) for i in range(len(self.sizes))]
        if self.kind == "blocks":
            return [f"{i}.0" for i in range(len(self.sizes) - 1)] + [str(len(self.sizes) - 1)]
        return [str(3 * i + j) for i in range(len(self.sizes)) for j in (0, 1)] + [str(3 * len(self.sizes) + 2)]


def build_layers(spec: Spec, nn, conv, bn, pool) -> list:
    """The layers of ``spec``; the framework supplies ``nn`` (Linear, ReLU, Identity, Sequential, Flatten) and
    the constructors whose names or conventions differ (conv, BatchNorm, adaptive pooling)."""
    if spec.kind == "blocks":
        w = list(spec.sizes)
        return [nn.Sequential(nn.Linear(w[i], w[i + 1]), nn.ReLU()) for i in range(len(w) - 1)] + [
            nn.Linear(w[-1], spec.classes)
        ]
    layers = []
    if spec.kind == "mlp":
        widths = list(spec.sizes) + [spec.classes]
        for i in range(len(widths) - 1):
            layers += [nn.Linear(widths[i], widths[i + 1]), nn.ReLU()]
        return layers[:-1] + [nn.Identity()]
    channels = [3] + list(spec.sizes)
    for i in range(len(spec.sizes)):
        layers += [conv(channels[i], channels[i + 1]), bn(channels[i + 1]), nn.ReLU()]
    return layers + [pool(1), nn.Flatten(), nn.Linear(channels[-1], spec.classes)]


@dataclass(frozen=True)
class OptConfig:
    name: str  # "sgd" | "adam" | "adamw"
    lr: float = 2.0**-5
    momentum: float = 0.875
    nesterov: bool = False
    weight_decay: float = 0.0


class _Kit:
    """What both kits do the same way."""

    def grad(self, param):
        return param.grad

    def numpy(self, tensor):
        return tensor.detach().cpu().numpy()


class TorchKit(_Kit):
    name = "torch"

    def __init__(self):
        import torch

        self.t = torch
        self.nn = torch.nn

    def cuda_available(self) -> bool:
        return self.t.cuda.is_available()

    def build(self, spec: Spec, dtype: str = "float32", device: str = "cpu"):
        nn = self.nn
        conv = lambda i, o: nn.Conv2d(i, o, 3, padding=1)  # noqa: E731
        bn = lambda c: nn.BatchNorm2d(c, momentum=0.125, eps=BN_EPS)  # noqa: E731
        layers = build_layers(spec, nn, conv, bn, nn.AdaptiveAvgPool2d)
        return nn.Sequential(*layers).to(device=self._device(device), dtype=getattr(self.t, dtype))

    def _device(self, device):
        return "cuda" if device == "gpu" else "cpu"

    def tensor(self, array, device="cpu"):
        return self.t.from_numpy(np.ascontiguousarray(array)).to(self._device(device))

    def state(self, model) -> dict:
        out = {n: p.detach().cpu().numpy().copy() for n, p in model.named_parameters()}
        out.update(
            {
                n: b.detach().cpu().numpy().copy()
                for n, b in model.named_buffers()
                if n.endswith(("running_mean", "running_var"))
            }
        )
        return out

    def load(self, model, state: dict) -> None:
        with self.t.no_grad():
            for name, value in list(model.named_parameters()) + list(model.named_buffers()):
                if name in state:
                    value.copy_(self.t.from_numpy(state[name]).to(value.dtype))

    def optimizer(self, cfg: OptConfig, model):
        params, o = list(model.parameters()), self.t.optim
        if cfg.name == "sgd":
            return o.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        if cfg.name == "adam":
            return o.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return o.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def xfreeze_optimizer(self, model, name, lr, schedule=None, **kwargs):
        """xfreeze.optimizer plus, optionally, a StepLR(step_size, gamma) schedule: (optimizer, scheduler)."""
        import xfreeze

        opt = xfreeze.optimizer(model, name, lr=lr, **kwargs)
        return opt, (self.t.optim.lr_scheduler.StepLR(opt, *schedule) if schedule else None)

    def train_step(self, model, opt, x, y) -> None:
        loss = self.t.nn.functional.cross_entropy(model(x), y)
        if loss.requires_grad:  # everything frozen: nothing to differentiate, the step still runs
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    def labels(self, array, device="cpu"):
        return self.t.from_numpy(array.astype(np.int64)).to(self._device(device))

    def norm_layers(self, model):
        return [(n, m) for n, m in model.named_modules() if isinstance(m, self.nn.modules.batchnorm._BatchNorm)]


class PaddleKit(_Kit):
    name = "paddle"
    _STATS = {"_mean": "running_mean", "_variance": "running_var"}

    def __init__(self):
        import paddle

        self.p = paddle
        self.nn = paddle.nn

    def cuda_available(self) -> bool:
        return self.p.device.is_compiled_with_cuda() and self.p.device.cuda.device_count() > 0

    def build(self, spec: Spec, dtype: str = "float32", device: str = "cpu"):
        nn = self.nn
        self.p.set_device("gpu" if device == "gpu" else "cpu")
        conv = lambda i, o: nn.Conv2D(i, o, 3, padding=1)  # noqa: E731
        bn = lambda c: nn.BatchNorm2D(c, momentum=0.875, epsilon=BN_EPS)  # momentum: 1 - torch's  # noqa: E731
        layers = build_layers(spec, nn, conv, bn, nn.AdaptiveAvgPool2D)
        model = nn.Sequential(*layers)
        model.to(dtype=dtype)
        return model

    def tensor(self, array, device="cpu"):
        return self.p.to_tensor(np.ascontiguousarray(array), place=self._place(device))

    def _place(self, device):
        return self.p.CUDAPlace(0) if device == "gpu" else self.p.CPUPlace()

    def _is_linear_weight(self, model, name):
        owner = dict(model.named_sublayers()).get(name.rpartition(".")[0])
        return isinstance(owner, self.nn.Linear) and name.endswith("weight")

    def _canonical(self, name):
        head, _, leaf = name.rpartition(".")
        return f"{head}.{self._STATS[leaf]}" if leaf in self._STATS else name

    def state(self, model) -> dict:
        out = {}
        for name, p in model.named_parameters():
            value = p.numpy().copy()
            out[self._canonical(name)] = value.T.copy() if self._is_linear_weight(model, name) else value
        return out

    def load(self, model, state: dict) -> None:
        for name, p in model.named_parameters():
            value = state[self._canonical(name)]
            value = value.T if self._is_linear_weight(model, name) else value
            p.set_value(np.ascontiguousarray(value).astype(p.numpy().dtype))

    def optimizer(self, cfg: OptConfig, model):
        params, o = model.parameters(), self.p.optimizer
        wd = cfg.weight_decay or None
        if cfg.name == "sgd":
            return o.Momentum(
                learning_rate=cfg.lr,
                momentum=cfg.momentum,
                parameters=params,
                use_nesterov=cfg.nesterov,
                weight_decay=wd,
            )
        if cfg.name == "adam":
            return o.Adam(learning_rate=cfg.lr, parameters=params, weight_decay=wd)
        return o.AdamW(learning_rate=cfg.lr, parameters=params, weight_decay=cfg.weight_decay)

    def xfreeze_optimizer(self, model, name, lr, schedule=None, **kwargs):
        """Paddle schedulers are the optimizer's learning rate: StepDecay(lr, step_size, gamma)."""
        import xfreeze

        sched = (
            self.p.optimizer.lr.StepDecay(learning_rate=lr, step_size=schedule[0], gamma=schedule[1])
            if schedule
            else None
        )
        return xfreeze.optimizer(model, name, lr=sched or lr, **kwargs), sched

    def train_step(self, model, opt, x, y) -> None:
        loss = self.nn.functional.cross_entropy(model(x), y)
        if not loss.stop_gradient:
            loss.backward()
        opt.step()
        opt.clear_grad()  # Paddle's default: set_to_zero=True, the grad tensor stays

    def labels(self, array, device="cpu"):
        return self.p.to_tensor(array.astype(np.int64), place=self._place(device))

    def norm_layers(self, model):
        return [(n, m) for n, m in model.named_sublayers() if isinstance(m, self.nn.layer.norm._BatchNormBase)]


KITS = {"torch": TorchKit, "paddle": PaddleKit}


def kit(name: str):
    """The kit of a framework; a framework that is expected but not importable fails loudly."""
    importlib.import_module({"torch": "torch", "paddle": "paddle"}[name])
    return KITS[name]()


def random_state(spec: Spec, dtype: str, seed: int) -> dict:
    """Canonical (torch-layout) weights for ``spec``, the same for both frameworks."""
    rng = np.random.default_rng(seed)
    torch_kit = kit("torch")
    shapes = {n: v.shape for n, v in torch_kit.state(torch_kit.build(spec, "float64")).items()}
    out = {}
    for name, shape in shapes.items():
        if name.endswith("running_var"):
            out[name] = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("running_mean"):
            out[name] = rng.normal(0, 0.1, shape)
        else:
            out[name] = rng.normal(0, 0.5, shape)
    return {n: v.astype(dtype) for n, v in out.items()}


def batch(spec: Spec, dtype: str, seed: int, size: int = 4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=spec.input_shape(size)).astype(dtype), rng.integers(0, spec.classes, size)

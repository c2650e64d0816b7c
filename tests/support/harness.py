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

Every framework registered in ``xfreeze.backends.FRAMEWORKS`` has one kit class here (``KITS``), and tests ask it
(``fw.linear``, ``fw.Module``, ``fw.zoo.resnet18()``, ``fw.cast``, ``fw.trainable_names``, ...) instead of branching
on ``fw.name``; where the frameworks differ by design the kit carries the difference as data (``linear_weight_axes``,
``stat_names``, ``eps_option``). A registered framework without a kit, or one that cannot be imported, fails.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from xfreeze.backends import FRAMEWORKS

BACKENDS = tuple(FRAMEWORKS)  # what the library registers; every one of them needs a kit in KITS below
# Paddle keeps learning rates, momentum, weight decay and BatchNorm epsilon as float32 attributes even for float64
# models, which alone moves float64 results by ~1e-8 relative. The harness uses values that are exact in float32
# (dyadic fractions), so float64 runs of the two frameworks agree to rounding (see TOLERANCE).
BN_EPS = 2.0**-16
TOLERANCE = 1e-7  # float64 trainable parameters, torch vs Paddle (tests/model/test_properties.py says why)


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


@dataclass(frozen=True)
class Zoo:
    """A framework's libraries of ready-made models, and the few names in which they differ (data, not branches).
    ``kit.zoo.resnet18()`` builds a vision model by its builder's name; ``kit.zoo.text`` is the transformers library."""

    vision_module: str  # ready-made vision models, same builder names in both frameworks
    text_module: str  # transformer models with the Hugging Face class names
    heads: tuple  # (vision builder, where its classifier is) where the two zoos name it differently
    encoder_layers: str  # where a BERT/ERNIE encoder keeps its blocks

    @property
    def vision(self):
        return importlib.import_module(self.vision_module)

    @property
    def text(self):
        return importlib.import_module(self.text_module)

    def head(self, builder: str) -> str:
        return dict(self.heads)[builder]

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.vision, name)


class _Kit:
    """What every kit does the same way; a kit subclass holds one framework's spelling of the rest: the data below,
    and is_trainable, clear_grad, linear, batch_norm, new_parameter, cast, named_modules, hand_optimizer,
    group_options, optimizer_slots, cuda_available, build, tensor, labels, state, load, optimizer,
    xfreeze_optimizer, norm_layers (tests/backends/test_backend.py checks every kit answers the same names)."""

    name: str
    nn: object  # the framework's layer module (Linear, ReLU, Sequential, functional, ...)
    Module: type  # the model base class
    ModuleList: type
    zoo: Zoo
    optim: object  # the framework's optimizer module
    sgd_momentum: type  # the class that runs torch's SGD(momentum=...)
    other_optimizers: tuple  # three more optimizer classes the framework ships, by their attribute names
    eps_option: str  # the keyword an optimizer class takes its epsilon by
    linear_weight_axes: tuple  # the layout of a Linear weight
    stat_names: dict  # BatchNorm's running statistics: canonical name -> the framework's own

    def grad(self, param):
        return param.grad

    def numpy(self, tensor):
        return tensor.detach().cpu().numpy()

    def linear_weight_shape(self, fan_in: int, fan_out: int) -> tuple:
        """The shape of the weight of ``Linear(fan_in, fan_out)``."""
        return tuple({"in": fan_in, "out": fan_out}[axis] for axis in self.linear_weight_axes)

    def linear_shape(self, layer) -> tuple:
        """(in features, out features) of a Linear layer, read from its weight."""
        axes = dict(zip(self.linear_weight_axes, layer.weight.shape))
        return int(axes["in"]), int(axes["out"])

    def trainable_names(self, model) -> list:
        """Names of the parameters the framework itself would train (its own flag, not xfreeze's view)."""
        return [n for n, p in model.named_parameters() if self.is_trainable(p)]

    def train_step(self, model, opt, x, y) -> None:
        self.train_steps(model, [opt], x, y)

    def train_steps(self, model, opts, x, y) -> None:
        """One cross-entropy backward, then each optimizer steps and clears its gradients (keeping the tensors)."""
        loss = self.nn.functional.cross_entropy(model(x), y)
        if self.is_trainable(loss):  # everything frozen: nothing to differentiate, the step still runs
            loss.backward()
        for opt in opts:
            opt.step()
            self.clear_grad(opt)

    def optimizer_classes(self) -> list:
        return [getattr(self.optim, name) for name in self.other_optimizers]


class TorchKit(_Kit):
    name = "torch"
    cpu_train_dtypes = ("float32", "float64", "bfloat16")  # parameters its CPU optimizers step
    other_optimizers = ("RMSprop", "Adagrad", "NAdam")
    eps_option = "eps"
    linear_weight_axes = ("out", "in")
    stat_names = {"running_mean": "running_mean", "running_var": "running_var"}
    zoo = Zoo("torchvision.models", "transformers", (("squeezenet1_1", "classifier.1"),), "encoder.layer")

    def __init__(self):
        import torch

        self.t = torch
        self.nn = torch.nn
        self.Module, self.ModuleList = torch.nn.Module, torch.nn.ModuleList
        self.optim = torch.optim
        self.sgd_momentum = torch.optim.SGD

    def is_trainable(self, tensor) -> bool:
        return tensor.requires_grad

    def clear_grad(self, opt) -> None:
        opt.zero_grad(set_to_none=False)

    def linear(self, fan_in: int, fan_out: int, *, bias: bool = True):
        return self.nn.Linear(fan_in, fan_out, bias=bias)

    def batch_norm(self, features: int, *, affine: bool = True):
        return self.nn.BatchNorm1d(features, affine=affine)

    def new_parameter(self, owner, shape):
        """A parameter of ones for ``owner`` to hold (assign it to an attribute)."""
        return self.nn.Parameter(self.t.ones(shape))

    def cast(self, model, dtype: str):
        return model.to(dtype=getattr(self.t, dtype))

    def named_modules(self, model) -> list:
        """(name, module) pairs, the model itself first as ""."""
        return list(model.named_modules())

    def hand_optimizer(self, cls, params, lr):
        return cls(params, lr=lr)

    def group_options(self, opt, *keys) -> set:
        """The values of ``keys`` (torch's option names) that each parameter group of ``opt`` runs with."""
        return {tuple(g[k] for k in keys) for g in opt.param_groups}

    def optimizer_slots(self, opt, model) -> dict:
        """The optimizer's state as numpy: {(parameter name, slot): value}."""
        return {
            (n, slot): self.numpy(value).copy()
            for n, p in model.named_parameters()
            for slot, value in opt.state.get(p, {}).items()
            if self.t.is_tensor(value)
        }

    def cuda_available(self) -> bool:
        return self.t.cuda.is_available()

    def build(self, spec: Spec, dtype: str = "float32", device: str = "cpu"):
        nn = self.nn
        conv = lambda i, o: nn.Conv2d(i, o, 3, padding=1)  # noqa: E731
        bn = lambda c: nn.BatchNorm2d(c, momentum=0.125, eps=BN_EPS)  # noqa: E731
        layers = build_layers(spec, nn, conv, bn, nn.AdaptiveAvgPool2d)
        return self.cast(nn.Sequential(*layers).to(device=self._device(device)), dtype)

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

    def labels(self, array, device="cpu"):
        return self.t.from_numpy(array.astype(np.int64)).to(self._device(device))

    def norm_layers(self, model):
        return [(n, m) for n, m in model.named_modules() if isinstance(m, self.nn.modules.batchnorm._BatchNorm)]

    def conv2d(self, fan_in: int, fan_out: int, kernel: int, *, bias: bool = True, transpose: bool = False):
        """A 2-D convolution (or transposed convolution)."""
        cls = self.nn.ConvTranspose2d if transpose else self.nn.Conv2d
        return cls(fan_in, fan_out, kernel, bias=bias)

    def batch_norm2d(self, features: int):
        return self.nn.BatchNorm2d(features)

    def same_memory(self, a, b) -> bool:
        """Whether two tensors share their storage (one is the other, or a view of it)."""
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()

    def autocast(self):
        """Mixed precision on the CPU: matmuls in bfloat16, parameters and their updates in float32."""
        return self.t.autocast("cpu", dtype=self.t.bfloat16)

    def scale_group_lr(self, opt, index: int, factor: float) -> None:
        """Change one optimizer group's rate by hand, as a training loop would (torch: the group's absolute lr)."""
        opt.param_groups[index]["lr"] *= factor

    def unreadable_tensors(self, array) -> dict:
        """Tensors holding ``array``'s shape whose values a load cannot copy: sparse, and meta (no data)."""
        dense = self.t.from_numpy(np.ascontiguousarray(array))
        return {"sparse": dense.to_sparse(), "meta": self.t.empty(dense.shape, device="meta")}

    def scale_(self, tensor, factor: float) -> None:
        """Multiply in place, outside autograd (a hand-written decay over every parameter)."""
        with self.t.no_grad():
            tensor.mul_(factor)


class PaddleKit(_Kit):
    name = "paddle"
    cpu_train_dtypes = ("float32", "float64")  # Paddle 3.3: no CPU bfloat16 optimizer kernels
    other_optimizers = ("RMSProp", "Adagrad", "Lamb")  # Paddle spells it RMSProp and has no NAdam
    eps_option = "epsilon"  # Paddle's own keyword (and beta1 / beta2, use_nesterov)
    linear_weight_axes = ("in", "out")  # Paddle Linear computes x @ W: its weight is [in, out], torch's [out, in]
    stat_names = {"running_mean": "_mean", "running_var": "_variance"}  # stop_gradient Parameters, not buffers
    # paddle.vision's SqueezeNet keeps its 1x1 conv classifier as _conv9; PaddleNLP's BERT/ERNIE encoder is an
    # nn.TransformerEncoder, whose blocks are "layers"
    zoo = Zoo("paddle.vision.models", "paddlenlp.transformers", (("squeezenet1_1", "_conv9"),), "encoder.layers")
    _STATS = {own: canonical for canonical, own in stat_names.items()}
    # Paddle keeps a class's options on the optimizer (spelled its own way), not in each group
    _OPTIONS = {
        "momentum": ("_momentum",),
        "nesterov": ("_use_nesterov",),
        "betas": ("_beta1", "_beta2"),
        "eps": ("_epsilon",),
    }

    def __init__(self):
        import paddle

        self.p = paddle
        self.nn = paddle.nn
        self.Module, self.ModuleList = paddle.nn.Layer, paddle.nn.LayerList
        self.optim = paddle.optimizer
        self.sgd_momentum = paddle.optimizer.Momentum  # Paddle's SGD has no momentum

    def is_trainable(self, tensor) -> bool:
        return not tensor.stop_gradient

    def clear_grad(self, opt) -> None:
        opt.clear_grad()  # Paddle's default: set_to_zero=True, the grad tensor stays

    def linear(self, fan_in: int, fan_out: int, *, bias: bool = True):
        return self.nn.Linear(fan_in, fan_out, bias_attr=None if bias else False)

    def batch_norm(self, features: int, *, affine: bool = True):
        off = None if affine else False  # Paddle turns the affine parameters off one attribute at a time
        return self.nn.BatchNorm1D(features, weight_attr=off, bias_attr=off)

    def new_parameter(self, owner, shape):
        """A parameter of ones for ``owner`` to hold (assign it to an attribute); Paddle creates it through the
        layer."""
        shape = [shape] if isinstance(shape, int) else list(shape)
        return owner.create_parameter(shape, default_initializer=self.nn.initializer.Constant(1.0))

    def cast(self, model, dtype: str):
        model.to(dtype=dtype)  # in place; Paddle's Layer.to returns None
        return model

    def named_modules(self, model) -> list:
        """(name, module) pairs, the model itself first as ""."""
        return list(model.named_sublayers(include_self=True))

    def hand_optimizer(self, cls, params, lr):
        return cls(learning_rate=lr, parameters=params)

    def group_options(self, opt, *keys) -> set:
        """The values of ``keys`` (torch's option names) that ``opt`` runs with, read from Paddle's attributes."""
        read = [tuple(getattr(opt, a) for a in self._OPTIONS[k]) for k in keys]
        return {tuple(v[0] if len(v) == 1 else v for v in read)}

    def optimizer_slots(self, opt, model) -> dict:
        """The optimizer's state as numpy: {(parameter name, slot): value}. Paddle names each accumulator after
        the parameter's auto-generated name (linear_0.w_0_moment1_0)."""
        by_auto = {p.name: n for n, p in model.named_parameters()}
        out = {}
        for key, value in opt.state_dict().items():
            auto = max((a for a in by_auto if key.startswith(a + "_")), key=len, default=None)
            if auto is not None:
                out[(by_auto[auto], key[len(auto) + 1 :])] = self.numpy(value).copy()
        return out

    def cuda_available(self) -> bool:
        return self.p.device.is_compiled_with_cuda() and self.p.device.cuda.device_count() > 0

    def build(self, spec: Spec, dtype: str = "float32", device: str = "cpu"):
        nn = self.nn
        self.p.set_device("gpu" if device == "gpu" else "cpu")
        conv = lambda i, o: nn.Conv2D(i, o, 3, padding=1)  # noqa: E731
        bn = lambda c: nn.BatchNorm2D(c, momentum=0.875, epsilon=BN_EPS)  # momentum: 1 - torch's  # noqa: E731
        layers = build_layers(spec, nn, conv, bn, nn.AdaptiveAvgPool2D)
        return self.cast(nn.Sequential(*layers), dtype)

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

    def labels(self, array, device="cpu"):
        return self.p.to_tensor(array.astype(np.int64), place=self._place(device))

    def norm_layers(self, model):
        return [(n, m) for n, m in model.named_sublayers() if isinstance(m, self.nn.layer.norm._BatchNormBase)]

    def conv2d(self, fan_in: int, fan_out: int, kernel: int, *, bias: bool = True, transpose: bool = False):
        """A 2-D convolution (or transposed convolution)."""
        cls = self.nn.Conv2DTranspose if transpose else self.nn.Conv2D
        return cls(fan_in, fan_out, kernel, bias_attr=None if bias else False)

    def batch_norm2d(self, features: int):
        return self.nn.BatchNorm2D(features)

    def same_memory(self, a, b) -> bool:
        """Whether two tensors share their storage (one is the other, or a view of it)."""
        return a.data_ptr() == b.data_ptr()

    def autocast(self):
        """Paddle's O1 mixed precision; on the CPU it keeps float32 (no bfloat16 matmul kernel there), so this checks
        the wiring, the GPU the arithmetic."""
        return self.p.amp.auto_cast(level="O1", dtype="bfloat16")

    def scale_group_lr(self, opt, index: int, factor: float) -> None:
        """Change one optimizer group's rate by hand (Paddle: the group's multiplier of the global rate, which each
        parameter carries in its optimize_attr)."""
        group = opt._param_groups[index]
        group["learning_rate"] *= factor
        for param in group["params"]:
            param.optimize_attr["learning_rate"] = group["learning_rate"]

    def unreadable_tensors(self, array) -> dict:
        """Tensors holding a 2-D ``array`` whose values a load cannot copy: sparse COO and CSR (Paddle has no meta
        device)."""
        coo = self.p.to_tensor(np.ascontiguousarray(array)).to_sparse_coo(2)
        return {"sparse": coo, "sparse CSR": coo.to_sparse_csr()}

    def scale_(self, tensor, factor: float) -> None:
        """Multiply in place, outside autograd (a hand-written decay over every parameter)."""
        with self.p.no_grad():
            tensor.set_value(tensor * factor)


KITS = {"torch": TorchKit, "paddle": PaddleKit}  # adding a framework: its registry entry, one kit class, one entry


def kit(name: str):
    """The kit of a registered framework. One that is registered but has no kit, or cannot be imported, fails
    loudly: it is never skipped."""
    spec = FRAMEWORKS[name]
    if name not in KITS:
        raise LookupError(
            f"framework {name!r} is registered in xfreeze.backends.FRAMEWORKS but tests/support/harness.py has no "
            f"kit for it: write a {name.capitalize()}Kit(_Kit) and add it to KITS"
        )
    try:
        importlib.import_module(spec.module)
    except ImportError as error:
        raise ImportError(
            f"framework {name!r} is registered but {spec.module} cannot be imported: {spec.install}"
        ) from error
    return KITS[name]()


def random_state(spec: Spec, dtype: str, seed: int) -> dict:
    """Canonical (torch-layout) weights for ``spec``, the same for both frameworks."""
    rng = np.random.default_rng(seed)
    reference = kit(BACKENDS[0])  # every kit's state() is in the canonical layout: any one gives the shapes
    shapes = {n: v.shape for n, v in reference.state(reference.build(spec, "float64")).items()}
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


def align_running_var(runs: list) -> None:
    """The one by-design difference training cannot neutralize: Paddle moves ``_variance`` with the biased batch
    variance, torch ``running_var`` with the unbiased one. A norm layer locked mid-training normalizes with it, so
    at the freeze point every run (anything with ``fw``, ``model`` and ``final()``) takes the first run's running
    variances."""
    reference = runs[0].final()
    for r in runs[1:]:
        state = r.final()
        state.update({n: v for n, v in reference.items() if n.endswith("running_var")})
        r.fw.load(r.model, state)


def tiny_text_config(config_class, **extra):
    """A BERT/ERNIE config small enough for a CPU test (either library's class: the field names are shared)."""
    return config_class(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **extra,
    )


def vocab_model(fw, vocab: int = 12, dim: int = 4):
    """An Embedding and a Linear head over the vocabulary (``embed``, ``head``), the same names in every framework
    (issue 21: rows of both train)."""

    class Vocab(fw.Module):
        def __init__(self):
            super().__init__()
            self.embed = fw.nn.Embedding(vocab, dim)
            self.head = fw.linear(dim, vocab)

        def forward(self, x):
            return self.head(self.embed(x))

    return Vocab()

"""Framework adapters for xfreeze, installed as ``xfreeze.backends``.

This module only *describes* the adapters; importing it imports no framework. Each adapter module
(``torch_backend``, ``paddle_backend``) is imported by :mod:`xfreeze._backend` only after a model
has been recognised as belonging to that framework, or a backend was asked for by name.
Adding a framework means one adapter module plus one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdapterSpec:
    name: str  # the backend name users pass: backend="torch"
    module: str  # the framework's top-level module, looked up in sys.modules
    base_class: str  # dotted path of the framework's model base class
    adapter: str  # the xfreeze adapter module, relative to this package
    install: str  # what to run when the framework is missing
    tensor_class: str  # dotted path of the framework's tensor class


ADAPTERS: dict[str, AdapterSpec] = {
    "torch": AdapterSpec("torch", "torch", "torch.nn.Module", ".torch_backend", "pip install torch", "torch.Tensor"),
    "paddle": AdapterSpec(
        "paddle", "paddle", "paddle.nn.Layer", ".paddle_backend", "pip install paddlepaddle", "paddle.Tensor"
    ),
}

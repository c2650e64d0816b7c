"""Framework adapters for xfreeze, installed as ``xfreeze.backends``.

This module only *describes* the frameworks; importing it imports none. Each framework has one folder with the same
file names (``adapter.py``, ``names.py``, ``formats.py``, and the adapter's parts), and one entry in
:data:`FRAMEWORKS`. The adapter module is imported by :mod:`xfreeze.core.dispatch` only after a model has been
recognised as belonging to that framework, or a backend was asked for by name. Everything that lists frameworks (the
CLI, the delta code, the test kit) reads this registry. Adding a framework means one folder plus one entry here;
``docs/contract.md`` lists what the folder must hold.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameworkSpec:
    name: str  # the backend name users pass: backend="torch"
    module: str  # the framework's top-level module, looked up in sys.modules
    base_class: str  # dotted path of the framework's model base class
    tensor_class: str  # dotted path of the framework's tensor class
    install: str  # what to run when the framework is missing
    package: str  # the framework's folder, relative to this package

    @property
    def adapter(self) -> str:
        """Module holding ``ADAPTER``, the :class:`~xfreeze.backends.contract.Adapter` instance."""
        return self.package + ".adapter"

    @property
    def naming(self) -> str:
        """Module holding ``NAMING``, the framework's :class:`~xfreeze.backends.naming.Naming` (pure data)."""
        return self.package + ".names"

    @property
    def formats(self) -> str:
        """Module holding ``FILE_FORMATS``, the framework's checkpoint files (pure data)."""
        return self.package + ".formats"


FRAMEWORKS: dict[str, FrameworkSpec] = {
    "torch": FrameworkSpec("torch", "torch", "torch.nn.Module", "torch.Tensor", "pip install torch", ".torch"),
    "paddle": FrameworkSpec(
        "paddle", "paddle", "paddle.nn.Layer", "paddle.Tensor", "pip install paddlepaddle", ".paddle"
    ),
}
ADAPTERS = FRAMEWORKS  # the name the core has used since the first adapters

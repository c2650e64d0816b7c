"""xfreeze: choose what trains when fine-tuning, and make frozen mean frozen, in PyTorch and PaddlePaddle.

``import xfreeze`` imports neither framework; the adapter for a model's framework is loaded on first use.
"""

from __future__ import annotations


def _map_backends_of_a_plain_checkout() -> None:
    """``backends/`` sits beside ``xfreeze/`` in the repository and installs as ``xfreeze.backends`` (pyproject's
    package-dir). An install (``pip install -e .``, what ``make`` runs) maps it; from a plain checkout on
    ``sys.path`` nothing does, so map the sibling folder here, once."""
    import importlib.util
    import sys
    from pathlib import Path

    if "xfreeze.backends" in sys.modules or importlib.util.find_spec("xfreeze.backends") is not None:
        return
    folder = Path(__file__).resolve().parent.parent / "backends"
    spec = importlib.util.spec_from_file_location(
        "xfreeze.backends", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:  # pragma: no cover - a broken checkout
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["xfreeze.backends"] = module
    spec.loader.exec_module(module)


_map_backends_of_a_plain_checkout()

from .core.dispatch import get_backend, set_backend
from .core.errors import XFreezeError
from .model.freeze import FreezeReport, freeze, unfreeze
from .model.head import replace_head
from .weights.files import StateDict, load_checkpoint, save_checkpoint
from .weights.convert import convert, convert_archs
from .weights.folderconvert import convert_folder
from .model.guard import check_freeze_agreement
from .weights.delta import DeltaReport, FrozenCheck, frozen_fingerprint, load_delta, save_delta, verify_frozen
from .training.ema import EMA
from .weights.load import LoadReport, load_matched
from .training.optim import OptimizerConfig, optimizer, param_groups
from .training.check import CheckReport, ParamRow, ParamTable, check, param_table
from .training.staged import Stage, StagedUnfreeze
from .training.cache import FeatureCache
from .training.probe import ProbeSweep
from .training.audit import Audit, AuditReport, audit
from .model.bufferlock import BufferLockReport, lock_buffers, unlock_buffers
from .model.select import compile_patterns as _compile_patterns
from .model.select import select_mask as _select_mask
from .model.view import view_of as _view_of
from .model.summary import ModuleRow, Summary, summary
from .core.table import Counts

__version__ = "0.1.0"
__all__ = [
    "XFreezeError",
    "FreezeReport",
    "Summary",
    "ModuleRow",
    "Counts",
    "select",
    "freeze",
    "unfreeze",
    "summary",
    "replace_head",
    "set_backend",
    "get_backend",
    "param_groups",
    "optimizer",
    "OptimizerConfig",
    "Stage",
    "StagedUnfreeze",
    "EMA",
    "load_matched",
    "LoadReport",
    "load_checkpoint",
    "save_checkpoint",
    "StateDict",
    "convert",
    "convert_archs",
    "convert_folder",
    "save_delta",
    "load_delta",
    "verify_frozen",
    "frozen_fingerprint",
    "DeltaReport",
    "FrozenCheck",
    "check",
    "CheckReport",
    "param_table",
    "ParamTable",
    "ParamRow",
    "check_freeze_agreement",
    "FeatureCache",
    "ProbeSweep",
    "audit",
    "Audit",
    "AuditReport",
    "lock_buffers",
    "unlock_buffers",
    "BufferLockReport",
]


def select(model, *patterns, backend: str | None = None) -> list[str]:
    """The names of the parameters the patterns select, in model order.

    Patterns, applied left to right:
      * glob on dotted names: ``"backbone.*"``, ``"layer[1-3].*"``, ``"*.bias"``; a module name (``"layer4"``)
        selects everything under it;
      * ``"re:<regex>"``: a full match of the name (or of a containing module's name);
      * ``"type:<Class>"``: parameters inside modules of that class or a subclass, or of a framework-neutral kind
        ``type:norm``, ``type:linear``, ``type:conv``, ``type:embedding``;
      * ``"!<pattern>"``: removes from what the patterns before it selected (a leading one starts from all).

    BatchNorm running statistics (torch buffers, Paddle's ``_mean``/``_variance``) are never selected.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        *patterns: one or more patterns (lists of patterns are accepted too).
        backend: force ``"torch"`` or ``"paddle"``.

    Returns:
        list[str]: parameter names.

    Raises:
        XFreezeError: no patterns, a pattern that matches nothing (with the closest real names), an invalid regex,
            or an object that is not a model.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> xfreeze.select(model, "*", "!1.*")
        ['0.weight', '0.bias']
    """
    compiled = _compile_patterns(patterns)
    view = _view_of(model, backend)
    return [name for name, hit in zip(view.names, _select_mask(view, compiled)) if hit]

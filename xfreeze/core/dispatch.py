"""Which framework a model belongs to, without importing any framework (array-api-compat style).

A framework that was never imported cannot own the object, so detection looks the framework up in
``sys.modules`` and only then imports the matching adapter. A flag (``backend=``, :func:`set_backend`,
``XFREEZE_BACKEND``) overrides inference in order of precedence, and contradicting the model is an error.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from functools import reduce

from .errors import XFreezeError, check_choice
from ..backends import ADAPTERS

ENV_VAR = "XFREEZE_BACKEND"
_forced: str | None = None
_type_cache: dict[type, str | None] = {}


def set_backend(name: str | None) -> None:
    """Force the backend for every later call (``None`` goes back to inferring it from the model).

    Args:
        name: ``"torch"``, ``"paddle"`` or ``None``.

    Raises:
        XFreezeError: unknown name, or that framework is not installed.

    Example:
        >>> import xfreeze
        >>> xfreeze.set_backend(None)
    """
    global _forced
    if name is not None:
        _check_name(name, "backend")
        _check_installed(name)
    _forced = name


def get_backend(model=None) -> str | None:
    """The backend in force: the one a call on ``model`` would use, else the flag (``None`` = infer).

    Example:
        >>> import xfreeze
        >>> xfreeze.get_backend() is None or xfreeze.get_backend() in ("torch", "paddle")
        True
    """
    if model is not None:
        return adapter_for(model).name
    return _flag(None)


def adapter_for(model, backend: str | None = None):
    """The adapter of ``model``'s framework; raises when ``model`` is no model or contradicts a flag."""
    wanted = _flag(backend)
    found = _detect(type(model))
    if found is None:
        expected = " or ".join(spec.base_class for spec in ADAPTERS.values())
        hint = f" ({wanted} is not installed: {ADAPTERS[wanted].install})" if wanted and not installed(wanted) else ""
        raise XFreezeError(f"{type(model).__name__} is not a supported model type (expected {expected}){hint}")
    if wanted is not None and wanted != found:
        raise XFreezeError(
            f"backend={wanted!r} was requested but {type(model).__name__} is a {ADAPTERS[found].base_class}; "
            f"pass backend={found!r}, or unset the flag (xfreeze.set_backend(None) / {ENV_VAR})"
        )
    return _load(found)


def _flag(backend: str | None) -> str | None:
    if backend is not None:
        _check_name(backend, "backend")
        return backend
    if _forced is not None:
        return _forced
    env = os.environ.get(ENV_VAR) or None
    if env is not None:
        _check_name(env, ENV_VAR)
    return env


def _check_name(name, argument: str) -> None:
    check_choice(argument, name, tuple(ADAPTERS))


def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(ADAPTERS[name].module) is not None
    except (ImportError, ValueError):  # a blocked or half-imported framework
        return False


def _check_installed(name: str) -> None:
    if not installed(name):
        raise XFreezeError(
            f"backend {name!r} needs {ADAPTERS[name].module}, which is not installed: {ADAPTERS[name].install}"
        )


def tensor_backend(value) -> str | None:
    """The framework whose tensor ``value`` is (None for numpy arrays and everything else)."""
    cls = type(value)
    return next((name for name, spec in ADAPTERS.items() if _is_subclass(cls, spec, spec.tensor_class)), None)


def adapter_named(name: str):
    """The adapter of a framework by name; a clear error when that framework is not installed."""
    _check_installed(name)
    return _load(name)


def _detect(cls: type) -> str | None:
    if cls not in _type_cache or _type_cache[cls] is None:  # a framework imported later may own it
        _type_cache[cls] = next((name for name, spec in ADAPTERS.items() if _is_subclass(cls, spec)), None)
    return _type_cache[cls]


def _is_subclass(cls: type, spec, dotted: str | None = None) -> bool:
    framework = sys.modules.get(spec.module)
    if framework is None:
        return False
    try:
        base = reduce(getattr, (dotted or spec.base_class).split(".")[1:], framework)
    except AttributeError:  # a framework still half-way through its own import
        return False
    return isinstance(base, type) and issubclass(cls, base)


def _load(name: str):
    return importlib.import_module(ADAPTERS[name].adapter, package="xfreeze.backends").ADAPTER

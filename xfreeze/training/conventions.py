"""The weight-decay conventions of the libraries users come from, read off the model itself.

timm models name the parameters that must not be decayed: ``no_weight_decay()`` returns names (``pos_embed``,
``cls_token``, ``dist_token`` in a ViT; timm matches them with ``fnmatch``), and some models (Swin, TinyViT) add
``no_weight_decay_keywords()``, substrings of names (``relative_position_bias_table``). timm's ``create_optimizer``
honours the first on the model it is given; xfreeze honours both, on the model and on every submodule that defines
them (a timm backbone inside a model of your own), with names relative to that submodule.
"""

from __future__ import annotations

import fnmatch

import numpy as np

from ..core.errors import XFreezeError

METHODS = ("no_weight_decay", "no_weight_decay_keywords")


def decay_exclusions(view) -> np.ndarray:
    """Per parameter of ``view``: whether a module's own ``no_weight_decay()`` / ``no_weight_decay_keywords()``
    excludes it from weight decay.

    Raises:
        XFreezeError: such a method raises or returns something other than names.
    """
    excluded = np.zeros(len(view.names), dtype=bool)
    lists: dict = {}  # class -> whether it defines either method (looked up once per class, not per module)
    for path, module in zip(view.paths, view.modules):
        if (listing := lists.get(type(module))) is None:
            listing = lists[type(module)] = any(callable(getattr(type(module), m, None)) for m in METHODS)
        if not listing:
            continue
        names, keywords = (_listed(view, path, module, method) for method in METHODS)
        if not names and not keywords:
            continue
        prefix = f"{path}." if path else ""
        for i, name in enumerate(view.names):
            if not name.startswith(prefix):
                continue
            local = name[len(prefix) :]
            if any(fnmatch.fnmatchcase(local, n) for n in names) or any(k in local for k in keywords):
                excluded[i] = True
    return excluded


def _listed(view, path: str, module, method: str) -> list[str]:
    """What ``module.<method>()`` lists, or [] when the module has no such method."""
    listing = getattr(type(module), method, None)  # looked up on the class: a torch Module's __getattr__ is slow
    if not callable(listing):
        return []
    where = f"{type(module).__name__}.{method}()" + (f" (module {path!r})" if path else "")
    try:
        found = getattr(module, method)()
    except Exception as exc:  # the model's own code: any failure is reported with the way out
        raise XFreezeError(
            f"{where} of {view.label} raised {type(exc).__name__}: {exc}.\nHINT: pass model_no_decay=False to "
            "ignore the model's own no-decay lists and name the parameters in no_decay= instead"
        ) from exc
    found = [found] if isinstance(found, str) else found
    try:
        names = list(found or ())
    except TypeError:
        names = [found]
    if not all(isinstance(n, str) for n in names):
        raise XFreezeError(
            f"{where} of {view.label} must return parameter names (a set of str). Received: {found!r}.\nHINT: pass "
            "model_no_decay=False to ignore it"
        )
    return names

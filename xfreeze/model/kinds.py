"""Norm-like parameters no kind recognises: the guard that keeps ``no_decay`` from decaying a norm quietly.

The kinds themselves live in the adapters' ``module_kind`` (the framework's classes, then the registry and the
structural rule of ``xfreeze.backends.kinds``). What is left over here is a module whose class name says it
normalizes but whose shape the structural rule refuses (extra parameters or children: an adaptive norm, a norm
with a projection inside): its 1-D parameters are probably a gain and a shift that should not be decayed.
"""

from __future__ import annotations

import warnings


def unrecognised_norm_like(view) -> list[str]:
    """Names of 1-D parameters owned directly by modules named like a norm that no kind recognises."""
    out = []
    for mi, (module, kind) in enumerate(zip(view.modules, view.kinds)):
        if kind is not None or "norm" not in type(module).__name__.lower():
            continue
        out += [view.names[i] for i in view.direct(mi) if len(view.shapes[i]) == 1]
    return out


def warn_decayed_norms(view, excluded: set) -> None:
    """Warn (with a HINT) when norm-like parameters of ``view`` that nothing recognises would get weight decay."""
    decayed = [n for n in unrecognised_norm_like(view) if n not in excluded]
    if decayed:
        shown = ", ".join(decayed[:6]) + (f" and {len(decayed) - 6} more" if len(decayed) > 6 else "")
        warnings.warn(
            f"no_decay: {len(decayed)} parameters of {view.label} look like norm weights that no kind "
            f"recognises ({shown}); they get weight decay.\nHINT: add them to no_decay, e.g. "
            f'no_decay=("*.bias", "{decayed[0]}") (keep "type:norm" if the model has recognised '
            f'norms), or a "type:{{ClassName}}" pattern.',
            UserWarning,
            stacklevel=4,
        )

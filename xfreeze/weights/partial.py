"""The partial-load policy of ``load_matched`` (and of the conversion it runs): one rule for every source.

* Under half of the keys it was asked to fill (the model's keys less ``skip``) placed, loaded or adapted: an error
  naming the counts, unless ``allow_partial=True`` (or ``allow_empty=True``). Nothing at all placed from a source of
  the model's own framework keeps its own error (the source looks like another model).
* Any shape-mismatched or missing key outside the model's head (what ``replace_head``'s head search finds): a
  ``UserWarning`` with the counts and a ``HINT:`` line, unless ``allow_partial=True``. Those tensors keep their
  initialisation, and a later ``freeze`` would fix them at it.
"""

from __future__ import annotations

import warnings

from ..core.errors import XFreezeError
from ..model.head import find_heads

SHOWN = 5


def check_placed(report, *, allow: bool, converting: str | None, why) -> None:
    """Raise when fewer than half of the keys to fill were placed (``why()``: where a conversion's architectures
    differ, asked only when refusing)."""
    placed = len(report.loaded) + len(report.adapted)
    total = placed + len(report.mismatched) + len(report.missing)
    if allow or 2 * placed >= total:
        return
    what = f"converting the {converting} source" if converting else "load_matched"
    where = f" Where they differ: {'; '.join(why())}." if converting else ""
    raise XFreezeError(
        f"{what} placed {placed} of {total} keys of {report.model} (fewer than half); nothing was changed. "
        f"{_counts(report)}.{where} Pass allow_partial=True to load what does place (or check that the source "
        f"is a checkpoint of this architecture)."
    )


def untouched(report, targets: dict, plan: dict) -> dict:
    """``{model key: tensor}`` of the mismatched (not adapted) and missing keys whose tensor no placed key wrote
    (a tied weight loaded under its other name was written)."""
    written = {id(targets[key]) for key in plan}
    keys = [*report.mismatched, *report.missing]
    return {key: targets[key] for key in keys if id(targets[key]) not in written}


def warn_outside_head(view, report, left: dict) -> None:
    """Warn about the keys in ``left`` that do not belong to the model's head."""
    heads = _head_paths(view)
    outside = [key for key in left if not any(key.startswith(head + ".") for head in heads)]
    if not outside:
        return
    shown = ", ".join(outside[:SHOWN]) + (f", ... (+{len(outside) - SHOWN})" if len(outside) > SHOWN else "")
    mismatched = sum(1 for key in outside if key in report.mismatched)
    warnings.warn(
        f"load_matched did not fill {len(outside)} keys of {report.model} outside its head "
        f"({mismatched} shape-mismatched, {len(outside) - mismatched} missing in the source): {shown}; they keep "
        f"their initial values. "
        f"{_counts(report)}.\nHINT: check that the source is this model's checkpoint; pass skip=[...] for keys "
        f"you mean to keep as they are, or allow_partial=True to accept a partial load (these tensors start from "
        f"their initialisation: freezing them keeps them there).",
        UserWarning,
        stacklevel=3,
    )


def _head_paths(view) -> list:
    try:
        return find_heads(view, "auto")
    except XFreezeError:  # no head, or an ambiguous one: every key counts
        return []


def _counts(report) -> str:
    return (
        f"Loaded {len(report.loaded)}, adapted {len(report.adapted)}, shape-mismatched {len(report.mismatched)}, "
        f"missing {len(report.missing)}"
    )

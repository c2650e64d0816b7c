"""Freezing under DDP / FSDP / Paddle DataParallel (issue 10): checks run before anything changes.

The core calls :func:`guard_trainability_change` from ``freeze``/``unfreeze`` after the plan is computed and before
it is applied; it raises an ``XFreezeError`` (naming the fixes) when the model's wrapper cannot honour the change.
"""
from __future__ import annotations


def guard_trainability_change(view, to_trainable: list[str], to_frozen: list[str]) -> None:
    """Raise before anything changes when ``view``'s wrapper cannot honour the change (no-op for now)."""

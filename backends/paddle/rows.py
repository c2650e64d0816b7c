"""Paddle: a parameter split by rows (issue 21). The whole parameter stays registered, frozen; a trainable parameter
holds the trainable rows; forward reads the two joined.

The mechanism is ``paddle.nn.utils.weight_norm``'s (a forward pre-hook that sets the computed weight as a plain
attribute, which ``layer.weight`` finds before the registered parameter), the join a ``paddle.index_put`` (out of
place: autograd reaches the rows only). A Linear weight is ``[in, out]``: its rows are columns (``axis`` 1), joined
through a transpose. A forward post-hook removes the attribute again. The rows are written into the whole parameter
(in place, without autograd) at every forward and in a state-dict hook, which also leaves the rows' key out.

Paddle's ``set_state_dict`` runs no hook of ours: it warns that the rows' key is missing and leaves the rows as they
were (the next forward writes them over what was loaded). Load whole tensors into a split model with
``xfreeze.load_matched``, or join first (``xfreeze.freeze`` / ``unfreeze`` of the whole tensor).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import paddle
from paddle.base.framework import EagerParamBase

from ..contract import Adapter, Module, Tensor
from ..defaults import ROWS_ATTR, RowSplit


class PaddleRows(Adapter):
    """Split parameters (``RowSplits``) in Paddle."""

    def split_rows(
        self, module: Module, local: str, rows_local: str, index: Any, axis: int, rows: Any = None
    ) -> Tensor:
        return split(module, local, rows_local, index, axis, rows)

    def join_rows(self, module: Module, local: str) -> None:
        join(module, local)

    def sync_rows(self, module: Module) -> None:
        sync(module)

    def reload_rows(self, module: Module) -> None:
        for local, record in (module.__dict__.get(ROWS_ATTR) or {}).items():
            base, rows = module._parameters[local], module._parameters[record.rows_local]
            with paddle.no_grad():
                rows.set_value(paddle.index_select(base.detach(), _index(record, base), axis=record.axis))


def split(module, local: str, rows_local: str, index: np.ndarray, axis: int, rows: Any = None) -> Any:
    """See ``RowSplits.split_rows``."""
    base = module._parameters[local]
    record = RowSplit(rows_local, np.asarray(index, dtype=np.int64), int(axis), {})
    if rows is None:
        with paddle.no_grad():
            taken = paddle.index_select(base.detach(), _index(record, base), axis=axis).clone()
        rows = EagerParamBase.from_tensor(taken)
        rows.stop_gradient = False
    base.stop_gradient = True
    base.clear_gradient(False)
    module.add_parameter(rows_local, rows)
    module.__dict__.setdefault(ROWS_ATTR, {})[local] = record
    if not any(h is _combine for h in module._forward_pre_hooks.values()):
        module.register_forward_pre_hook(_combine)
        module.register_forward_post_hook(_release)
        module.register_state_dict_hook(functools.partial(_save_hook, module))
    return rows


def join(module, local: str) -> None:
    """See ``RowSplits.join_rows``."""
    records = module.__dict__.get(ROWS_ATTR) or {}
    record = records.pop(local)
    _write(module, local, record)
    module.__dict__.pop(local, None)
    del module._parameters[record.rows_local]
    if not records:
        module.__dict__.pop(ROWS_ATTR, None)
        for hooks in (module._forward_pre_hooks, module._forward_post_hooks, module._state_dict_hooks):
            for key in [k for k, h in hooks.items() if _ours(h)]:
                del hooks[key]


def sync(module) -> None:
    """See ``RowSplits.sync_rows``."""
    for local, record in (module.__dict__.get(ROWS_ATTR) or {}).items():
        _write(module, local, record)


def _ours(hook: Any) -> bool:
    return hook is _combine or hook is _release or (isinstance(hook, functools.partial) and hook.func is _save_hook)


def _index(record: RowSplit, like: Any) -> Any:
    place = str(like.place)
    index = record.cache.get(place)
    if index is None:
        index = record.cache[place] = paddle.to_tensor(record.index, dtype="int64", place=like.place)
    return index


def _joined(base: Any, index: Any, rows: Any, axis: int) -> Any:
    """``base`` with ``rows`` in place of its rows ``index`` on ``axis``, out of place (gradients reach ``rows``)."""
    if axis == 0:  # index_put: Paddle 3.3's CPU scatter has no bfloat16 kernel
        return paddle.index_put(base, (index,), rows)
    return paddle.index_put(base.t(), (index,), rows.t()).t()


def _write(module, local: str, record: RowSplit) -> None:
    base, rows = module._parameters[local], module._parameters[record.rows_local]
    with paddle.no_grad():
        if record.axis == 0:
            paddle.index_put_(base, (_index(record, base),), rows.detach())
        else:
            paddle.assign(_joined(base.detach(), _index(record, base), rows.detach(), record.axis), output=base)


def _combine(module, args: Any) -> None:
    for local, record in (module.__dict__.get(ROWS_ATTR) or {}).items():
        _write(module, local, record)  # the whole parameter follows the rows (what a user reading it sees)
        base, rows = module._parameters[local], module._parameters[record.rows_local]
        module.__dict__[local] = _joined(base.detach(), _index(record, base), rows, record.axis)


def _release(module, args: Any, output: Any) -> None:
    for local in module.__dict__.get(ROWS_ATTR) or {}:
        module.__dict__.pop(local, None)


def _save_hook(module, state: dict) -> None:
    records = module.__dict__.get(ROWS_ATTR) or {}
    sync(module)
    mine = {r.rows_local for r in records.values()}
    for key in [k for k in state if k.rpartition(".")[2] in mine]:
        del state[key]

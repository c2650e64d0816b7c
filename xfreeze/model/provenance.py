"""Where a model's tensors came from: the tensors the last load left at their initialisation.

``load_matched`` records, per model, the tensors it did not reach (shape-mismatched or missing keys); ``freeze``
asks for them and warns when it is about to fix one of them for the rest of a run (issue 18, item 2). The record is
held per model without keeping the model (or the recorded tensors) alive, and a tensor counts only while it is still
the model's tensor at that key: a head that ``replace_head`` made afterwards is new, not "left at its
initialisation".
"""

from __future__ import annotations

import threading
import weakref

from .view import view_of

# model -> {state key: a weak reference to the tensor the load left untouched}; weakly keyed so a recorded model is
# collected as before (a model object that cannot be weakly referenced is not recorded: no warning for it)
_records: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def record_load(model, untouched: dict) -> None:
    """Remember the tensors the last load_matched left at their initialisation ({model key: the model's tensor
    object}); replaces any earlier record for this model.

    Args:
        model: the model that was loaded.
        untouched: ``{state key: the model's tensor at that key}`` for every key the load did not write.
    """
    record = {str(key): _ref(tensor) for key, tensor in dict(untouched).items()}
    with _lock:
        try:
            if record:
                _records[model] = record
            else:
                _records.pop(model, None)
        except TypeError:  # a model that cannot be weakly referenced
            pass


def untouched(model) -> dict:
    """{key: tensor} of the last record whose tensor is still the model's tensor at that key (a replaced head's new
    tensors are not), else {}.

    Args:
        model: a model that ``record_load`` may have seen.

    Returns:
        dict: ``{state key: tensor}``; empty when no load was recorded or none of its tensors is still in place.
    """
    record = _record_of(model)
    if not record:
        return {}
    alive = {key: ref() for key, ref in record.items()}
    alive = {key: tensor for key, tensor in alive.items() if tensor is not None}
    if not alive:
        return {}
    current = view_of(model).adapter.state_tensors(model)
    return {key: tensor for key, tensor in alive.items() if current.get(key) is tensor}


def _record_of(model) -> dict:
    with _lock:
        try:
            return _records.get(model) or {}
        except TypeError:
            return {}


def _ref(tensor):
    """A weak reference (a dropped tensor is not kept alive by the record), or a strong one where none can be made."""
    try:
        return weakref.ref(tensor)
    except TypeError:
        return lambda: tensor

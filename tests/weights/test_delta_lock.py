"""load_delta takes the per-model lock that freeze / unfreeze take (reentrant), from its first check to its last
write: another thread cannot change the model between what was checked and what is written."""

from __future__ import annotations

import threading


import xfreeze
from harness import Spec, random_state
from xfreeze.model.freeze import model_lock
from xfreeze.weights import delta as delta_module

CNN = Spec("cnn", (4, 3))


def base(fw):
    model = fw.build(CNN)
    fw.load(model, random_state(CNN, "float32", 0))
    return model


def saved_delta(fw, tmp_path):
    """A delta training the head only (every norm of the rest locked), and its path."""
    model = base(fw)
    head = CNN.module_names()[-1]
    xfreeze.freeze(model, "*", f"!{head}")
    return xfreeze.save_delta(model, tmp_path / "d.safetensors"), head


def held_elsewhere(model) -> bool:
    """Whether another thread finds the model's lock taken (tried without waiting)."""
    found: list = []

    def probe():
        lock = model_lock(model)
        got = lock.acquire(blocking=False)
        if got:
            lock.release()
        found.append(not got)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return found[0]


def test_load_delta_holds_the_model_lock_while_it_checks_and_writes(fw, tmp_path, monkeypatch):
    path, _ = saved_delta(fw, tmp_path)
    model = base(fw)
    seen: dict = {}
    place, apply = delta_module.place, delta_module._apply

    def checking(adapter, target, *args):
        seen["checks"] = held_elsewhere(target)
        return place(adapter, target, *args)

    def writing(adapter, target, placement):
        seen["writes"] = held_elsewhere(target)
        return apply(adapter, target, placement)

    monkeypatch.setattr(delta_module, "place", checking)
    monkeypatch.setattr(delta_module, "_apply", writing)
    xfreeze.load_delta(model, path)
    assert seen == {"checks": True, "writes": True}
    assert not held_elsewhere(model)  # released afterwards


def test_load_delta_inside_the_lock_of_the_same_thread_does_not_wait(fw, tmp_path):
    """Reentrant: a caller already holding the model's lock (a staged schedule, a callback) may load a delta."""
    path, head = saved_delta(fw, tmp_path)
    model = base(fw)
    done: list = []

    def load():
        with model_lock(model):
            done.append(xfreeze.load_delta(model, path).trainable)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=120)  # a lock that is not reentrant never returns: the thread is still alive
    assert not thread.is_alive() and done == [[f"{head}.weight", f"{head}.bias"]]


def test_a_freeze_from_another_thread_waits_until_load_delta_has_written(fw, tmp_path, monkeypatch):
    """A freeze started between load_delta's checks and its writes runs after the writes: the model ends frozen.
    Without the lock it would run in between, and the delta's plan (head trainable) would win."""
    path, _ = saved_delta(fw, tmp_path)
    model = base(fw)
    apply = delta_module._apply
    freezer = threading.Thread(target=xfreeze.freeze, args=(model, "*"), daemon=True)

    def writing(adapter, target, placement):
        freezer.start()
        freezer.join(timeout=1.0)  # room for the freeze to run now, were the model not locked
        return apply(adapter, target, placement)

    monkeypatch.setattr(delta_module, "_apply", writing)
    xfreeze.load_delta(model, path)
    freezer.join(timeout=120)
    assert not freezer.is_alive()
    assert fw.trainable_names(model) == []

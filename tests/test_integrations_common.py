"""What every integration's callback checks when it is built, before it sees a model (one test, four callbacks)."""

import importlib

import pytest

from xfreeze import Stage, XFreezeError

CALLBACKS = ["lightning", "transformers", "hapi", "paddlenlp"]


def finetuning(name):
    return importlib.import_module(f"xfreeze.integrations.{name}").Finetuning


@pytest.mark.parametrize("name", CALLBACKS)
def test_a_stage_batch_size_is_refused_with_the_fix(name):
    """Stage.batch_size is for hand-written loops: the framework builds the loader, so a callback would ignore it."""
    stages = [Stage(0, freeze=["a"]), Stage(2, unfreeze=["a"], batch_size=16)]
    with pytest.raises(XFreezeError, match=r"stages\[1\]\.batch_size=16: the training framework builds(.|\n)*HINT"):
        finetuning(name)(stages)


@pytest.mark.parametrize("name", CALLBACKS)
@pytest.mark.parametrize(
    "stages, options, message",
    [
        ([], {}, r"stages must be a non-empty list of xfreeze.Stage"),
        (["a"], {}, r"stages must be a non-empty list of xfreeze.Stage"),
        ([Stage(0, freeze=["a"])], {"unit": "batch"}, r"Expected one of \('epoch', 'step'\)"),
        ([Stage(0, freeze=["a"])], {"ema": 1.0}, r"ema must be None or a decay in \(0, 1\)"),
        ([Stage(0, freeze=["a"])], {"ema": True}, r"ema must be None or a decay in \(0, 1\)"),
    ],
)
def test_bad_arguments_are_named(name, stages, options, message):
    with pytest.raises(XFreezeError, match=message):
        finetuning(name)(stages, **options)

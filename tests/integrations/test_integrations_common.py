"""What every integration's callback checks when it is built, before it sees a model (one test, four callbacks)."""

import importlib

import pytest

from xfreeze import Stage, XFreezeError
from harness import kit

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


def _tiny(framework):
    fw = kit(framework)
    return fw.nn.Sequential(fw.linear(3, 3), fw.linear(3, 2)), fw


FACTORIES = {  # callback module -> (framework, its optimizer factory's name)
    "transformers": ("torch", "optimizers"),
    "hapi": ("paddle", "optimizer"),
    "paddlenlp": ("paddle", "optimizers"),
}


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize(
    "options, message",
    [
        ({"lr": -1.0}, r"lr must be > 0"),
        ({"lr": 0.1, "lr_mult": {"2": 10}}, r"Pattern '2' matched no parameters"),
        ({"lr": 0.1, "no_decay": ["*.bais"]}, r"matched no parameters"),
        ({"lr": 0.1, "alpha": 0.9}, r"unexpected options \['alpha'\] for name='adamw'"),
        ({"lr": 0.1, "layer_decay": 0}, r"layer_decay must be in \(0, 1\]"),
    ],
)
def test_a_bad_factory_argument_is_refused_before_stage_0_changes_the_model(name, options, message):
    framework, method = FACTORIES[name]
    model, fw = _tiny(framework)
    callback = finetuning(name)([Stage(0, freeze=["0"])])
    with pytest.raises(XFreezeError, match=message):
        getattr(callback, method)(model, "adamw", **options)
    assert all(fw.is_trainable(p) for p in model.parameters())  # untouched
    assert not callback.staging.prepared


@pytest.mark.parametrize(
    "schedule, message",
    [
        ({"scheduler": "linear"}, r"scheduler='linear' cannot be built: .*requires `num_training_steps`"),
        ({"scheduler": "cosine_anealing", "num_training_steps": 8}, r"cosine_anealing is not a valid SchedulerType"),
        ({"scheduler": "warmup_stable_decay"}, r"warmup_stable_decay.*num_(decay|stable)_steps"),
    ],
)
def test_a_bad_hugging_face_schedule_is_refused_before_stage_0_changes_the_model(schedule, message):
    model, _ = _tiny("torch")
    callback = finetuning("transformers")([Stage(0, freeze=["0"])])
    with pytest.raises(XFreezeError, match=message):
        callback.optimizers(model, "adamw", lr=0.1, **schedule)
    assert all(p.requires_grad for p in model.parameters())
    opt, sched = callback.optimizers(
        model,
        "adamw",
        lr=0.1,
        scheduler="warmup_stable_decay",
        scheduler_kwargs={"num_decay_steps": 4, "num_stable_steps": 4},
    )
    assert sched.optimizer is opt and not model[0].weight.requires_grad

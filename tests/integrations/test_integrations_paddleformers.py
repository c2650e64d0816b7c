"""xfreeze.integrations.paddlenlp.Finetuning in a real PaddleFormers Trainer (current stack; CPU, tiny Llama from a
config): the same callback serves PaddleNLP's Trainer (tests/integrations/test_integrations_paddlenlp.py, classic
stack) and PaddleFormers'."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.current_stack

import paddle  # noqa: E402
from paddleformers.trainer import Trainer, TrainerCallback, TrainingArguments  # noqa: E402
from paddleformers.transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from xfreeze import Stage, XFreezeError  # noqa: E402
from xfreeze.integrations.paddlenlp import Finetuning  # noqa: E402

STAGES = [
    Stage(0, freeze=["model.embed_tokens", "model.layers.0"]),
    Stage(1, unfreeze=["model.layers.0"], lr=2**-10),
]
LR, EPOCHS, STEPS = 2**-8, 2, 4  # 16 examples, batch 4
FROZEN, UNFROZEN_LATER = "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"


def llama():
    paddle.seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        fuse_rms_norm=False,  # the fused kernel is GPU-only
        tie_word_embeddings=False,  # else lm_head is the (frozen) embedding
    )
    return LlamaForCausalLM(config)


def dataset():
    g = np.random.default_rng(0)
    rows = [g.integers(1, 64, 9).tolist() for _ in range(16)]
    return [{"input_ids": row[:-1], "labels": row[1:]} for row in rows]


class Seen(TrainerCallback):
    """The trainable parameter names and the optimizer's groups at each step's beginning."""

    def __init__(self, model):
        self.model, self.trainable, self.groups = model, {}, {}

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.trainable[state.global_step] = {n for n, p in self.model.named_parameters() if not p.stop_gradient}
        self.groups[state.global_step] = len(optimizer._param_groups)


def arguments(tmp_path, **more):
    return TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        logging_steps=1000,
        seed=0,
        disable_tqdm=True,
        device="cpu",
        report_to=[],
        amp_master_grad=False,  # its default (True) asks for an AMP O2 run
        save_strategy="no",
        dataloader_shuffle=False,
        **more,
    )


@pytest.mark.slow
def test_paddleformers_trainer_drives_the_stages_and_frozen_tensors_stay_bitwise(tmp_path):
    with paddle.utils.unique_name.guard():
        model, staging = llama(), Finetuning(STAGES)
    assert isinstance(staging, TrainerCallback)
    start = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    seen = Seen(model)
    schedule = paddle.optimizer.lr.PolynomialDecay(learning_rate=LR, decay_steps=EPOCHS * STEPS, end_lr=0.0)
    trainer = Trainer(
        model=model,
        args=arguments(tmp_path, num_train_epochs=EPOCHS),
        train_dataset=dataset(),
        callbacks=[staging, seen],
        optimizers=staging.optimizers(model, "adamw", lr=schedule, weight_decay=2**-8),
    )
    trainer.train()
    end = {k: v.numpy() for k, v in model.state_dict().items()}
    assert np.array_equal(start[FROZEN], end[FROZEN])  # frozen through both stages: bit for bit
    assert UNFROZEN_LATER not in seen.trainable[0] and UNFROZEN_LATER in seen.trainable[STEPS]  # stage boundary
    assert FROZEN not in seen.trainable[STEPS]
    assert seen.groups[STEPS] > seen.groups[0]  # layer 0 joined the optimizer at epoch 1
    assert not np.array_equal(start[UNFROZEN_LATER], end[UNFROZEN_LATER])
    assert not np.array_equal(start["lm_head.weight"], end["lm_head.weight"])


def test_the_default_optimizer_over_every_parameter_is_refused(tmp_path):
    trainer = Trainer(
        model=llama(), args=arguments(tmp_path, max_steps=1), train_dataset=dataset(), callbacks=[Finetuning(STAGES)]
    )
    with pytest.raises(XFreezeError, match=r"AdamW was not built by xfreeze. Build it with xfreeze.optimizer"):
        trainer.train()  # before the first step


def test_stages_that_name_nothing_fail_when_the_factory_runs():
    with pytest.raises(XFreezeError, match=r"matched no parameters"):
        Finetuning([Stage(0, freeze=["model.embed_token"])]).optimizers(llama(), "adamw", lr=LR)


@pytest.mark.slow
def test_the_callback_subclasses_the_trainer_packages_the_process_imported():
    """Neither imported: the installed one is (here PaddleFormers); both imported (PaddleNLP stood in by a module
    with a TrainerCallback): the callback is an instance of both, so either Trainer drives it."""
    script = textwrap.dedent(
        """
        import importlib, sys, types
        import torch  # before paddleformers (it hides torch from transformers otherwise)
        assert "paddleformers.trainer" not in sys.modules
        from xfreeze.integrations import paddlenlp as first
        import paddleformers.trainer as pf
        assert first.Finetuning.__mro__[2] is pf.TrainerCallback, first.Finetuning.__mro__
        del sys.modules["xfreeze.integrations.paddlenlp"]
        stand_in = types.ModuleType("paddlenlp.trainer")
        stand_in.TrainerCallback = type("TrainerCallback", (), {})
        sys.modules["paddlenlp"] = types.ModuleType("paddlenlp")
        sys.modules["paddlenlp.trainer"] = stand_in
        both = importlib.import_module("xfreeze.integrations.paddlenlp")
        from xfreeze import Stage
        callback = both.Finetuning([Stage(0, freeze=["x"])])
        assert isinstance(callback, stand_in.TrainerCallback) and isinstance(callback, pf.TrainerCallback)
        print("ok")
        """
    )
    env = {"FLAGS_enable_paddleformers_monkey_patch": "0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.stdout.strip().endswith("ok"), done.stderr[-3000:]

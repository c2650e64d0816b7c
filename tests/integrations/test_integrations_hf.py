"""xfreeze.integrations.transformers.Finetuning in a real Hugging Face Trainer (CPU, tiny BERT from a config)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import xfreeze  # noqa: E402
from xfreeze import Stage, XFreezeError  # noqa: E402
from xfreeze.integrations.transformers import Finetuning  # noqa: E402
from harness import tiny_text_config  # noqa: E402

STAGES = [
    Stage(0, freeze=["bert.embeddings", "bert.encoder.layer.0"]),
    Stage(1, unfreeze=["bert.encoder.layer.0"], lr=2**-10),
]
LR, EPOCHS, STEPS = 2**-8, 3, 4  # 16 examples, batch 4: 4 steps an epoch


def bert():
    torch.manual_seed(0)
    config = tiny_text_config(transformers.BertConfig)
    return transformers.BertForSequenceClassification(config)


def dataset():
    g = np.random.default_rng(0)
    return [
        {
            "input_ids": torch.tensor(g.integers(1, 40, 8)),
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": torch.tensor(int(g.integers(0, 2))),
        }
        for _ in range(16)
    ]


def args(tmp_path, cls=None, **extra):
    return (cls or transformers.TrainingArguments)(
        output_dir=str(tmp_path),
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to=[],
        seed=0,
        save_strategy="epoch",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **extra,
    )


class CpuProcessGroupArgs(transformers.TrainingArguments):
    """transformers 4.57 resumes with torch.load(map_location=args.device), which is "cpu:<rank>" in a CPU process
    group, and torch 2.14 rejects "cpu:0" (it fails the same without xfreeze); on GPUs args.device is "cuda:<rank>"."""

    @property
    def device(self):
        device = super().device
        return torch.device("cpu") if device.type == "cpu" else device


class Rates(transformers.TrainerCallback):
    def __init__(self):
        self.seen, self.grads = {}, {}

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.seen[state.global_step] = [g["lr"] for g in optimizer.param_groups]

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        w = model.bert.encoder.layer[0].attention.self.query.weight
        self.grads[state.global_step] = None if w.grad is None else float(w.grad.abs().sum())


def weights(model):
    return {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}


def fit(tmp_path, stages=STAGES, resume=None, rates=None, ema=None, callback=Finetuning, unit="epoch", **extra):
    model, staging = bert(), callback(stages, ema=ema, unit=unit)
    trainer = transformers.Trainer(
        model=model,
        args=args(tmp_path, **extra),
        train_dataset=dataset(),
        callbacks=[staging] + ([rates] if rates else []),
        optimizers=staging.optimizers(
            model, "adamw", lr=LR, weight_decay=2**-8, layer_decay=0.5, num_training_steps=EPOCHS * STEPS
        ),
    )
    trainer.train(resume_from_checkpoint=resume)
    model.staging = staging
    return model


@pytest.mark.slow
def test_trainer_stages_rates_frozen_bits_and_exact_resume(tmp_path):
    start, rates = weights(bert()), Rates()
    done = fit(tmp_path, rates=rates, ema=0.5)
    end = weights(done)
    emb = "bert.embeddings.word_embeddings.weight"
    assert np.array_equal(start[emb], end[emb])
    first, boundary, later = rates.seen[0], rates.seen[STEPS], rates.seen[STEPS + 2]
    assert len(boundary) > len(first)  # layer 0 joined at the epoch-1 boundary, in groups of its own
    factor = 1 - STEPS / (EPOCHS * STEPS)  # the linear schedule where the boundary comes
    # layer 0 is block 1 of 2: the stage rate times layer_decay ** 2, at the schedule's factor
    assert boundary[len(first)] == pytest.approx(2**-10 * 0.5**2 * factor)
    assert later[len(first)] / later[0] == pytest.approx(boundary[len(first)] / boundary[0])  # schedule drives it
    assert later[len(first)] < boundary[len(first)]
    assert rates.grads[0] is None and rates.grads[STEPS] > 0

    for saved in (STEPS, 2 * STEPS):  # before the boundary (it comes live in the resumed run) and after it
        again = fit(tmp_path / f"b{saved}", resume=str(tmp_path / f"checkpoint-{saved}"), ema=0.5)
        for key, value in weights(again).items():
            assert np.array_equal(value, end[key]), (saved, key)
        shadow, expected = again.staging.ema.state_dict()["shadow"], done.staging.ema.state_dict()["shadow"]
        assert all(np.array_equal(value.numpy(), expected[key].numpy()) for key, value in shadow.items()), saved


@pytest.mark.slow
def test_step_unit_boundary_mid_epoch_and_exact_resume(tmp_path):
    stages = [STAGES[0], Stage(6, unfreeze=["bert.encoder.layer.0"], lr=2**-10)]  # step 6: inside epoch 1
    rates = Rates()
    end = weights(fit(tmp_path, stages, rates=rates, unit="step"))
    sizes = [len(rates.seen[step]) for step in range(EPOCHS * STEPS)]
    assert sizes[:6] == [sizes[0]] * 6 and sizes[6:] == [sizes[6]] * 6 and sizes[6] > sizes[0]
    factor = 1 - 6 / (EPOCHS * STEPS)
    assert rates.seen[6][sizes[0]] == pytest.approx(2**-10 * 0.5**2 * factor)  # stage rate, layer decay, schedule
    again = fit(tmp_path / "b", stages, resume=str(tmp_path / f"checkpoint-{2 * STEPS}"), unit="step")
    for key, value in weights(again).items():
        assert np.array_equal(value, end[key]), key


class WithoutInputGrads(Finetuning):
    input_grads_for_checkpointing = False


@pytest.mark.slow
@pytest.mark.parametrize("callback", [Finetuning, WithoutInputGrads])
def test_gradient_checkpointing_with_frozen_embeddings_reaches_the_first_layer(tmp_path, callback):
    rates = Rates()
    stages = [Stage(0, freeze=["bert.embeddings"])]
    fit(tmp_path, stages=stages, rates=rates, callback=callback, gradient_checkpointing=True, max_steps=1)
    if callback is Finetuning:
        assert rates.grads[0] is not None and rates.grads[0] > 0
    else:  # transformers #21381 as it is: reentrant checkpointing, frozen inputs, no gradient for layer 0
        assert rates.grads[0] is None


def test_stages_that_name_nothing_fail_when_the_trainer_is_built(tmp_path):
    with pytest.raises(XFreezeError, match=r"matched no parameters"):
        transformers.Trainer(
            model=bert(),
            args=args(tmp_path),
            train_dataset=dataset(),
            callbacks=[Finetuning([Stage(0, freeze=["bert.embedings"])])],
        )


def test_an_optimizer_built_before_stage_0_is_refused(tmp_path):
    model = bert()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    with pytest.raises(XFreezeError, match=r"built before the stage could be applied"):
        transformers.Trainer(
            model=model,
            args=args(tmp_path),
            train_dataset=dataset(),
            optimizers=(opt, None),
            callbacks=[Finetuning(STAGES)],
        )


@pytest.mark.slow
def test_a_checkpoint_from_another_stage_plan_is_refused(tmp_path):
    fit(tmp_path, max_steps=STEPS)
    other = [STAGES[0], Stage(2, unfreeze=["bert.encoder.layer.0"], lr=2**-10)]
    with pytest.raises(XFreezeError, match=r"different stage plan"):
        fit(tmp_path / "b", stages=other, resume=str(tmp_path / f"checkpoint-{STEPS}"))


@pytest.mark.slow
def test_the_trainers_own_optimizer_grows_at_the_boundary(tmp_path):
    rates, model = Rates(), bert()
    trainer = transformers.Trainer(
        model=model,
        args=args(tmp_path, learning_rate=LR, weight_decay=2**-6),
        train_dataset=dataset(),
        callbacks=[Finetuning(STAGES, lr_mult={"bert.encoder.layer.0.output": 2}), rates],
    )
    with pytest.warns(UserWarning, match=r"cannot be resumed(.|\n)*HINT: build the Trainer with optimizers="):
        trainer.train()  # it saves every epoch: a resume after epoch 1 would fail in torch's load_state_dict
    first, boundary = rates.seen[0], rates.seen[STEPS]
    assert len(boundary) > len(first)  # the Trainer's AdamW (built after stage 0) got layer 0 as new groups
    assert boundary[len(first)] == pytest.approx(2**-10 * (1 - STEPS / (EPOCHS * STEPS)))
    assert len(trainer.optimizer.param_groups) == len(boundary)
    added = {r.name: r for r in xfreeze.param_table(model, trainer.optimizer.optimizer).rows}
    layer0 = "bert.encoder.layer.0."
    # the Trainer's decay (args.weight_decay, in its groups; AdamW's own default 0.01 is not it), none for norms
    # and biases; the callback's lr_mult on top of the stage rate
    assert added[layer0 + "attention.self.query.weight"].weight_decay == 2**-6
    assert added[layer0 + "attention.self.query.bias"].weight_decay == 0.0
    assert added[layer0 + "output.LayerNorm.weight"].weight_decay == 0.0
    layer = model.bert.encoder.layer[0]
    query, output = (  # nominal rates (the linear schedule has reached 0 by now)
        next(g["initial_lr"] for g in trainer.optimizer.param_groups if any(p is w for p in g["params"]))
        for w in (layer.attention.self.query.weight, layer.output.dense.weight)
    )
    assert (query, output) == pytest.approx((2**-10, 2**-9))


@pytest.mark.slow
@pytest.mark.distributed
def test_trainer_ddp_keeps_its_wrapper_and_averages_newly_unfrozen_gradients(tmp_path):
    """2 ranks over gloo, torchrun's environment: the Trainer wraps the model in DDP and a DistributedSampler gives
    each rank different data, so a newly unfrozen layer whose gradients were not averaged would differ by rank."""
    import dist_workers as W

    r0, r1 = W.launch_torch(W.torch_hf_ddp, tmp_path, root=str(tmp_path))
    for key in ("run", "resumed"):
        assert r0[key]["error"] is None and r1[key]["error"] is None, (r0[key]["error"], r1[key]["error"])
        assert r0[key]["wrapper"] == "DistributedDataParallel"
        assert all(np.array_equal(r0[key]["end"][k], r1[key]["end"][k]) for k in r0[key]["end"]), key
    run, resumed = r0["run"], r0["resumed"]
    layer0, emb = "bert.encoder.layer.0.attention.self.query.weight", "bert.embeddings.word_embeddings.weight"
    assert np.array_equal(run["start"][emb], run["end"][emb])  # frozen throughout: bitwise fixed
    assert not np.array_equal(run["start"][layer0], run["end"][layer0])  # unfrozen at epoch 1 under DDP: trained
    assert resumed["groups"] == run["groups"]
    assert all(np.array_equal(resumed["end"][k], run["end"][k]) for k in run["end"])  # resume: bitwise the run
    assert all(np.array_equal(resumed["ema"][k], run["ema"][k]) for k in run["ema"])
    later, later1 = r0["freeze_later"], r1["freeze_later"]  # DDP(find_unused_parameters=True): a freeze is fine
    assert later["error"] is None and later1["error"] is None, (later["error"], later1["error"])
    assert all(np.array_equal(later["end"][k], later1["end"][k]) for k in later["end"])
    layer0 = [k for k in later["end"] if k.startswith("bert.encoder.layer.0.")]
    assert not np.array_equal(later["start"][layer0[0]], later["epochs"][1][layer0[0]])  # trained in epoch 0
    assert all(np.array_equal(later["epochs"][1][k], later["end"][k]) for k in layer0)  # frozen at 1: bitwise fixed
    refused = r0["refused"]  # ddp_find_unused_parameters=False: the DDP would wait for layer 0's gradients
    assert "stages[1] (at=1) freezes" in refused["error"] and "DistributedDataParallel" in refused["error"]
    assert "HINT: freeze them in the first stage" in refused["error"]
    assert "ddp_find_unused_parameters=True" in refused["error"]
    assert all(np.array_equal(refused["start"][k], refused["end"][k]) for k in run["end"] if "layer.0" in k)

"""xfreeze.integrations.hapi.Finetuning in a real paddle.Model.fit (CPU, tiny CNN, generated data)."""

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from xfreeze import Stage, XFreezeError  # noqa: E402
from xfreeze.integrations.hapi import Finetuning  # noqa: E402

STAGES = [Stage(0, freeze=["0", "1", "3", "4"]), Stage(2, unfreeze=["3", "4"], lr=0.01)]
STEPS = 4  # 32 examples, batch 8


def cnn():
    nn = paddle.nn
    paddle.seed(0)
    return nn.Sequential(
        nn.Conv2D(3, 4, 3, padding=1),
        nn.BatchNorm2D(4),
        nn.ReLU(),
        nn.Conv2D(4, 4, 3, padding=1),
        nn.BatchNorm2D(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2D(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def dataset():
    g = np.random.default_rng(0)
    x = g.standard_normal((32, 3, 6, 6)).astype("float32")
    y = g.integers(0, 3, (32, 1)).astype("int64")
    return paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])


class Rates(paddle.callbacks.Callback):
    """Absolute group rates of the live optimizer at the start of every epoch and every batch (after Finetuning)."""

    def __init__(self):
        super().__init__()
        self.seen, self.steps = [], []

    def rates(self):
        opt = self.model._optimizer
        return [opt.get_lr() * g["learning_rate"] for g in opt._param_groups]

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(self.rates())

    def on_train_batch_begin(self, step, logs=None):
        self.steps.append(self.rates())


def run(stages=STAGES, *, epochs, load=None, save_dir=None, rates=None, ema=None, out=None, unit="epoch"):
    """One fit in a fresh name scope: a restarted process gives parameters and accumulators the same names."""
    with paddle.utils.unique_name.guard():
        net, staging = cnn(), Finetuning(stages, ema=ema, unit=unit)
        if out is not None:
            out.append(staging)
        sched = paddle.optimizer.lr.StepDecay(learning_rate=0.1, step_size=STEPS, gamma=0.5)
        model = paddle.Model(net)
        model.prepare(
            staging.optimizer(net, "sgd", lr=sched, momentum=0.875, weight_decay=2**-10), paddle.nn.CrossEntropyLoss()
        )
        if load is not None:
            model.load(str(load))
        model.fit(
            dataset(),
            epochs=epochs,
            batch_size=8,
            shuffle=False,
            verbose=0,
            save_dir=save_dir,
            callbacks=[staging] + ([rates] if rates else []),
        )
        return {k: v.numpy().copy() for k, v in net.state_dict().items()}


@pytest.mark.slow
def test_fit_stages_rates_frozen_bits_and_exact_resume(tmp_path):
    with paddle.utils.unique_name.guard():
        start = {k: v.numpy().copy() for k, v in cnn().state_dict().items()}
    rates = Rates()
    first = []
    end = run(epochs=4, save_dir=str(tmp_path), rates=rates, ema=0.5, out=first)
    assert rates.seen[0] == pytest.approx([0.1, 0.1])
    assert rates.seen[1] == pytest.approx([0.05, 0.05])
    assert rates.seen[2] == pytest.approx([0.025, 0.025, 0.0025, 0.0025])
    assert rates.seen[3] == pytest.approx([0.0125, 0.0125, 0.00125, 0.00125])  # the scheduler drives new groups
    for key in ("0.weight", "0.bias", "1.weight", "1._mean", "1._variance"):
        assert np.array_equal(start[key], end[key]), key
    assert not np.array_equal(start["3.weight"], end["3.weight"])

    for saved in (0, 2):  # before and after the boundary
        again = []
        resumed = run(epochs=3 - saved, load=tmp_path / str(saved), ema=0.5, out=again)
        for key, value in resumed.items():
            assert np.array_equal(value, end[key]), (saved, key)
        shadow, expected = again[0].ema.state_dict()["shadow"], first[0].ema.state_dict()["shadow"]
        assert all(np.array_equal(v.numpy(), expected[k].numpy()) for k, v in shadow.items()), saved


@pytest.mark.slow
def test_step_unit_boundary_mid_epoch_and_exact_resume(tmp_path):
    stages = [STAGES[0], Stage(6, unfreeze=["3", "4"], lr=0.01)]  # step 6: in the middle of epoch 1
    rates = Rates()
    end = run(stages, epochs=3, save_dir=str(tmp_path), rates=rates, unit="step")
    assert [len(r) for r in rates.steps] == [2] * 6 + [4] * 6  # the new groups from batch 6 on, not before
    assert rates.steps[6][2:] == pytest.approx([0.05 * 0.1] * 2)  # 0.01 at the schedule's factor 0.5 (epoch 1)
    resumed = run(stages, epochs=1, load=tmp_path / "1", unit="step")  # saved after epoch 1 (step 8)
    for key, value in resumed.items():
        assert np.array_equal(value, end[key]), key


def test_stages_that_name_nothing_fail_before_training():
    with pytest.raises(XFreezeError, match=r"matched no parameters"):
        Finetuning([Stage(0, freeze=["9"])]).optimizer(cnn(), "sgd", lr=0.1)


def test_an_optimizer_built_before_stage_0_is_refused():
    net = cnn()
    model = paddle.Model(net)
    model.prepare(
        paddle.optimizer.Momentum(learning_rate=0.1, parameters=net.parameters()), paddle.nn.CrossEntropyLoss()
    )
    before = net[0].weight.numpy().copy()
    with pytest.raises(XFreezeError, match=r"xfreeze.optimizer"):
        model.fit(dataset(), epochs=1, batch_size=8, verbose=0, callbacks=[Finetuning(STAGES)])
    assert np.array_equal(before, net[0].weight.numpy())


@pytest.mark.slow
def test_a_checkpoint_from_another_stage_plan_is_refused(tmp_path):
    run(epochs=1, save_dir=str(tmp_path))
    other = [STAGES[0], Stage(1, unfreeze=["3", "4"], lr=0.01)]
    with pytest.raises(XFreezeError, match=r"different stage plan"):
        run(other, epochs=1, load=tmp_path / "0")


@pytest.mark.slow
@pytest.mark.distributed
def test_fit_on_two_processes_keeps_the_data_parallel_and_averages_newly_unfrozen_gradients(tmp_path):
    """2 processes (paddle.distributed.spawn, gloo): DistributedBatchSampler gives each rank different data."""
    import dist_workers as W

    r0, r1 = W.launch_paddle(W.paddle_hapi_dp, tmp_path, root=str(tmp_path))
    local = ("4._mean", "4._variance")  # a training BatchNorm's statistics are rank-local
    for key in ("run", "resumed"):
        assert r0[key]["wrapper"] == "DataParallel"
        assert all(np.array_equal(r0[key]["end"][k], r1[key]["end"][k]) for k in r0[key]["end"] if k not in local)
    run = r0["run"]
    for k in ("0.weight", "1.weight", "1._mean", "1._variance"):
        assert np.array_equal(run["start"][k], run["end"][k]), k  # never unfrozen: bitwise fixed
    assert not np.array_equal(run["start"]["3.weight"], run["end"]["3.weight"])  # unfrozen at epoch 2: trained
    resumed = r0["resumed"]
    assert all(np.array_equal(resumed["end"][k], run["end"][k]) for k in run["end"])  # resume: bitwise the run
    assert all(np.array_equal(resumed["ema"][k], run["ema"][k]) for k in run["ema"])
    assert "before paddle.Model(net)" in r0["wrong_order"]

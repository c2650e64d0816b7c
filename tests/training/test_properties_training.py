"""Property tests for training-time freezing: xfreeze.optimizer groups (lr_mult, no_decay, layer decay), random
staged schedules with LR schedules, and EMA, run in lock-step in torch and Paddle.

Same tolerances as tests/model/test_properties.py: frozen tensors bitwise, torch vs Paddle trainable parameters and EMA
averages within atol=1e-7 in float64 (hyperparameters are dyadic, exact in Paddle's float32 attributes).
"""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, strategies as st

import xfreeze
from harness import BACKENDS, TOLERANCE, Spec, align_running_var, batch, kit, random_state

STEPS = 6

specs = st.one_of(
    st.builds(Spec, st.just("cnn"), st.lists(st.integers(2, 4), min_size=1, max_size=2).map(tuple)),
    st.builds(Spec, st.just("blocks"), st.lists(st.integers(2, 5), min_size=3, max_size=5).map(tuple)),
)


@st.composite
def optimizer_configs(draw, spec: Spec):
    names = spec.module_names()
    name = draw(st.sampled_from(["sgd", "adam", "adamw"]))
    kwargs = {"weight_decay": draw(st.sampled_from([0.0, 2.0**-6, 2.0**-3]))}
    if name == "sgd":
        kwargs["momentum"] = draw(st.sampled_from([0.0, 0.875]))
        kwargs["nesterov"] = kwargs["momentum"] > 0 and draw(st.booleans())
    if draw(st.booleans()):
        kwargs["lr_mult"] = {draw(st.sampled_from(names)): draw(st.sampled_from([2.0, 4.0, 0.5]))}
    if draw(st.booleans()):
        kwargs["no_decay"] = ()
    if spec.kind == "blocks" and draw(st.booleans()):
        kwargs["layer_decay"] = draw(st.sampled_from([0.5, 0.75, 1.0]))
    lr = draw(st.sampled_from([2.0**-5, 2.0**-7])) if name == "sgd" else draw(st.sampled_from([2.0**-7, 2.0**-9]))
    schedule = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.sampled_from([0.5, 0.25]))))
    return name, lr, schedule, kwargs


@st.composite
def stage_lists(draw, spec: Spec):
    names = spec.module_names()
    first = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names) - 1, unique=True))
    stages = [xfreeze.Stage(0, freeze=["*"] + [f"!{n}" for n in first])]
    boundaries = sorted(draw(st.lists(st.integers(1, STEPS - 1), min_size=1, max_size=3, unique=True)))
    for at in boundaries:
        unfreeze = draw(st.lists(st.sampled_from(names + ["*"]), max_size=2, unique=True))
        refreeze = draw(st.lists(st.sampled_from(names), max_size=1))
        lr = draw(st.one_of(st.none(), st.sampled_from([2.0**-6, 2.0**-8])))
        stages.append(xfreeze.Stage(at, freeze=refreeze, unfreeze=unfreeze, lr=lr))
    return stages


@st.composite
def scenarios(draw):
    spec = draw(specs)
    return dict(
        spec=spec,
        opt=draw(optimizer_configs(spec)),
        stages=draw(stage_lists(spec)),
        ema=draw(st.sampled_from([0.5, 0.875])),
        seed=draw(st.integers(0, 2**16)),
    )


class TrainingRun:
    def __init__(self, fw, sc, dtype="float64"):
        self.fw, self.sc, self.dtype = fw, sc, dtype
        spec, (name, lr, schedule, kwargs) = sc["spec"], sc["opt"]
        self.model = fw.build(spec, dtype)
        fw.load(self.model, random_state(spec, dtype, sc["seed"]))
        xfreeze.freeze(self.model, *sc["stages"][0].freeze)
        self.opt, self.sched = fw.xfreeze_optimizer(self.model, name, lr, schedule, **kwargs)
        self.staged = xfreeze.StagedUnfreeze(self.model, self.opt, sc["stages"], unit="step", scheduler=self.sched)
        self.ema = xfreeze.EMA(self.model, decay=sc["ema"])
        self.frozen_since: dict = {}

    def step(self, t):
        self.staged.step(t)
        frozen = set(xfreeze.select(self.model, "*")) - set(self.fw.trainable_names(self.model))
        state = self.fw.state(self.model)
        self.frozen_since = {n: self.frozen_since.get(n, state[n]) for n in frozen}
        self.model.train()
        x, y = batch(self.sc["spec"], self.dtype, self.sc["seed"] + t)
        self.fw.train_step(self.model, self.opt, self.fw.tensor(x), self.fw.labels(y))
        if self.sched is not None:
            self.sched.step()
        self.ema.update()

    def final(self) -> dict:
        return self.fw.state(self.model)

    def ema_state(self):
        import copy

        clone = copy.deepcopy(self.model)
        self.ema.copy_to(clone)
        return self.fw.state(clone)


@given(sc=scenarios())
def test_staged_schedules_groups_and_ema_agree_across_frameworks(sc):
    try:
        runs = [TrainingRun(kit(name), sc) for name in BACKENDS]
    except xfreeze.XFreezeError as exc:  # a stage-0 selection that leaves nothing to train
        assume("no trainable parameters" not in str(exc))
        raise
    for t in range(STEPS):
        if t in {s.at for s in sc["stages"]}:
            align_running_var(runs)
        for r in runs:
            r.step(t)
    finals = [r.final() for r in runs]
    emas = [r.ema_state() for r in runs]
    for r, final, ema in zip(runs, finals, emas):
        for name, value in r.frozen_since.items():  # frozen at the last step: unchanged since it was frozen
            assert np.array_equal(final[name], value), name
            assert np.array_equal(ema[name], final[name]), f"EMA of frozen {name}"
    for name in finals[0]:
        if not name.endswith("running_var"):
            np.testing.assert_allclose(finals[1][name], finals[0][name], rtol=0, atol=TOLERANCE, err_msg=name)
            np.testing.assert_allclose(emas[1][name], emas[0][name], rtol=0, atol=TOLERANCE, err_msg="EMA " + name)

"""Property tests: frozen means frozen in both frameworks, and torch and Paddle train identically.

Random small models (MLP; CNN with BatchNorm) built with identical weights in both frameworks, random selectors,
random optimizers (SGD with momentum / Nesterov and weight decay, Adam, AdamW), freezing before training or in the
middle of it, ``model.train()`` called again after freezing. The optimizer is built over *all* parameters, and
grads are cleared the way that keeps them (``zero_grad(set_to_none=False)`` / ``clear_grad()``): the setting in
which plain torch moves "frozen" weights.

Tolerance: frozen parameters and locked norm statistics are compared bitwise (float32 and float64). Trainable
parameters of the torch and Paddle runs are compared in float64 with ``atol=TOLERANCE`` (1e-7): measured agreement
is ~1e-16 for MLPs and ~1e-9 for CNNs after 6 steps; one missed update (a wrong lr, decay or momentum) is ~1e-3.
Float32 is not compared across frameworks: ReLU training is chaotic enough that one flipped mask moves a gradient
by percents. Running variances are not compared across frameworks (biased vs unbiased update, see harness.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import xfreeze
from harness import BACKENDS, TOLERANCE, OptConfig, Spec, align_running_var, batch, kit, random_state

STEPS = 4

specs = st.one_of(
    st.builds(Spec, st.just("mlp"), st.lists(st.integers(2, 6), min_size=2, max_size=4).map(tuple)),
    st.builds(Spec, st.just("cnn"), st.lists(st.integers(2, 4), min_size=1, max_size=3).map(tuple)),
)
optimizers = st.one_of(
    st.builds(
        OptConfig,
        st.just("sgd"),
        st.sampled_from([2.0**-4, 2.0**-6]),
        st.sampled_from([0.0, 0.875]),
        st.booleans(),
        st.sampled_from([0.0, 2.0**-6]),
    ),
    st.builds(
        OptConfig,
        st.sampled_from(["adam", "adamw"]),
        st.sampled_from([2.0**-6, 2.0**-8]),
        weight_decay=st.sampled_from([0.0, 2.0**-4]),
    ),
).filter(lambda c: not (c.nesterov and c.momentum == 0.0))


@st.composite
def selectors(draw, spec: Spec):
    """A non-empty list of patterns that each match something in ``spec``'s model."""
    names = spec.module_names()
    pool = [
        st.sampled_from(names),
        st.sampled_from(names).map(lambda n: f"{n}.*"),
        st.sampled_from(names).map(lambda n: f"re:{n}\\.(weight|bias)"),
        st.just("*.bias"),
        st.just("type:linear"),
    ]
    if spec.kind == "cnn":
        pool += [st.just("type:norm"), st.just("type:conv"), st.just("*.weight")]
    patterns = draw(st.lists(st.one_of(pool), min_size=1, max_size=3))
    if draw(st.booleans()):
        patterns = ["*"] + [f"!{p}" for p in patterns[:1]] + patterns[1:]
    return patterns


@st.composite
def scenarios(draw):
    spec = draw(specs)
    return dict(
        spec=spec,
        patterns=draw(selectors(spec)),
        opt=draw(optimizers),
        freeze_at=draw(st.integers(0, STEPS - 1)),
        norm=draw(st.sampled_from(["freeze", "train"])),
        seed=draw(st.integers(0, 2**16)),
    )


class Run:
    """One framework's training run of a scenario: STEPS steps, freezing at ``freeze_at``."""

    def __init__(self, fw, sc: dict, dtype: str, device: str = "cpu"):
        self.fw, self.sc, self.dtype, self.device = fw, sc, dtype, device
        self.model = fw.build(sc["spec"], dtype, device)
        fw.load(self.model, random_state(sc["spec"], dtype, sc["seed"]))
        self.opt = fw.optimizer(sc["opt"], self.model)
        self.snapshot, self.report = None, None

    def freeze(self):
        fw, sc, model = self.fw, self.sc, self.model
        self.report = xfreeze.freeze(model, *sc["patterns"], norm=sc["norm"])
        state = fw.state(model)
        locked = [n for n, layer in fw.norm_layers(model) if _is_locked(model, layer)]
        frozen = [n for n in self.report.selected if not (sc["norm"] == "train" and _owner_is_norm(fw, model, n))]
        stats = [f"{n}.{s}" for n in locked for s in ("running_mean", "running_var")]
        self.snapshot = {n: state[n] for n in frozen + stats}

    def step(self, step: int):
        self.model.train()  # called every step: a locked norm layer must stay locked anyway
        x, y = batch(self.sc["spec"], self.dtype, self.sc["seed"] + step)
        self.fw.train_step(self.model, self.opt, self.fw.tensor(x, self.device), self.fw.labels(y, self.device))

    def final(self) -> dict:
        return self.fw.state(self.model)


def run_all(runs: list[Run]) -> list[Run]:
    """Run the scenario in every framework in lock-step (see align_running_var)."""
    for step in range(STEPS):
        if step == runs[0].sc["freeze_at"]:
            align_running_var(runs)
            for r in runs:
                r.freeze()
        for r in runs:
            r.step(step)
    return runs


def _is_locked(model, layer):
    from xfreeze.core.dispatch import adapter_for

    return adapter_for(model).is_norm_locked(layer)


def _owner_is_norm(fw, model, param_name):
    owner = param_name.rpartition(".")[0]
    return owner in dict(fw.norm_layers(model))


def assert_frozen_unchanged(final: dict, snapshot: dict):
    moved = [n for n, v in snapshot.items() if not np.array_equal(final[n], v)]
    assert not moved, f"frozen tensors moved: {moved}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
@given(sc=scenarios())
def test_frozen_parameters_and_locked_statistics_never_move(backend, dtype, sc):
    (r,) = run_all([Run(kit(backend), sc, dtype)])
    final, snapshot, report = r.final(), r.snapshot, r.report
    assume(snapshot)  # "*", "!x" selections can leave nothing frozen; those examples prove nothing here
    assert_frozen_unchanged(final, snapshot)
    # norm="train" keeps norm layers inside the frozen region trainable and their statistics live
    if sc["norm"] == "train":
        assert not report.norms_locked


@pytest.mark.parametrize("dtype", ["float64"])
@given(sc=scenarios())
def test_torch_and_paddle_train_the_same(dtype, sc):
    t, p = run_all([Run(kit(name), sc, dtype) for name in BACKENDS])
    (t_final, t_snap, t_rep), (p_final, p_snap, p_rep) = [(r.final(), r.snapshot, r.report) for r in (t, p)]
    assert t_rep.changed == p_rep.changed and t_rep.norms_locked == p_rep.norms_locked
    assert t_rep.counts == p_rep.counts
    assert sorted(t_final) == sorted(p_final)
    for name in t_final:
        if not name.endswith("running_var"):
            np.testing.assert_allclose(p_final[name], t_final[name], rtol=0, atol=TOLERANCE, err_msg=name)
    assert_frozen_unchanged(t_final, t_snap)
    assert_frozen_unchanged(p_final, p_snap)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@given(sc=scenarios())
def test_frozen_never_moves_on_gpu(backend, sc):
    fw = kit(backend)
    if not fw.cuda_available():
        pytest.skip(f"no CUDA build of {backend} with a visible GPU here")
    (r,) = run_all([Run(fw, sc, "float32", device="gpu")])
    assert_frozen_unchanged(r.final(), r.snapshot)


@pytest.mark.gpu
@given(sc=scenarios())
def test_torch_and_paddle_agree_on_gpu(sc):
    kits = [kit(name) for name in BACKENDS]
    if not all(k.cuda_available() for k in kits):
        pytest.skip("needs CUDA builds of both torch and paddle with a visible GPU")
    t_final, p_final = [r.final() for r in run_all([Run(k, sc, "float64", device="gpu") for k in kits])]
    for name in t_final:
        if not name.endswith("running_var"):
            np.testing.assert_allclose(p_final[name], t_final[name], rtol=0, atol=TOLERANCE, err_msg=name)


@pytest.mark.gpu
@given(sc=scenarios())
def test_torch_on_cuda_and_paddle_on_cpu_agree(sc):
    """The parity that a GPU machine without a CUDA build of Paddle can check: torch on CUDA, Paddle on CPU,
    float64 (cuDNN / CPU kernels round differently by ~1e-15; the tolerance is the same 1e-7)."""
    torch_kit, paddle_kit = kit("torch"), kit("paddle")
    if not torch_kit.cuda_available():
        pytest.skip("no CUDA build of torch with a visible GPU here")
    t, p = run_all([Run(torch_kit, sc, "float64", device="gpu"), Run(paddle_kit, sc, "float64")])
    t_final, p_final = t.final(), p.final()
    for name in t_final:
        if not name.endswith("running_var"):
            np.testing.assert_allclose(p_final[name], t_final[name], rtol=0, atol=TOLERANCE, err_msg=name)
    assert_frozen_unchanged(t_final, t.snapshot)
    assert_frozen_unchanged(p_final, p.snapshot)

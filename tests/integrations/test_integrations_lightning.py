"""xfreeze.integrations.lightning.Finetuning in a real Lightning Trainer (CPU, tiny CNN, generated data).

Both Lightning packages: the standalone ``pytorch_lightning`` and the unified ``lightning`` (``lightning.pytorch``),
whose classes are distinct. Most tests run on the first one installed (``pl``); those taking ``package`` run on
each one installed, with a module and callbacks of that package (a Trainer refuses another package's module).
"""

import functools
import importlib
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _installed(name):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        return None


PACKAGES = {n: m for n in ("pytorch_lightning", "lightning.pytorch") if (m := _installed(n)) is not None}
if not PACKAGES:
    pytest.skip("neither pytorch_lightning nor lightning is installed", allow_module_level=True)
DEFAULT = next(iter(PACKAGES))
pl = PACKAGES[DEFAULT]
each_package = pytest.mark.parametrize("package", list(PACKAGES))
# slow tests run each package in its own stack: pytorch_lightning in the classic one, the unified lightning (which
# requires pytorch_lightning: both are installed there) in the current one
each_package_in_its_stack = pytest.mark.parametrize(
    "package",
    [pytest.param(n, marks=[pytest.mark.current_stack] if n == "lightning.pytorch" else []) for n in PACKAGES],
)
SUPPORT = str(Path(__file__).resolve().parents[1] / "support")

import xfreeze  # noqa: E402
from statehash import state_hash  # noqa: E402
from xfreeze import Stage, XFreezeError  # noqa: E402
from xfreeze.integrations.lightning import Finetuning  # noqa: E402

STAGES = [Stage(0, freeze=["backbone"]), Stage(2, unfreeze=["backbone.3", "backbone.4"], lr=0.01)]


class _Net:
    """The tiny CNN's LightningModule body; :func:`kit` puts it on a package's ``LightningModule``."""

    def __init__(self, optimizer="xfreeze"):
        super().__init__()
        nn = torch.nn
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4, 3)
        self.kind = optimizer

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        if self.kind == "all":  # built over every parameter, whatever stage 0 froze
            return torch.optim.SGD(self.parameters(), lr=0.1)
        if self.kind == "onecycle":  # stepped every batch; cycles momentum too
            opt = xfreeze.optimizer(self, "sgd", lr=0.1, momentum=0.9)
            schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=8)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
        if self.kind == "by hand":  # what Lightning users write; the callback says how stages group the rest
            trainable = [p for p in self.parameters() if p.requires_grad]
            return torch.optim.SGD(trainable, lr=0.1, momentum=0.9, weight_decay=2**-10)
        if self.kind == "two schedulers":
            opt = xfreeze.optimizer(self, "sgd", lr=0.1)
            S = torch.optim.lr_scheduler
            return [opt], [S.LinearLR(opt, 0.5, total_iters=2), S.StepLR(opt, 1)]
        opt = xfreeze.optimizer(self, "sgd", lr=0.1, momentum=0.875, weight_decay=2**-10)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}


class _Rates:
    """The absolute group rates of the live optimizer at the start of every epoch (after Finetuning ran)."""

    def __init__(self):
        self.seen = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.seen[trainer.current_epoch] = [g["lr"] for g in trainer.optimizers[0].param_groups]


class _StepRates:
    """(lr, momentum) of every group at the start of every batch (after Finetuning ran)."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append([(g["lr"], g["momentum"]) for g in trainer.optimizers[0].param_groups])


@functools.cache
def kit(package=DEFAULT):
    """The module and callback classes on ``package``'s ``LightningModule`` / ``Callback``, and the package."""
    lib = PACKAGES[package]
    return SimpleNamespace(
        lib=lib,
        Net=type("Net", (_Net, lib.LightningModule), {}),
        Rates=type("Rates", (_Rates, lib.Callback), {}),
        StepRates=type("StepRates", (_StepRates, lib.Callback), {}),
    )


Net, Rates, StepRates = kit().Net, kit().Rates, kit().StepRates


def data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 6, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)


def net(kind="xfreeze", package=DEFAULT):
    torch.manual_seed(0)
    return kit(package).Net(kind)


def trainer(tmp_path, callbacks, epochs=4, save=False, package=DEFAULT, **options):
    lib = kit(package).lib
    if save:
        callbacks = callbacks + [lib.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)]
    return lib.Trainer(
        **options,
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=save,
        callbacks=callbacks,
        default_root_dir=tmp_path,
    )


def weights(module):
    return {k: v.detach().clone().float().numpy() for k, v in module.state_dict().items()}


@pytest.mark.slow
@each_package_in_its_stack
def test_fit_stages_rates_frozen_bits_and_exact_resume(tmp_path, package):
    model, rates, callback = net(package=package), kit(package).Rates(), Finetuning(STAGES, ema=0.5)
    start = weights(model)
    trainer(tmp_path, [callback, rates], save=True, package=package).fit(model, data())
    end = weights(model)
    # stage 0 trains the head only; stage 2 adds backbone.3/.4 in new groups at 0.01 scaled by the schedule
    assert rates.seen[0] == pytest.approx([0.1, 0.1])
    assert rates.seen[1] == pytest.approx([0.05, 0.05])
    assert rates.seen[2] == pytest.approx([0.025, 0.025, 0.0025, 0.0025])
    assert rates.seen[3] == pytest.approx([0.0125, 0.0125, 0.00125, 0.00125])  # the scheduler drives new groups
    for key in (
        "backbone.0.weight",
        "backbone.0.bias",
        "backbone.1.weight",
        "backbone.1.running_mean",
        "backbone.1.running_var",
    ):
        assert np.array_equal(start[key], end[key]), key  # never unfrozen: bitwise fixed
    assert not np.array_equal(start["backbone.3.weight"], end["backbone.3.weight"])

    for ckpt in ("epoch=0.ckpt", "epoch=2.ckpt"):  # before and after the boundary
        resumed, rates2, callback2 = net(package=package), kit(package).Rates(), Finetuning(STAGES, ema=0.5)
        trainer(tmp_path / "b", [callback2, rates2], package=package).fit(resumed, data(), ckpt_path=tmp_path / ckpt)
        assert rates2.seen[3] == pytest.approx(rates.seen[3])
        for key, value in weights(resumed).items():
            assert np.array_equal(value, end[key]), (ckpt, key)
        for key, value in callback2.ema.state_dict()["shadow"].items():  # the EMA resumes exactly too
            assert np.array_equal(value.numpy(), callback.ema.state_dict()["shadow"][key].numpy()), (ckpt, key)


@pytest.mark.slow
def test_step_unit_and_ema(tmp_path):
    model, rates = net(), Rates()
    callback = Finetuning(
        [Stage(0, freeze=["backbone"]), Stage(6, unfreeze=["backbone"], lr=0.01)], unit="step", ema=0.5
    )
    trainer(tmp_path, [callback, rates], epochs=2).fit(model, data())  # 4 steps an epoch: step 6 in epoch 1
    assert len(rates.seen[1]) == 2
    assert len(model.trainer.optimizers[0].param_groups) > 2
    assert callback.ema.num_updates == 8


@pytest.mark.slow
def test_a_per_batch_one_cycle_schedule_drives_the_groups_a_step_stage_adds(tmp_path):
    """pytorch #79888: OneCycleLR keeps per-group keys, so a group added mid-run crashed its next step. The new
    groups follow the cycle with the stage's rate as their peak (the head's peak is 0.1, the stage's 0.01)."""
    stages = [Stage(0, freeze=["backbone"]), Stage(3, unfreeze=["backbone"], lr=0.01)]
    model, rates, callback = net("onecycle"), StepRates(), Finetuning(stages, unit="step")
    start = weights(model)
    trainer(tmp_path, [callback, rates], epochs=2, save=True).fit(model, data())  # 8 steps
    assert [len(groups) for groups in rates.seen] == [1, 1, 1, 2, 2, 2, 2, 2]  # the backbone joins at step 3
    for step in range(3, 8):
        (head_lr, head_momentum), *new = rates.seen[step]
        for lr, momentum in new:
            assert lr == pytest.approx(head_lr * 0.1, rel=1e-12), step  # the same phase of the cycle, 1/10 the peak
            assert momentum == pytest.approx(head_momentum, rel=1e-12), step
    assert len({round(groups[-1][0], 12) for groups in rates.seen[3:]}) == 5  # the schedule moved the new group
    end = weights(model)
    assert not np.array_equal(start["backbone.0.weight"], end["backbone.0.weight"])  # trained from step 3

    resumed, rates2 = net("onecycle"), StepRates()  # from the end of epoch 0 (step 4, after the boundary)
    trainer(tmp_path / "b", [Finetuning(stages, unit="step"), rates2], epochs=2).fit(
        resumed, data(), ckpt_path=tmp_path / "epoch=0.ckpt"
    )
    assert rates2.seen == rates.seen[4:]  # the cycle (rates and momenta of every group) continues where it was
    assert all(np.array_equal(v, end[k]) for k, v in weights(resumed).items())


def test_two_schedulers_for_the_optimizer_are_refused_before_training(tmp_path):
    model = net("two schedulers")
    with pytest.raises(XFreezeError, match=r"2 LR schedulers(.|\n)*HINT: combine them(.|\n)*SequentialLR"):
        trainer(tmp_path, [Finetuning(STAGES)], epochs=1).fit(model, data())
    assert model.trainer.global_step == 0


def table(module, optimizer):
    return {r.name: (r.lr, r.weight_decay) for r in xfreeze.param_table(module, optimizer).rows}


def test_group_options_on_the_callback_shape_what_stages_add_to_a_hand_built_optimizer(tmp_path):
    stages = [Stage(0, freeze=["backbone"]), Stage(1, unfreeze=["backbone.3", "backbone.4"], lr=0.01)]
    model = net("by hand")
    callback = Finetuning(stages, lr_mult={"backbone.3": 4})  # no_decay: biases and norms, as xfreeze.optimizer
    trainer(tmp_path, [callback], epochs=2).fit(model, data())
    rows = table(model, model.trainer.optimizers[0])
    assert rows["head.weight"] == pytest.approx((0.1, 2**-10))  # the hand-built group, as written
    assert rows["head.bias"] == pytest.approx((0.1, 2**-10))
    assert rows["backbone.3.weight"] == pytest.approx((0.04, 2**-10))  # stage rate x lr_mult, the optimizer's decay
    assert rows["backbone.3.bias"] == pytest.approx((0.04, 0.0))  # no_decay
    assert rows["backbone.4.weight"] == pytest.approx((0.01, 0.0))  # a norm: no decay


def test_group_options_given_twice_or_naming_nothing_are_refused_before_training(tmp_path):
    model = net()  # configure_optimizers uses xfreeze.optimizer, which has its own options
    with pytest.raises(XFreezeError, match=r"group options \['lr_mult'\] were given to the callback(.|\n)*HINT"):
        trainer(tmp_path, [Finetuning(STAGES, lr_mult={"head": 10})], epochs=1).fit(model, data())
    assert model.trainer.global_step == 0
    with pytest.raises(XFreezeError, match=r"haed.*matched no parameters"):
        trainer(tmp_path, [Finetuning(STAGES, lr_mult={"haed": 10})], epochs=1).fit(net("by hand"), data())
    with pytest.raises(XFreezeError, match=r"layer_decay must be in \(0, 1\]"):
        Finetuning(STAGES, layer_decay=2)
    with pytest.raises(TypeError, match="lr_mul"):
        Finetuning(STAGES, lr_mul={"head": 10})


@pytest.mark.slow
def test_ema_follows_optimizer_steps_under_gradient_accumulation(tmp_path):
    callback = Finetuning([Stage(0, freeze=["backbone"])], ema=0.5)
    run = trainer(tmp_path, [callback], epochs=1)
    run.accumulate_grad_batches = 2
    run.fit(net(), data())
    assert callback.ema.num_updates == run.global_step == 2


@pytest.mark.slow
def test_bf16_true_precision_with_ema_and_exact_resume(tmp_path):
    """Lightning casts the module to bfloat16 (and moves it to the device) after the callback built its EMA in
    setup: the EMA follows (it failed at the first update before), frozen bf16 weights stay bitwise, resume is exact."""
    model, callback = net(), Finetuning(STAGES, ema=0.5)
    start = {k: v.to(torch.bfloat16).float().numpy() for k, v in model.state_dict().items()}
    trainer(tmp_path, [callback], save=True, precision="bf16-true").fit(model, data())
    end = weights(model)
    assert model.backbone[0].weight.dtype == torch.bfloat16 and callback.ema.num_updates == 16
    assert {str(t.dtype) for t in callback.ema.shadow.values()} >= {"torch.bfloat16"}
    for key in ("backbone.0.weight", "backbone.1.weight", "backbone.1.running_mean"):
        assert np.array_equal(start[key], end[key]), key
    resumed, again = net(), Finetuning(STAGES, ema=0.5)
    trainer(tmp_path / "b", [again], precision="bf16-true").fit(resumed, data(), ckpt_path=tmp_path / "epoch=2.ckpt")
    assert all(np.array_equal(v, end[k]) for k, v in weights(resumed).items())
    shadows = again.ema.state_dict()["shadow"], callback.ema.state_dict()["shadow"]
    assert all(torch.equal(shadows[0][k], shadows[1][k]) for k in shadows[1])


def test_stages_that_name_nothing_fail_before_training(tmp_path):
    model = net()
    before = weights(model)
    with pytest.raises(XFreezeError, match=r"bakcbone.*matched no parameters|matched no parameters"):
        trainer(tmp_path, [Finetuning([Stage(0, freeze=["bakcbone"])])], epochs=1).fit(model, data())
    assert all(np.array_equal(v, before[k]) for k, v in weights(model).items())


def test_an_optimizer_over_every_parameter_is_refused(tmp_path):
    with pytest.raises(XFreezeError, match=r"built before the stage could be applied"):
        trainer(tmp_path, [Finetuning(STAGES)], epochs=1).fit(net("all"), data())


@pytest.mark.slow
def test_a_checkpoint_from_another_stage_plan_is_refused(tmp_path):
    trainer(tmp_path, [Finetuning(STAGES)], epochs=1, save=True).fit(net(), data())
    other = [Stage(0, freeze=["backbone"]), Stage(1, unfreeze=["backbone"], lr=0.01)]
    model = net()
    with pytest.raises(XFreezeError, match=r"different stage plan"):
        trainer(tmp_path / "b", [Finetuning(other)], epochs=2).fit(model, data(), ckpt_path=tmp_path / "epoch=0.ckpt")


@pytest.mark.slow
@pytest.mark.distributed
@each_package_in_its_stack
def test_ddp_strategy_rebuilds_the_wrapper_at_the_boundary_and_resumes_exactly(tmp_path, package):
    """2 ranks over gloo, Lightning's DDP strategy (DistributedSampler: different data on each rank)."""
    import dist_workers as W

    r0, r1 = W.launch_torch(W.torch_lightning_ddp, tmp_path, root=str(tmp_path), package=package)
    # a training BatchNorm's running statistics are rank-local until DDP's next forward broadcasts rank 0's
    local = ("backbone.4.running_mean", "backbone.4.running_var")
    for key in ("run", "epoch=0.ckpt", "epoch=2.ckpt"):
        a, b = r0[key], r1[key]
        # identical ranks: the newly unfrozen blocks' gradients were all-reduced by the rebuilt DDP
        assert all(np.array_equal(a["end"][k], b["end"][k]) for k in a["end"] if k not in local), key
        assert a["ddp"] and b["ddp"], key
    run = r0["run"]
    assert run["rebuilt_at"] == [2]  # one new DDP, at the boundary, registering backbone.3 / backbone.4
    assert "replaced at a stage boundary" in run["retired"]  # the DDP built at stage 0 can no longer be called
    assert run["rates"][0] == pytest.approx([0.1, 0.1])
    assert run["rates"][2] == pytest.approx([0.025, 0.025, 0.0025, 0.0025])
    assert run["rates"][3] == pytest.approx([0.0125, 0.0125, 0.00125, 0.00125])
    start, end = run["start"], run["end"]
    for key in ("backbone.0.weight", "backbone.1.weight", "backbone.1.running_mean", "backbone.1.running_var"):
        assert np.array_equal(start[key], end[key]), key  # never unfrozen: bitwise fixed
    assert not np.array_equal(start["backbone.3.weight"], end["backbone.3.weight"])  # unfrozen at 2: trained
    for ckpt in ("epoch=0.ckpt", "epoch=2.ckpt"):  # resumed on 2 ranks: bitwise the uninterrupted run
        resumed = r0[ckpt]
        assert all(np.array_equal(resumed["end"][k], end[k]) for k in end), ckpt
        assert all(np.array_equal(resumed["ema"][k], run["ema"][k]) for k in run["ema"]), ckpt
        assert resumed["rates"][3] == pytest.approx(run["rates"][3]), ckpt
    assert r0["epoch=0.ckpt"]["rebuilt_at"] == [2]  # the boundary came live in the resumed fit


@pytest.mark.slow
@each_package_in_its_stack
def test_changing_what_trains_mid_run_under_fsdp_is_refused_before_training(tmp_path, package):
    """Run in a child process: the strategy initializes a process group (gloo) in the process it runs in."""
    code = f"""
import sys; sys.path[:0] = [{str(__file__.rsplit("/", 1)[0])!r}, {SUPPORT!r}]
import importlib
from test_integrations_lightning import STAGES, data, net
from xfreeze import XFreezeError
from xfreeze.integrations.lightning import Finetuning
lib = importlib.import_module({package!r})
class CpuFSDP(lib.strategies.FSDPStrategy):  # Lightning refuses the FSDPStrategy class itself on CPU when built;
    pass                                     # the callback refuses at setup, before FSDP would wrap anything
trainer = lib.Trainer(max_epochs=1, accelerator="cpu", devices=1, strategy=CpuFSDP(), logger=False,
                      enable_progress_bar=False, enable_checkpointing=False, default_root_dir={str(tmp_path)!r},
                      callbacks=[Finetuning(STAGES)])
model = net(package={package!r})
try:
    trainer.fit(model, data())
except XFreezeError as exc:
    print("REFUSED", "HINT:" in str(exc), "CpuFSDP" in str(exc), "strategy='ddp'" in str(exc))
print("UNTOUCHED", all(p.requires_grad for p in model.parameters()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert "REFUSED True True True" in out.stdout, out.stdout[-1000:] + out.stderr[-2000:]
    assert "UNTOUCHED True" in out.stdout  # refused before stage 0 froze anything


@each_package
@pytest.mark.parametrize(
    "strategy, refused",
    [
        ("DDPStrategy", False),
        ("CpuDDP", False),
        ("DeepSpeedStrategy", True),  # a DDPStrategy subclass: its engine owns the optimizer, cannot be rebuilt
        ("XLAStrategy", True),  # a DDPStrategy subclass that builds no DDP
        ("FSDPStrategy", True),
        ("ModelParallelStrategy", True),
    ],
)
def test_setup_refuses_each_strategy_it_cannot_rebuild_and_keeps_ddp(package, strategy, refused):
    """The callback's ``setup`` with a strategy of each kind, of either package (built without its ``__init__``:
    DeepSpeed and XLA are not installed here, and the check reads only the strategy's class)."""
    strategies = kit(package).lib.strategies
    # CpuDDP: a user's subclass that builds the wrapper as DDPStrategy does, so it is rebuilt like it
    cls = type("CpuDDP", (strategies.DDPStrategy,), {}) if strategy == "CpuDDP" else getattr(strategies, strategy)
    model = net(package=package)
    before = state_hash(model)
    callback = Finetuning(STAGES)
    run = SimpleNamespace(strategy=object.__new__(cls))
    if refused:
        with pytest.raises(
            XFreezeError, match=rf"under {cls.__name__} \(stages at \[2\](.|\n)*HINT: use strategy='ddp'"
        ):
            callback.setup(run, model, "fit")
        assert state_hash(model) == before and all(p.requires_grad for p in model.parameters())
    else:
        callback.setup(run, model, "fit")  # stage 0 applied: the backbone frozen, the head trains
        assert not any(p.requires_grad for p in model.backbone.parameters()) and model.head.weight.requires_grad
    # stage 0 alone never changes what trains under a wrapper: accepted under every strategy
    Finetuning(STAGES[:1]).setup(SimpleNamespace(strategy=object.__new__(cls)), net(package=package), "fit")


@each_package
def test_the_callbacks_are_callbacks_of_every_lightning_package_installed(tmp_path, package):
    """A Trainer of either package takes them, also given alone (``callbacks=Finetuning(...)``, not a list)."""
    from xfreeze.integrations.lightning import CachedPrefix

    lib = kit(package).lib
    for callback in (Finetuning(STAGES), CachedPrefix(size=32)):
        assert all(isinstance(callback, other.Callback) for other in PACKAGES.values())
        assert callback in trainer(tmp_path, callback, epochs=1, package=package).callbacks
        assert type(callback).__mro__.count(lib.Callback) == 1


ALONE = """
import sys
for name in {blocked!r}:  # as if not installed: `import` raises ModuleNotFoundError, find_spec returns None
    sys.modules[name] = None
sys.path[:0] = [{tests!r}, {support!r}]
import importlib, importlib.util
import numpy as np
lib = importlib.import_module({package!r})
from xfreeze import Stage
from xfreeze.integrations.lightning import Finetuning
import test_integrations_lightning as T
print("OTHER", [n for n in {blocked!r} if importlib.util.find_spec(n) is not None])
model = T.net(package={package!r})
callback = Finetuning([Stage(0, freeze=["backbone"]), Stage(1, unfreeze=["backbone.3"])])
start = T.weights(model)
T.trainer({root!r}, [callback], epochs=2, package={package!r}).fit(model, T.data())
end = T.weights(model)
print("FIXED", all(np.array_equal(start[k], end[k]) for k in ("backbone.0.weight", "backbone.1.running_mean")))
print("TRAINED", not np.array_equal(start["backbone.3.weight"], end["backbone.3.weight"]))
print("LOADED", sorted({{m.split(".")[0] for m in sys.modules if m.split(".")[0] in {roots!r} and sys.modules[m]}}))
"""


def _alone(tmp_path, package, blocked):
    code = ALONE.format(
        blocked=blocked,
        tests=str(__file__.rsplit("/", 1)[0]),
        support=SUPPORT,
        package=package,
        root=str(tmp_path),
        roots=("lightning", "pytorch_lightning", "lightning_fabric"),
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "OTHER []" in out.stdout, out.stdout[-1000:] + out.stderr[-3000:]
    assert "FIXED True" in out.stdout and "TRAINED True" in out.stdout, out.stdout[-1000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
@pytest.mark.current_stack
def test_the_unified_lightning_package_alone_needs_no_pytorch_lightning(tmp_path):
    """``pip install lightning`` brings ``pytorch_lightning`` too (lightning 2.6.6 requires it), so the package is
    blocked here as if it were absent: xfreeze imports, stages and trains with ``lightning.pytorch`` alone."""
    stdout = _alone(tmp_path, "lightning.pytorch", ("pytorch_lightning", "lightning_fabric"))
    assert "LOADED ['lightning']" in stdout


@pytest.mark.slow
def test_the_standalone_pytorch_lightning_alone_needs_no_lightning(tmp_path):
    stdout = _alone(tmp_path, "pytorch_lightning", ("lightning",))
    assert "LOADED ['lightning_fabric', 'pytorch_lightning']" in stdout


@pytest.mark.slow
def test_with_neither_package_the_import_says_what_to_install():
    code = """
import sys
for name in ("lightning", "pytorch_lightning", "lightning_fabric"):
    sys.modules[name] = None
try:
    import xfreeze.integrations.lightning
except ModuleNotFoundError as exc:
    print("REFUSED", exc.name, "HINT: pip install lightning" in str(exc))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "REFUSED lightning True" in out.stdout, out.stdout[-1000:] + out.stderr[-2000:]

"""FeatureCache (issue 20): the frozen prefix computed once per sample; the head trains on stored features.

Same head weights as live training (bitwise, same data order), every refusal leaves the model as it was, stale
weights are refused by name, a StagedUnfreeze stage that unfreezes the prefix drops the cache, memory-mapped storage
(bf16 included), a full disk, and a probe sweep whose heads train as each would alone.
"""

import errno

import numpy as np
import pytest

import xfreeze
from xfreeze import FeatureCache, ProbeSweep, Stage, StagedUnfreeze, XFreezeError
from xfreeze.core import tensors as _tensors
from xfreeze.model.view import view_of
from xfreeze.training import cache_store
from harness import Spec, random_state
from statehash import state_hash

CNN = Spec("cnn", (4, 3), classes=3, image=5)
HEAD = CNN.module_names()[-1]  # "8": the Linear after pooling and flatten
PREFIX = CNN.module_names()[:-1]
N, BATCH = 12, 4


def data(fw, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=CNN.input_shape(N)).astype("float32")
    return x, rng.integers(0, CNN.classes, N)


def batches(fw, x, y, order=None):
    order = np.arange(N) if order is None else order
    for s in range(0, N, BATCH):
        idx = order[s : s + BATCH]
        yield fw.tensor(x[idx]), fw.labels(y[idx]), idx


def frozen(fw, seed=0):
    model = fw.build(CNN)
    fw.load(model, random_state(CNN, "float32", seed))
    xfreeze.freeze(model, "*", f"!{HEAD}")
    model.train()
    return model


def train(fw, model, forward, epochs=2, orders=None):
    opt = xfreeze.optimizer(model, "sgd", lr=0.125, momentum=0.875)
    x, y = data(fw)
    for epoch in range(epochs):
        for xb, yb, idx in batches(fw, x, y, None if orders is None else orders[epoch]):
            loss = fw.nn.functional.cross_entropy(forward(xb, idx), yb)
            loss.backward()
            opt.step()
            fw.clear_grad(opt)
    return {k: v for k, v in fw.state(model).items() if k.startswith(HEAD + ".")}


@pytest.mark.parametrize("shuffled", [False, True])
def test_cached_training_gives_the_live_head_bit_for_bit(fw, shuffled):
    orders = [np.random.default_rng(e).permutation(N) for e in range(3)] if shuffled else None
    live = frozen(fw)
    expected = train(fw, live, lambda xb, idx: live(xb), epochs=3, orders=orders)
    model = frozen(fw)
    cache = FeatureCache(model, HEAD, size=N)
    got = train(fw, model, cache, epochs=3, orders=orders)
    assert cache.filled == N and cache.dropped is None and cache.served == 3 * N
    for name, value in expected.items():
        assert np.array_equal(got[name], value), name
    assert not np.array_equal(expected[f"{HEAD}.weight"], fw.state(frozen(fw))[f"{HEAD}.weight"])  # it trained


def test_filled_indices_need_no_inputs_and_unfilled_ones_do(fw):
    model = frozen(fw)
    cache = FeatureCache(model, HEAD, size=N, progress=False)
    x, y = data(fw)
    assert cache.fill(batches(fw, x, y)) == N
    out = cache(None, np.arange(4))
    assert np.array_equal(fw.numpy(out), fw.numpy(model(fw.tensor(x[:4]))))
    cache.clear()
    with pytest.raises(XFreezeError, match="sample 0 is not filled yet"):
        cache(None, [0, 1])


def _with_dropout(fw):
    nn = fw.nn
    model = nn.Sequential(fw.linear(4, 8), nn.Dropout(0.25), nn.ReLU(), fw.linear(8, 3))
    xfreeze.freeze(model, "*", "!3")
    return model


def _unlocked(fw):
    model = frozen(fw)
    view = view_of(model)
    bn = view.modules[view.module_index["1"]]
    view.adapter.unlock_norm(bn, training=True)
    return model


@pytest.mark.parametrize(
    "build, head, match",
    [
        (lambda fw: fw.build(CNN), HEAD, r"(?s)parameters before the head train \(0.weight.*HINT: xfreeze.freeze"),
        (_unlocked, HEAD, r"(?s)norm layers 1 before the head are not locked.*HINT"),
        (_with_dropout, "3", r"(?s)1 \(Dropout, rate 0.25\) before the head drop activations.*HINT"),
        (frozen, "pool", r"head='pool' is not a module"),
        (frozen, "", r"head='' is not a module"),
    ],
)
def test_a_prefix_that_is_not_frozen_locked_and_deterministic_is_refused(fw, build, head, match):
    model = build(fw)
    before = state_hash(model)
    with pytest.raises(XFreezeError, match=match):
        FeatureCache(model, head, size=N)
    assert state_hash(model) == before


@pytest.mark.parametrize(
    "options, match",
    [
        ({"size": 0}, "size must be an integer >= 1"),
        ({"size": N, "dtype": "int8"}, "Received: dtype='int8'"),
        ({"size": N, "storage": "/no/such/folder/f.npy"}, "does not exist"),
        ({"size": N, "verify_every": 0}, "verify_every must be an integer >= 1"),
    ],
)
def test_bad_options_are_refused(fw, options, match):
    with pytest.raises(XFreezeError, match=match):
        FeatureCache(frozen(fw), HEAD, **options)


def test_an_index_outside_the_cache_is_refused_before_anything_runs(fw):
    model = frozen(fw)
    cache = FeatureCache(model, HEAD, size=N)
    x, _ = data(fw)
    before = state_hash(model)
    for bad, match in (([0, N], f"sample index {N} is outside the cache"), ([-1, 0], "index -1"), ([[0]], "1-D")):
        with pytest.raises(XFreezeError, match=match):
            cache(fw.tensor(x[: len(bad)]), bad)
    with pytest.raises(XFreezeError, match="3 indices for a batch of 2"):
        cache(fw.tensor(x[:2]), [0, 1, 2])
    assert state_hash(model) == before and cache.filled == 0


def test_a_model_that_computes_after_its_head_is_refused(fw):
    nn = fw.nn
    model = nn.Sequential(fw.linear(4, 8), nn.ReLU(), fw.linear(8, 3), nn.Sigmoid())
    xfreeze.freeze(model, "*", "!2")
    cache = FeatureCache(model, "2", size=N)
    with pytest.raises(XFreezeError, match="computes something after its head '2'"):
        cache(fw.tensor(np.ones((2, 4), "float32")), [0, 1])
    assert cache.filled == 0


def test_weights_loaded_after_filling_are_refused_naming_the_first_changed_tensor(fw):
    model = frozen(fw)
    cache = FeatureCache(model, HEAD, size=N, progress=False)
    x, y = data(fw)
    cache.fill(batches(fw, x, y))
    fw.load(model, fw.state(frozen(fw, seed=1)))
    before = state_hash(model)
    with pytest.raises(XFreezeError, match=r"(?s)FeatureCache: 0.weight of .* changed .*\(and \d+ more.*stale.*HINT"):
        cache.verify()
    # the per-call check refuses too, at the latest at the start of the next pass over the data
    with pytest.raises(XFreezeError, match="0.weight of .* changed since the features were computed"):
        for _ in range(2):
            for s in range(0, N, BATCH):
                cache(None, np.arange(s, s + BATCH))
    assert state_hash(model) == before
    cache.clear()
    assert cache(fw.tensor(x[:4]), np.arange(4)) is not None  # refilled from the new weights


def test_a_stage_that_unfreezes_the_prefix_drops_the_cache_and_the_model_runs_live(fw):
    model = frozen(fw)
    opt = xfreeze.optimizer(model, "sgd", lr=0.125)
    staged = StagedUnfreeze(
        model, opt, [Stage(0, freeze=PREFIX), Stage(1, unfreeze=[PREFIX[-2], PREFIX[-1]], lr=0.0625)]
    )
    cache = FeatureCache(model, HEAD, size=N)
    x, y = data(fw)
    seen = []
    for epoch in range(3):
        staged.step(epoch)
        for xb, yb, idx in batches(fw, x, y):
            loss = fw.nn.functional.cross_entropy(cache(xb, idx), yb)
            loss.backward()
            seen.append((epoch, cache.dropped is None, cache.filled))
            if epoch:  # live: the unfrozen prefix layer gets a gradient
                assert fw.grad(dict(fw.named_modules(model))[PREFIX[-2]].weight) is not None
            opt.step()
            fw.clear_grad(opt)
    assert all(cached and filled > 0 for epoch, cached, filled in seen if epoch == 0)
    assert not any(cached or filled for epoch, cached, filled in seen if epoch > 0)
    assert "now train: the prefix is no longer frozen" in cache.dropped
    assert np.array_equal(fw.numpy(cache(fw.tensor(x[:4]), np.arange(4))), fw.numpy(model(fw.tensor(x[:4]))))


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_memory_mapped_storage_keeps_the_features_bits(fw, tmp_path, dtype):
    model = frozen(fw)
    path = tmp_path / "features.npy"
    cache = FeatureCache(model, HEAD, size=N, storage=path, dtype=dtype, progress=False)
    x, y = data(fw)
    cache.fill(batches(fw, x, y))
    stored = np.load(path, mmap_mode="r")
    assert stored.shape == (N, CNN.sizes[-1]) and stored.dtype == (np.uint16 if dtype else np.float32)
    adapter = cache.adapter
    live = adapter.inputs_of(model, cache.head_module, (fw.tensor(x),))[0]
    expected = adapter.cast(adapter.cast(live, dtype), "float32") if dtype else live
    assert _tensors.same_bits(cache.features(None, np.arange(N)), expected)
    assert np.array_equal(stored, _tensors.to_raw(adapter.cast(live, dtype or "float32")).bits)
    cache.clear()
    assert not path.exists()


def test_features_past_the_memory_limit_spill_to_a_temporary_file(fw):
    cache = FeatureCache(frozen(fw), HEAD, size=N, memory_limit=8)
    x, _ = data(fw)
    with pytest.warns(UserWarning, match="memory-mapped temporary file.*\nHINT: pass storage"):
        cache(fw.tensor(x[:4]), np.arange(4))
    spilled = cache.store.path
    assert spilled is not None and spilled.exists() and cache.store.nbytes == N * CNN.sizes[-1] * 4
    cache.clear()
    assert not spilled.exists()


def test_a_full_disk_while_filling_is_a_clear_error_and_nothing_is_cached(fw, tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_store, "allocate", full)
    model = frozen(fw)
    path = tmp_path / "features.npy"
    cache = FeatureCache(model, HEAD, size=N, storage=path)
    x, y = data(fw)
    head_before = fw.state(model)[f"{HEAD}.weight"].copy()
    with pytest.raises(XFreezeError, match=r"(?s)the features need .* MiB and the disk has .*nothing was cached.*HINT"):
        cache(fw.tensor(x[:4]), np.arange(4))
    assert cache.filled == 0 and not cache.store.allocated and not path.exists()
    assert np.array_equal(fw.state(model)[f"{HEAD}.weight"], head_before)
    monkeypatch.undo()
    assert fw.numpy(cache(fw.tensor(x[:4]), np.arange(4))).shape == (4, CNN.classes) and cache.filled == 4


def test_a_probe_sweep_trains_each_head_as_it_would_alone(fw):
    configs = [{"lr": 0.125}, {"lr": 0.0625, "weight_decay": 2**-8}, {"lr": 0.25}, {"lr": 0.03125}, {"lr": 0.5}]
    x, y = data(fw)
    model = frozen(fw)
    cache = FeatureCache(model, HEAD, size=N, progress=False)
    cache.fill(batches(fw, x, y))
    sweep = ProbeSweep(cache, configs, optimizer="sgd", momentum=0.875)
    alone = ProbeSweep(cache, configs[1:2], optimizer="sgd", momentum=0.875)
    loss = fw.nn.functional.cross_entropy
    for _ in range(2):
        for _, yb, idx in batches(fw, x, y):
            sweep.step(idx, yb, loss)
            alone.step(idx, yb, loss)
    states = [fw.state(h) for h in sweep.heads]
    assert all(np.array_equal(states[1][k], v) for k, v in fw.state(alone.heads[0]).items())
    assert len({states[i]["weight"].tobytes() for i in range(5)}) == 5  # five settings, five heads
    with pytest.raises(XFreezeError, match=r"configs\[0\] needs a learning rate lr > 0"):
        ProbeSweep(cache, [{"weight_decay": 0.1}])


def _lightning_fit(stages, epochs, cached):
    torch = pytest.importorskip("torch")
    pl = pytest.importorskip("pytorch_lightning")
    from xfreeze.integrations.lightning import CachedPrefix, Finetuning

    nn = torch.nn

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.backbone = nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU()
            )
            self.pool, self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), nn.Linear(4, 3)
            self.seen = []

        def forward(self, x):
            return self.head(self.pool(self.backbone(x)))

        def training_step(self, batch, batch_idx):
            x, y, idx = batch
            out = self.feature_cache(x, idx) if cached else self(x)
            if cached:
                self.seen.append((self.current_epoch, self.feature_cache.dropped is None))
            return nn.functional.cross_entropy(out, y)

        def configure_optimizers(self):
            return xfreeze.optimizer(self, "sgd", lr=0.125, momentum=0.875)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, torch.arange(16)), batch_size=4)
    net = Net()
    callbacks = [Finetuning(stages)] + ([CachedPrefix("head", size=16, progress=False)] if cached else [])
    pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
    ).fit(net, loader)
    return net


@pytest.mark.slow
def test_lightning_trains_stage_0_on_the_cache_and_later_stages_live():
    stages = [Stage(0, freeze=["backbone"]), Stage(1, unfreeze=["backbone.3"], lr=0.0625)]
    live, cached = _lightning_fit(stages[:1], 2, False), _lightning_fit(stages[:1], 2, True)
    assert cached.feature_cache.filled == 16 and all(kept for _, kept in cached.seen)
    assert all(
        np.array_equal(a.detach().numpy(), b.detach().numpy())
        for a, b in zip(live.head.parameters(), cached.head.parameters())
    )
    staged = _lightning_fit(stages, 2, True)
    assert {e for e, kept in staged.seen if kept} == {0} and {e for e, kept in staged.seen if not kept} == {1}
    assert staged.feature_cache.dropped.startswith("backbone.3.weight, backbone.3.bias now train")

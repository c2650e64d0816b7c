"""xfreeze.audit: each planted fault is named, a correct run is silent; buffers of frozen modules are locked by
lock_buffers and fingerprinted by deltas (issue 21, item 5)."""

import json
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from safetensors import safe_open
from statehash import state_hash

import xfreeze
from xfreeze import XFreezeError
from xfreeze.model.bufferlock import locked_buffers
from xfreeze.model.buffers import register_region_source, unregister_region_source


def batch(fw, seed=0):
    rng = np.random.default_rng(seed)
    return fw.tensor(rng.normal(size=(8, 4)).astype("float32")), fw.labels(rng.integers(0, 2, 8))


def net(fw, *, writes=False, unused=False):
    """A frozen first block (a Linear that, with ``writes``, assigns a running sum to its ``seen`` buffer in every
    training forward), a BatchNorm, a trainable head; ``unused``: a trainable Linear the forward never calls."""

    class Block(fw.Module):
        def __init__(self):
            super().__init__()
            self.lin = fw.linear(4, 4)
            self.register_buffer("seen", fw.tensor(np.zeros(4, "float32")))

        def forward(self, x):
            if writes and self.training:
                self.seen = self.seen + x.detach().mean(0)  # a new tensor each step, as IBert's QuantAct does
            return self.lin(x)

    class Net(fw.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.norm = fw.batch_norm(4)
            self.head = fw.linear(4, 2)
            if unused:
                self.unused = fw.linear(4, 4)

        def forward(self, x):
            return self.head(self.norm(self.block(x)))

    model = Net()
    xfreeze.freeze(model, "block", "norm")
    model.train()
    return model


def trainable(fw, model):
    return [p for _, p in _named(model) if fw.is_trainable(p)]


def _named(model):
    return list(model.named_parameters())


def run(fw, model, opt, steps=2, **options):
    with xfreeze.audit(model, opt, **options) as audit:
        for k in range(steps):
            fw.train_step(model, opt, *batch(fw, k))
            audit.step()
    return audit.report


def test_a_correct_run_is_silent(fw):
    model = net(fw)
    report = run(fw, model, fw.hand_optimizer(fw.sgd_momentum, trainable(fw, model), 0.1))
    assert report.ok and report.findings == {}
    assert report.steps == 2 and (report.checked["trainable"], report.checked["frozen"]) == (2, 4)
    assert report.checked["buffers"] >= 3  # block.seen, the norm's statistics (torch: and its batch counter)
    assert "OK after 2 step(s)" in str(report)


def test_a_parameter_left_out_of_the_optimizer(fw):
    model = net(fw)
    opt = fw.hand_optimizer(fw.sgd_momentum, [model.head.weight], 0.1)
    report = run(fw, model, opt)
    assert report.findings == {"not_in_optimizer": ["head.bias"]}  # named once: not also as "unchanged"
    assert "HINT (trainable, in no optimizer group)" in str(report)


def test_a_buffer_written_in_forward_inside_a_frozen_module(fw):
    model = net(fw, writes=True)
    opt = fw.hand_optimizer(fw.sgd_momentum, trainable(fw, model), 0.1)
    report = run(fw, model, opt)
    assert report.findings == {"buffers_changed": ["block.seen"]}
    assert run(fw, model, opt, allow=["*.seen"]).ok  # allowed: listed, not counted

    before = fw.numpy(model.block.seen).copy()
    assert xfreeze.lock_buffers(model).buffers == ["block.seen"]  # the norm layer is the norm lock's
    report = run(fw, model, opt)
    assert report.ok, report
    assert np.array_equal(fw.numpy(model.block.seen), before)  # bitwise: put back after every forward
    assert xfreeze.unlock_buffers(model).buffers == ["block.seen"]
    assert run(fw, model, opt).buffers_changed == ["block.seen"]  # released: it moves again


def test_a_trainable_parameter_that_receives_no_gradient(fw):
    model = net(fw, unused=True)
    opt = fw.hand_optimizer(fw.sgd_momentum, trainable(fw, model), 0.1)
    report = run(fw, model, opt)
    assert report.findings == {"no_grad": ["unused.weight", "unused.bias"]}


def test_a_frozen_tensor_moved_by_a_loop_that_ignores_requires_grad(fw):
    model = net(fw)
    opt = fw.hand_optimizer(fw.sgd_momentum, trainable(fw, model), 0.1)
    with xfreeze.audit(model, opt) as audit:
        fw.train_step(model, opt, *batch(fw))
        for _, p in _named(model):  # decoupled weight decay written by hand, over every parameter
            fw.scale_(p, 1 - 2**-6)
        audit.step()
    findings = audit.report.findings
    assert {"block.lin.weight", "norm.weight"} <= set(findings["frozen_changed"])  # (a bias at zero stays there)
    # Paddle lists a norm's statistics among the parameters: the loop scales them too, and the audit says so
    assert set(findings) <= {"frozen_changed", "buffers_changed"}


def embedding_net(fw):
    model = fw.nn.Sequential(fw.nn.Embedding(16, 4), fw.nn.Flatten(), fw.linear(8, 2))
    xfreeze.freeze(model, "0")
    return model


def test_frozen_rows_moved_by_weight_decay_in_a_hand_built_loop(fw):
    model = embedding_net(fw)
    xfreeze.unfreeze(model, "0.weight[12:]")  # the new token rows train, rows 0..11 stay
    opt = fw.hand_optimizer(fw.sgd_momentum, trainable(fw, model), 0.1)
    ids = fw.labels(np.array([[1, 13], [12, 15], [3, 14], [2, 12]]))
    y = fw.labels(np.array([0, 1, 0, 1]))
    with xfreeze.audit(model, opt) as audit:
        fw.train_step(model, opt, ids, y)
        audit.step()
    assert audit.report.ok, audit.report
    with xfreeze.audit(model, opt) as audit:
        fw.train_step(model, opt, ids, y)
        for _, p in _named(model):
            fw.scale_(p, 1 - 2**-6)
        audit.step()
    assert audit.report.findings == {"rows_changed": ["0.weight[0:12]"]}


def test_a_region_source_names_frozen_rows_of_a_tensor_that_trains(fw):
    model = fw.nn.Sequential(fw.linear(4, 4), fw.linear(4, 2))
    source = register_region_source(lambda view: {view.index["0.bias"]: [0, 1]} if "0.bias" in view.index else {})
    try:
        opt = fw.hand_optimizer(fw.sgd_momentum, trainable(fw, model), 0.1)
        report = run(fw, model, opt, steps=1)
    finally:
        unregister_region_source(source)
    assert report.findings == {"rows_changed": ["0.bias[0:2]"]}
    assert report.checked["rows"] == 1


def test_strict_raises_with_the_table(fw):
    model = net(fw)
    opt = fw.hand_optimizer(fw.sgd_momentum, [model.head.weight], 0.1)
    with pytest.raises(XFreezeError, match="found faults(.|\n)*head.bias"):
        run(fw, model, opt, strict=True)


def test_bad_options_and_misuse(fw):
    model = net(fw)
    with pytest.raises(XFreezeError, match="allow must be"):
        xfreeze.audit(model, allow=[3])
    with pytest.raises(XFreezeError, match="optimizer must be an optimizer"):
        xfreeze.audit(model, "sgd")
    with pytest.raises(XFreezeError, match="before start"):
        xfreeze.audit(model).step()
    before = state_hash(model)
    with pytest.raises(XFreezeError, match="select no module of .* that holds buffers"):
        xfreeze.lock_buffers(model, "head")
    assert state_hash(model) == before and locked_buffers(model) == []


# --- deltas and verify_frozen cover the buffers of frozen modules ------------------------------------------------
def test_the_delta_fingerprint_covers_buffers_of_frozen_modules(fw, tmp_path):
    model = net(fw, writes=True)
    start = fw.state(model)
    fingerprint = xfreeze.frozen_fingerprint(model)
    assert "block.seen" in fingerprint["tensors"]
    path = xfreeze.save_delta(model, tmp_path / "d.safetensors")
    assert "block.seen" not in xfreeze.load_checkpoint(path)  # frozen state: hashed, not carried

    opt = fw.hand_optimizer(fw.sgd_momentum, trainable(fw, model), 0.1)
    fw.train_step(model, opt, *batch(fw))  # the frozen block writes its buffer
    assert xfreeze.verify_frozen(model, fingerprint).drifted == ["block.seen"]
    assert xfreeze.verify_frozen(model, path).drifted == ["block.seen"]

    moved = xfreeze.save_delta(model, tmp_path / "moved.safetensors")
    base = net(fw, writes=True)
    fw.load(base, start)  # the untouched base
    before = state_hash(base)
    with pytest.raises(XFreezeError, match="buffers of frozen modules(.|\n)*block.seen(.|\n)*lock_buffers"):
        xfreeze.load_delta(base, moved)
    assert state_hash(base) == before
    assert xfreeze.load_delta(base, path).verified == len(fingerprint["tensors"])


def test_a_delta_written_before_buffers_were_fingerprinted_loads_with_a_note(fw, tmp_path):
    model = net(fw, writes=True)
    start = fw.state(model)
    path = xfreeze.save_delta(model, tmp_path / "new.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    old = dict(meta)
    del old["frozen_buffers"]
    fingerprint = json.loads(old["fingerprint"])
    del fingerprint["block.seen"]  # as the old writer: not hashed, carried as a value
    old["fingerprint"] = json.dumps(fingerprint)
    tensors["block.seen"] = np.full(4, 3.0, dtype="float32")
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=old)

    base = net(fw, writes=True)
    fw.load(base, start)
    with pytest.warns(UserWarning, match="written before xfreeze fingerprinted(.|\n)*block.seen"):
        xfreeze.load_delta(base, tmp_path / "old.safetensors")
    assert np.array_equal(fw.numpy(base.block.seen), np.full(4, 3.0, dtype="float32"))  # loaded as it was
    assert xfreeze.verify_frozen(base, tmp_path / "old.safetensors").ok


# --- a real IBert (transformers), the case a sweep of the pinned models found -------------------------------------
@pytest.mark.slow
@pytest.mark.classic_stack
def test_the_audit_catches_ibert_quantact_ranges_and_lock_buffers_holds_them():
    torch = pytest.importorskip("torch")
    from transformers import IBertConfig, IBertForSequenceClassification

    torch.manual_seed(0)
    config = IBertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=20,
        num_labels=2,
    )
    model = IBertForSequenceClassification(config)
    xfreeze.freeze(model, "*", "!classifier")
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids, y = torch.randint(3, 40, (4, 8)), torch.tensor([0, 1, 0, 1])

    def steps(audit):
        for _ in range(2):
            model(input_ids=ids, labels=y).loss.backward()
            opt.step()
            opt.zero_grad()
            audit.step()

    with xfreeze.audit(model, opt) as audit:
        steps(audit)
    moved = audit.report.findings
    assert list(moved) == ["buffers_changed"]
    assert len(moved["buffers_changed"]) == 48
    assert {name.rpartition(".")[2] for name in moved["buffers_changed"]} == {"x_min", "x_max"}

    xfreeze.lock_buffers(model)
    locked = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("x_min", "x_max"))}
    with xfreeze.audit(model, opt) as audit:
        steps(audit)
    assert audit.report.ok, audit.report
    assert all(torch.equal(model.state_dict()[k], v) for k, v in locked.items())


# --- through an integration: a real Lightning fit with Finetuning(..., audit=N) -----------------------------------
@pytest.mark.slow
@pytest.mark.classic_stack
@pytest.mark.parametrize("left_out", [False, True])
def test_a_lightning_fit_audits_its_first_steps(tmp_path, left_out):
    torch = pytest.importorskip("torch")
    pl = pytest.importorskip("pytorch_lightning")
    from xfreeze import Stage
    from xfreeze.integrations.lightning import Finetuning

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU())
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.backbone(x))

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self(*batch[:1]), batch[1])

        def configure_optimizers(self):
            params = [self.head.weight] if left_out else [p for p in self.parameters() if p.requires_grad]
            return torch.optim.SGD(params, lr=0.1, momentum=0.9)

    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    callback = Finetuning([Stage(0, freeze=["backbone"])], audit=2)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[callback],
        default_root_dir=tmp_path,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Net(), loader)
    report = callback.staging.audit_report
    assert report is not None and report.steps == 2
    audit_warnings = [w for w in caught if "xfreeze audit" in str(w.message)]
    if left_out:
        assert report.findings == {"not_in_optimizer": ["head.bias"]}
        assert len(audit_warnings) == 1 and "head.bias" in str(audit_warnings[0].message)
    else:
        assert report.ok and not audit_warnings

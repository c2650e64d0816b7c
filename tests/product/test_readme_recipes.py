"""The "Where you train" recipes of docs/integrations.md, run as printed (issue 12: "a user can take the recipe and
run it"). Each block marked ``<!-- docs-test: recipe NAME -->`` is executed with only what the recipe leaves to the
user supplied: a small model with the attribute names the recipe uses, data, and the framework's own classes with
CPU-friendly settings; then what the recipe promises is checked (stages reached, frozen tensors fixed, groups grown).
Every other python block of the README and the docs runs in tests/product/test_docs.py."""

from __future__ import annotations

import types

import numpy as np
import pytest

from harness import tiny_text_config
from test_docs import PAGES, blocks_of

RECIPES = ("lightning", "transformers", "hapi", "paddlenlp")  # one test below each


def recipe(name: str) -> str:
    """The code of the block marked ``<!-- docs-test: recipe NAME -->`` (exactly one, in any page)."""
    found = [b for page in PAGES for b in blocks_of(page) if b.marker == "recipe" and b.arg == name]
    assert len(found) == 1, f"expected one block marked 'recipe {name}', found {[b.where for b in found]}"
    return found[0].code


def test_every_recipe_marker_has_a_test():
    marked = {b.arg for page in PAGES for b in blocks_of(page) if b.marker == "recipe"}
    assert marked == set(RECIPES), f"marked in the docs: {sorted(marked)}; tested here: {sorted(RECIPES)}"


@pytest.mark.slow
def test_lightning_recipe(tmp_path):
    torch = pytest.importorskip("torch")
    pl = pytest.importorskip("pytorch_lightning")
    import xfreeze

    class YourModule(pl.LightningModule):  # "your module: self.backbone, self.head, training_step"
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            nn = torch.nn
            self.backbone = nn.Sequential()
            self.backbone.add_module("stem", nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)))
            self.backbone.add_module("layer4", nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)))
            self.backbone.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.backbone(x))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(16, 3, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    )
    cpu = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    shim = types.SimpleNamespace(LightningModule=YourModule, Trainer=lambda **kw: pl.Trainer(**cpu, **kw))
    namespace = {"pl": shim, "torch": torch, "xfreeze": xfreeze}
    namespace["train_loader"] = torch.utils.data.DataLoader(data, batch_size=8)
    exec(recipe("lightning"), namespace)

    trainer, finetuning = namespace["trainer"], namespace["finetuning"]
    module = trainer.lightning_module
    assert trainer.current_epoch == 10
    assert all(not p.requires_grad for p in module.backbone.stem.parameters())  # never unfrozen
    assert all(p.requires_grad for p in module.backbone.layer4.parameters())  # unfrozen at epoch 5
    assert len(trainer.optimizers[0].param_groups) > 2 and finetuning.ema.num_updates == 20


def _sentences(make_ids):
    g = np.random.default_rng(0)
    return [(make_ids(g.integers(1, 40, 8)), int(g.integers(0, 2))) for _ in range(16)]


@pytest.mark.slow
def test_transformers_recipe(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")

    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(tiny_text_config(transformers.BertConfig))
    train_ds = [
        {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(8, dtype=torch.long), "labels": torch.tensor(y)}
        for ids, y in _sentences(list)
    ]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=3,
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to=[],
        seed=0,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    namespace = {"Trainer": transformers.Trainer, "model": model, "args": args, "train_ds": train_ds, "steps": 12}
    exec(recipe("transformers"), namespace)

    trainer = namespace["trainer"]
    assert trainer.state.global_step == 12
    assert all(p.requires_grad for p in model.parameters())  # "bert" unfrozen at epoch 1
    grown = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert grown == {id(p) for p in model.parameters()}  # every parameter joined the optimizer, once


@pytest.mark.slow
def test_hapi_recipe(tmp_path, monkeypatch):
    paddle = pytest.importorskip("paddle")

    nn = paddle.nn
    paddle.seed(0)
    net = nn.Sequential()
    net.add_sublayer("backbone", nn.Sequential(nn.Conv2D(3, 4, 3, padding=1), nn.BatchNorm2D(4), nn.ReLU()))
    net.add_sublayer("pool", nn.Sequential(nn.AdaptiveAvgPool2D(1), nn.Flatten()))
    net.add_sublayer("head", nn.Linear(4, 3))
    stem = net.backbone[0].weight.numpy().copy()
    g = np.random.default_rng(0)
    x = g.standard_normal((32, 3, 6, 6)).astype("float32")
    y = g.integers(0, 3, (32, 1)).astype("int64")
    train_ds = paddle.io.TensorDataset([paddle.to_tensor(x), paddle.to_tensor(y)])
    monkeypatch.chdir(tmp_path)  # the recipe saves to "ckpt"
    namespace = {"paddle": paddle, "net": net, "train_ds": train_ds}
    exec(recipe("hapi"), namespace)

    assert (tmp_path / "ckpt" / "final.pdparams").exists()
    assert not np.array_equal(stem, net.backbone[0].weight.numpy())  # unfrozen at epoch 5: trained after
    assert len(namespace["opt"]._param_groups) > 2


@pytest.mark.slow
def test_paddlenlp_recipe(tmp_path):
    paddle = pytest.importorskip("paddle")
    pytest.importorskip("paddlenlp")
    from paddlenlp.trainer import Trainer, TrainingArguments
    from paddlenlp.transformers import ErnieConfig, ErnieForSequenceClassification

    with paddle.utils.unique_name.guard():
        paddle.seed(0)
        model = ErnieForSequenceClassification(tiny_text_config(ErnieConfig))
        embeddings = model.ernie.embeddings.word_embeddings.weight.numpy().copy()
        args = TrainingArguments(
            output_dir=str(tmp_path),
            num_train_epochs=3,
            per_device_train_batch_size=4,
            save_strategy="no",
            logging_steps=1000,
            seed=0,
            disable_tqdm=True,
            device="cpu",
            report_to=[],
        )
        train_ds = [{"input_ids": ids, "labels": y} for ids, y in _sentences(lambda a: a.tolist())]
        namespace = {"paddle": paddle, "Trainer": Trainer, "model": model, "args": args, "train_ds": train_ds}
        namespace["steps"] = 12
        exec(recipe("paddlenlp"), namespace)

    trainer = namespace["trainer"]
    assert trainer.state.global_step == 12
    assert all(not p.stop_gradient for p in model.ernie.encoder.parameters())  # "ernie" unfrozen at epoch 1
    assert not np.array_equal(embeddings, model.ernie.embeddings.word_embeddings.weight.numpy())  # trained after
    assert len(trainer.optimizer._param_groups) > 1

"""Adapters seen through in both frameworks (issue 19): PEFT models and PaddleFormers ``LoRAModel`` show the base
model's names with ``lora_A`` / ``lora_B`` leaves, select with ``type:adapter``, freeze and unfreeze with norms,
summarize with an adapter column, average in an EMA, save and load as a delta; ``replace_head`` refuses them."""

from __future__ import annotations

import os

import numpy as np
import pytest
from lora_kit import TARGETS, lora_kit
from statehash import state_hash

import xfreeze

pytestmark = pytest.mark.current_stack

LAYERS = [f"model.layers.{i}.self_attn.{t}" for i in range(2) for t in TARGETS]
ADAPTERS = [f"{layer}.{leaf}" for layer in LAYERS for leaf in ("lora_A", "lora_B")]


@pytest.fixture
def lora(fw):
    return lora_kit(fw.name)


def test_names_are_the_base_models_with_adapter_leaves_identical_across_frameworks():
    views = {}
    for name in ("torch", "paddle"):
        kit = lora_kit(name)
        base = xfreeze.summary(kit.llama(), print_table=False)
        wrapped = kit.wrap(kit.llama())
        views[name] = xfreeze.select(wrapped, "*")
        assert sorted(set(views[name]) - set(xfreeze.select(kit.llama(), "*"))) == sorted(ADAPTERS)
        assert base.counts.total < xfreeze.summary(wrapped, print_table=False).counts.total
    assert views["torch"] == views["paddle"]


def test_type_adapter_selects_exactly_the_lora_weights(fw, lora):
    model = lora.wrap(lora.llama())
    assert xfreeze.select(model, "type:adapter") == ADAPTERS
    assert xfreeze.select(model, "type:adapter") == lora.adapter_names(model)  # the library's own, as the oracle
    assert "model.layers.0.self_attn.q_proj.weight" in xfreeze.select(model, "model.layers.0.self_attn.q_proj")
    with pytest.raises(xfreeze.XFreezeError, match="type:adapter"):
        xfreeze.select(lora.llama(), "type:adapter")  # no adapters: the pattern matches nothing


def test_unfreeze_adapters_plus_norms(fw, lora):
    model = lora.wrap(lora.llama())
    xfreeze.freeze(model, "*")
    assert lora.trainable_count(model) == 0
    report = xfreeze.unfreeze(model, "type:adapter", "*norm*")
    norms = [r for r in xfreeze.summary(model, print_table=False).rows if r.kind == "norm"]
    assert lora.trainable_count(model) == sum(r.parameters for r in norms) + 8 * 4 * 16  # 8 adapters of 4 x 16
    assert len(xfreeze.select(model, "type:adapter", "*norm*")) == len(ADAPTERS) + len(norms)
    assert "13 tensors now trainable" in str(report)
    xfreeze.freeze(model, "type:adapter")
    assert lora.trainable_count(model) == sum(r.parameters for r in norms)


def test_summary_has_an_adapter_column(fw, lora):
    model = lora.wrap(lora.llama())
    result = xfreeze.summary(model, print_table=False)
    by_name = {r.name: r for r in result.rows}
    assert [name for name, row in by_name.items() if row.adapter] == LAYERS
    assert all(by_name[layer].adapter == 2 * 4 * 16 for layer in LAYERS)  # r=4, hidden 16: A and B
    assert by_name[LAYERS[0]].parameters == 16 * 16 + 2 * 4 * 16
    assert "adapter" in str(result) and "type:adapter" in result.adapter_note
    assert xfreeze.summary(lora.llama(), print_table=False).adapter_note == ""


def test_ema_averages_the_adapters(fw, lora):
    model = lora.wrap(lora.llama())
    ema = xfreeze.EMA(model, decay=0.5)
    lora.train_step(model)
    ema.update()
    shadow = ema.state_dict()["shadow"]
    assert set(ADAPTERS) <= set(shadow)


def test_save_delta_of_the_adapter_loads_onto_the_same_base(fw, lora, tmp_path):
    model = lora.wrap(lora.llama(seed=0))
    lora.randomize_adapters(model)
    xfreeze.freeze(model, "*")
    xfreeze.unfreeze(model, "type:adapter")
    path = xfreeze.save_delta(model, os.path.join(tmp_path, "adapter.safetensors"))
    assert sorted(xfreeze.load_checkpoint(path)) == sorted(ADAPTERS)
    fresh = lora.wrap(lora.llama(seed=0))
    report = xfreeze.load_delta(fresh, path)
    assert sorted(report.loaded) == sorted(ADAPTERS)
    np.testing.assert_allclose(lora.logits(fresh), lora.logits(model), atol=1e-6)
    assert not np.allclose(lora.logits(fresh), lora.logits(lora.llama(seed=0)), atol=1e-4)


def test_load_delta_onto_an_unwrapped_base_says_to_wrap_it(fw, lora, tmp_path):
    model = lora.wrap(lora.llama(seed=0))
    xfreeze.freeze(model, "*")
    xfreeze.unfreeze(model, "type:adapter")
    path = xfreeze.save_delta(model, os.path.join(tmp_path, "adapter.safetensors"))
    base = lora.llama(seed=0)
    before = state_hash(base)
    with pytest.raises(xfreeze.XFreezeError, match="has no adapter layers: wrap it first"):
        xfreeze.load_delta(base, path)
    assert state_hash(base) == before


def test_replace_head_refuses_a_model_with_adapters(fw, lora):
    model = lora.wrap(lora.llama())
    before = state_hash(model)
    with pytest.raises(xfreeze.XFreezeError, match="before get_peft_model") as caught:
        xfreeze.replace_head(model, 3)
    assert "\n" not in str(caught.value)
    assert state_hash(model) == before


def test_a_modules_to_save_head_is_the_copy_that_trains(tmp_path):
    kit = lora_kit("torch")  # PEFT's modules_to_save: a torch-only wrapper (PaddleFormers: trainable_modules)
    model = kit.peft.get_peft_model(
        kit.llama(), kit.peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"])
    )
    assert xfreeze.select(model, "lm_head") == ["lm_head.weight"]
    xfreeze.freeze(model, "*")
    xfreeze.unfreeze(model, "lm_head")
    copy = model.base_model.model.lm_head
    assert copy.modules_to_save["default"].weight.requires_grad
    assert not copy.original_module.weight.requires_grad
    saved = xfreeze.load_checkpoint(xfreeze.save_checkpoint(model, tmp_path / "model.safetensors"))
    assert "lm_head.weight" in saved and not any("original_module" in k for k in saved)

"""An unmerged LoRA adapter moved between frameworks (issue 19): ``load_matched(paddleformers_lora_model,
peft_model_or_adapter_folder)`` and back, names and transposes converted, alpha / r rescaled, outputs equal; an
adapter whose rank or targets do not fit is refused, naming the file and key, with the model unchanged."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from lora_kit import OTHER, lora_kit
from statehash import state_hash

import xfreeze

pytestmark = pytest.mark.current_stack
ATOL = 1e-5  # float32 logits of the same tiny Llama in two frameworks (measured: ~5e-8)


def _twins(target: str, source_alpha: float = 8, target_alpha: float = 16):
    """The same Llama in both frameworks (base weights copied), wrapped with LoRA of rank 4; the source's adapter
    random, with another alpha than the target's (scalings 2 and 4)."""
    dst, src = lora_kit(target), lora_kit(OTHER[target])
    src_base, dst_base = src.llama(seed=0), dst.llama(seed=1)
    xfreeze.load_matched(dst_base, src_base)
    source, model = src.wrap(src_base, alpha=source_alpha), dst.wrap(dst_base, alpha=target_alpha)
    src.randomize_adapters(source)
    return dst, src, model, source


def test_moving_an_adapter_between_frameworks_keeps_the_outputs(fw):
    dst, src, model, source = _twins(fw.name)
    plain = dst.logits(model)
    report = xfreeze.load_matched(model, source)
    assert sum("lora_" in k for k in report.loaded) == 8
    assert all("transposed (Linear)" in report.converted[k] for k in report.loaded if "lora_A" in k)
    assert sum("scaled by 0.5" in " ".join(v) for v in report.converted.values()) == 4  # every lora_B
    np.testing.assert_allclose(dst.logits(model), src.logits(source), atol=ATOL)
    assert not np.allclose(dst.logits(model), plain, atol=1e-3)  # the adapter changes the outputs


def test_a_peft_adapter_folder_is_a_source(fw, tmp_path):
    peft_kit, kit = lora_kit("torch"), lora_kit(fw.name)
    peft_model = peft_kit.wrap(peft_kit.llama(seed=0), alpha=8)
    peft_kit.randomize_adapters(peft_model)
    peft_kit.save_adapter(peft_model, tmp_path)
    base = kit.llama(seed=1)
    xfreeze.load_matched(base, peft_kit.llama(seed=0))
    model = kit.wrap(base, alpha=4)
    report = xfreeze.load_matched(model, tmp_path)
    assert sorted(report.loaded) == sorted(xfreeze.select(model, "type:adapter"))
    assert report.missing == [] and any("an adapter alone" in note for _, note in report.notes)
    np.testing.assert_allclose(kit.logits(model), peft_kit.logits(peft_model), atol=ATOL)


@pytest.fixture
def adapter_folder(tmp_path):
    """A PEFT folder: rank 8 on q_proj and v_proj."""
    kit = lora_kit("torch")
    kit.save_adapter(kit.wrap(kit.llama(), r=8), tmp_path)
    return tmp_path


def test_an_adapter_of_another_rank_is_refused(fw, adapter_folder):
    kit = lora_kit(fw.name)
    model = kit.wrap(kit.llama(), r=4)
    before = state_hash(model)
    with pytest.raises(xfreeze.XFreezeError, match=r"q_proj.lora_A' has shape .* the ranks differ .* rank is 4"):
        xfreeze.load_matched(model, adapter_folder)
    assert state_hash(model) == before


def test_an_adapter_for_other_modules_is_refused(fw, adapter_folder):
    kit = lora_kit(fw.name)
    model = kit.wrap(kit.llama(), r=8, targets=("k_proj", "o_proj"))
    before = state_hash(model)
    with pytest.raises(
        xfreeze.XFreezeError, match=r"adapter source .*q_proj.lora_A. has no LoRA layer .*\(k_proj, o_proj\)"
    ):
        xfreeze.load_matched(model, adapter_folder)
    assert state_hash(model) == before


def test_an_adapter_for_fewer_modules_is_refused_unless_partial(fw, adapter_folder):
    kit = lora_kit(fw.name)
    model = kit.wrap(kit.llama(), r=8, targets=("q_proj", "k_proj", "v_proj"))
    before = state_hash(model)
    with pytest.raises(xfreeze.XFreezeError, match=r"adapts 8 of the 12 adapter weights .*k_proj"):
        xfreeze.load_matched(model, adapter_folder)
    assert state_hash(model) == before
    assert len(xfreeze.load_matched(model, adapter_folder, allow_partial=True).loaded) == 8


def test_an_adapter_onto_an_unwrapped_model_says_to_wrap_it(fw, adapter_folder):
    model = lora_kit(fw.name).llama()
    before = state_hash(model)
    with pytest.raises(xfreeze.XFreezeError, match="has no adapter layers: wrap it first"):
        xfreeze.load_matched(model, adapter_folder)
    assert state_hash(model) == before


def test_a_folder_whose_config_disagrees_with_its_tensors_is_refused(fw, adapter_folder):
    config = json.loads((adapter_folder / "adapter_config.json").read_text())
    config["r"] = 4
    (adapter_folder / "adapter_config.json").write_text(json.dumps(config))
    kit = lora_kit(fw.name)
    model = kit.wrap(kit.llama(), r=8)
    before = state_hash(model)
    with pytest.raises(xfreeze.XFreezeError, match=r"adapter_model.safetensors.*holds rank 8 but .* says r=4"):
        xfreeze.load_matched(model, adapter_folder)
    assert state_hash(model) == before


@pytest.mark.parametrize("damage", ["not json", "no weights", "not lora"])
def test_a_damaged_adapter_folder_names_the_file(fw, adapter_folder, damage):
    config_path = adapter_folder / "adapter_config.json"
    if damage == "not json":
        config_path.write_text("{ broken")
    elif damage == "no weights":
        os.remove(adapter_folder / "adapter_model.safetensors")
    else:
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "peft_type": "IA3"}))
    kit = lora_kit(fw.name)
    model = kit.wrap(kit.llama(), r=8)
    before = state_hash(model)
    with pytest.raises(xfreeze.XFreezeError, match=str(adapter_folder)):
        xfreeze.load_matched(model, adapter_folder)
    assert state_hash(model) == before

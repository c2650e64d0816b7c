"""The model view: wrappers seen through (DataParallel, torch.compile), caching and invalidation, large models."""

import pytest

import xfreeze
from xfreeze.model.view import view_of
from harness import Spec, batch, random_state

CNN = Spec("cnn", (4, 3))


def test_the_view_is_cached_and_rebuilt_when_structure_changes(fw):
    model = fw.build(CNN)
    view = view_of(model)
    assert view_of(model) is view
    xfreeze.freeze(model, "*")  # trainability is not structure
    assert view_of(model) is view
    model[8] = fw.build(Spec("mlp", (3,), classes=7))[0]  # the user swaps the head by hand
    rebuilt = view_of(model)
    assert rebuilt is not view and rebuilt.names[-2:] == ["8.weight", "8.bias"]
    assert xfreeze.freeze(model, "8").changed == ["8.weight", "8.bias"]  # the new layer's parameters


def test_tied_parameters_are_listed_once():
    import torch

    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    view = view_of(model)
    assert view.names == ["0.weight"] and view.tied == {"0.weight": ["1.weight"]}
    rows = xfreeze.summary(model, print_table=False).rows
    assert sum(r.parameters for r in rows) == 40 and rows[-1].tied == ("1.weight = 0.weight",)


def test_a_compiled_model_uses_the_inner_names():
    import torch
    from harness import kit

    fw = kit("torch")
    model = fw.build(CNN)
    fw.load(model, random_state(CNN, "float32", 0))
    compiled = torch.compile(model, backend="aot_eager")
    assert view_of(compiled).wrappers == ("OptimizedModule",) and "in OptimizedModule" in view_of(compiled).label
    assert xfreeze.select(compiled, "*", "!8") == xfreeze.select(model, "*", "!8")
    assert xfreeze.freeze(compiled, "*", "!8").changed[0] == "0.weight"
    assert [r.name for r in xfreeze.summary(compiled, print_table=False).rows] == ["0", "1", "3", "4", "8"]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert "8.weight" in xfreeze.load_matched(compiled, state).loaded
    head = xfreeze.replace_head(compiled, 6, head="8")
    assert model[8] is head
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = xfreeze.optimizer(compiled, "sgd", lr=0.1, momentum=0.9, weight_decay=1e-2)
    for step in range(3):
        x, y = batch(CNN, "float32", step)
        out = compiled(torch.from_numpy(x))
        assert out.shape[1] == 6
        loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y % 6).long())
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
    after = model.state_dict()
    for key in before:
        moved = not torch.equal(before[key], after[key])
        assert moved == key.startswith("8."), key


def test_data_parallel_label_and_names():
    import torch
    from harness import kit

    model = kit("torch").build(CNN)
    wrapped = torch.nn.DataParallel(model)
    view = view_of(wrapped)
    assert view.inner is model and view.names == view_of(model).names
    assert view.label == "Sequential in DataParallel (torch)"


def test_a_large_model_summarizes_with_collapsed_blocks():
    import torch
    from torch import nn

    with torch.device("meta"):
        model = nn.Module()
        model.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(300))
        model.head = nn.Linear(4, 2)
    xfreeze.freeze(model, "*", "!head", "!blocks.299")
    s = xfreeze.summary(model, print_table=False)
    text = str(s)
    assert len(s.rows) == 601 and "blocks.0-298 (x299)" in text and len(text.splitlines()) < 30
    assert s.counts.total == 300 * (20 + 8) + 10 and s.counts.trainable == 28 + 10
    assert s.counts.total == sum(r.parameters for r in s.rows)


def test_selection_errors_stay_helpful_on_large_models():
    import torch
    from torch import nn

    with torch.device("meta"):
        model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(3000)])
    with pytest.raises(xfreeze.XFreezeError, match=r"Did you mean '2999\.weight'|Did you mean"):
        xfreeze.freeze(model, "2999.weigth")
    assert all(view_of(model).trainable())


WRAPPED = r"""
import os, sys, torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1")
dist.init_process_group("gloo")
import xfreeze
from xfreeze.model.view import view_of
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, fully_shard

def make():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4),
                               torch.nn.Sequential(torch.nn.Linear(4, 2)))

plain = view_of(make())
fsdp1 = FSDP(make(), use_orig_params=True, device_id=torch.device("cpu"),
             auto_wrap_policy=lambda module, recurse, nonwrapped_numel: recurse or isinstance(module, torch.nn.Linear))
assert any("_fsdp_wrapped_module" in n for n, _ in fsdp1.named_parameters())
fsdp2 = make(); fully_shard(fsdp2[2]); fully_shard(fsdp2)
ddp = torch.nn.parallel.DistributedDataParallel(make())
for model, wrappers in ((fsdp1, ("FullyShardedDataParallel",)), (fsdp2, ("fully_shard",)),
                        (ddp, ("DistributedDataParallel",)), (torch.compile(make()), ("OptimizedModule",))):
    view = view_of(model)
    assert view.wrappers == wrappers, view.wrappers
    assert view.names == plain.names and view.stat_names == plain.stat_names, view.names
    assert view.shapes == plain.shapes, view.shapes
    assert xfreeze.select(model, "2") == ["2.0.weight", "2.0.bias"]
    rows = [r.name for r in xfreeze.summary(model, print_table=False).rows]
    assert rows == ["0", "1", "2.0"], rows
dist.destroy_process_group()
print("ok")
"""


@pytest.mark.slow
def test_distributed_wrappers_use_the_inner_names(tmp_path):
    """FSDP1 (`_fsdp_wrapped_module.` at every unit), FSDP2 (DTensor parameters), DDP and torch.compile: names,
    shapes (logical, unsharded), selection and summary are the plain model's (world size 1, gloo, a subprocess)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    script = tmp_path / "wrapped.py"
    script.write_text(WRAPPED)
    result = subprocess.run([sys.executable, str(script), port], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_bart_tied_embeddings_count_once():
    import transformers

    config = transformers.BartConfig(
        vocab_size=99,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=32,
    )
    model = transformers.BartForSequenceClassification(config)
    s = xfreeze.summary(model, print_table=False)
    assert sum(r.parameters for r in s.rows) == s.counts.total == sum(p.numel() for p in model.parameters())
    assert sorted(r.name for r in s.rows if r.tied) == ["model.decoder.embed_tokens", "model.encoder.embed_tokens"]


def test_a_layer_swapped_between_two_operations_is_seen_by_the_second(fw):
    """Multi-step operations (param_groups, StagedUnfreeze, check) check the view once each; the next one again."""
    model = fw.build(CNN)
    before = {id(p) for g in xfreeze.param_groups(model, lr=0.1) for p in g["params"]}
    model[8] = fw.build(Spec("mlp", (3,), classes=7))[0]  # the user swaps the head by hand
    after = xfreeze.param_groups(model, lr=0.1)
    held = {id(p) for g in after for p in g["params"]}
    new = {id(p) for p in model[8].parameters()}
    assert new <= held and not new & before
    assert {n for g in after for n in g["names"] if n.startswith("8.")} == {"8.weight", "8.bias"}


def test_a_cached_view_does_not_keep_a_deleted_model_alive(fw):
    """The view cache is keyed by the model; the view holds the model and its root module weakly, so a model the
    user drops (a sweep, a notebook building models in a loop) is freed with its weights."""
    import gc
    import weakref

    model = fw.build(CNN)
    ref = weakref.ref(model)
    xfreeze.freeze(model, "*", "!8")
    opt = xfreeze.optimizer(model, "sgd", lr=0.1)
    xfreeze.check(model, opt)
    xfreeze.summary(model, print_table=False)
    assert view_of(model).modules[0] is model and list(view_of(model).modules)[0] is model
    del model, opt
    gc.collect()
    assert ref() is None

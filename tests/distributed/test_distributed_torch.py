"""DDP / FSDP / SyncBatchNorm / torch.compile under xfreeze (issue 10): 2 processes on CPU over gloo, different data
per rank, every tensor compared bit for bit across ranks. Bodies in dist_workers.py."""

from __future__ import annotations

import numpy as np
import pytest

import dist_workers as W

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def frozen_keys(state: dict, *prefixes) -> list:
    return [k for k in state if k.startswith(prefixes)]


def test_staged_unfreeze_rewraps_ddp_and_ranks_stay_identical(tmp_path):
    r0, r1 = W.launch_torch(W.torch_staged_rewrap, tmp_path)
    # a training BatchNorm's running statistics are rank-local until DDP's next forward broadcasts rank 0's
    stats = ("1.1.running_mean", "1.1.running_var", "1.1.num_batches_tracked")
    assert same_bits(*({k: v for k, v in r["mid"].items() if k not in stats} for r in (r0, r1)))
    assert same_bits(r0["end"], r1["end"])  # block 1 locked at step 4, after a broadcast: everything identical
    start, mid, end = r0["start"], r0["mid"], r0["end"]
    for k in frozen_keys(start, "0."):  # the stem never trains: weights and locked statistics bit for bit
        assert np.array_equal(start[k], end[k]), k
    assert not np.array_equal(start["1.0.weight"], mid["1.0.weight"])  # unfrozen after DDP was built: it trains
    for k in ("1.0.weight", "1.1.weight", "1.1.running_mean"):  # re-frozen at step 4 (a second rebuild)
        assert np.array_equal(mid[k], end[k]), k
    assert r0["groups"] == 2 and r0["live_is_ddp"] and r0["momentum_kept"]
    assert "replaced at a stage boundary" in r0["old_wrapper"]


def test_a_kept_ddp_with_averaging_hooks_trains_bit_for_bit_like_a_rebuilt_one(tmp_path):
    r0, r1 = W.launch_torch(W.torch_keep_vs_rebuild, tmp_path)
    local = ("1.1.running_mean", "1.1.running_var")  # a training BatchNorm's statistics are rank-local
    for r in (r0, r1):
        assert r["live"]  # the framework's wrapper was adopted, not replaced
        assert same_bits(r["rebuilt"], r["kept"])  # hooks average exactly as the DDP registered at the boundary
    assert same_bits(*({k: v for k, v in r["kept"].items() if k not in local} for r in (r0, r1)))


def test_ddp_refuses_changes_it_cannot_honour_before_anything_changes(tmp_path):
    r0, r1 = W.launch_torch(W.torch_refusals, tmp_path)
    for r in (r0, r1):
        assert "stages[0] (at=1) unfreezes 4 parameters (0.0.weight, 0.0.bias, 0.1.weight, ...)" in r["staged"]
        assert "rewrap=" in r["staged"] and "freeze before wrapping" in r["staged"]
        assert "stages[0] (at=1) freezes" in r["staged_freeze"]
        assert r["agree"] is None and r["unchanged"] and r["bits_unchanged"]
        assert "ranks froze different tensors" in r["disagree"]
        assert "rank 0: 0.0.weight=F; rank 1: 0.0.weight=T" in r["disagree"]
        assert "never registered them" in r["unfreeze"] and "Nothing was changed" in r["unfreeze"]
        assert "never registered them" in r["unfreeze_inner"]  # the plain model inside a live DDP
        assert "Expected to have finished reduction" in r["freeze"]
        assert r["built"] == "DistributedDataParallel"
    assert same_bits(r0["plain"], r1["plain"])  # a plain model given with rewrap=: wrapped and trained in step


def test_norm_lock_survives_convert_sync_batchnorm(tmp_path):
    r0, r1 = W.launch_torch(W.torch_sync_bn, tmp_path)
    for r in (r0, r1):
        assert r["types"] == ["SyncBatchNorm", "SyncBatchNorm"]
        assert "expected input tensor to be on GPU" in r["unlocked"]  # an unlocked SyncBatchNorm syncs in forward
        for k in frozen_keys(r["start"], "0."):
            assert np.array_equal(r["start"][k], r["end"][k]), k


def test_save_checkpoint_rank0_writes_once_after_all_gather(tmp_path):
    path = str(tmp_path / "ddp.pt")
    r0, r1 = W.launch_torch(W.torch_save_rank0, tmp_path, path=path)
    assert r0["exists"] and r1["exists"]  # written by rank 0 before the barrier every rank waits at
    assert "rank must be an integer in [0, 2)" in r0["bad_rank"]
    import xfreeze

    saved = {k: v.numpy() for k, v in xfreeze.load_checkpoint(path).items()}
    assert same_bits(saved, r0["state"]) and same_bits(r0["state"], r1["state"])  # rank 0's, broadcast by DDP


def test_fsdp2_freeze_before_sharding_staged_unfreeze_and_rank0_save(tmp_path):
    path = str(tmp_path / "fsdp.pt")
    r0, r1 = W.launch_torch(W.torch_fsdp2, tmp_path, path=path)
    local = ("1.1.running_mean", "1.1.running_var")  # a training BatchNorm's statistics are rank-local under FSDP
    assert same_bits(*({k: v for k, v in r["full"].items() if k not in local} for r in (r0, r1)))
    assert r0.get("save_error") is None, r0.get("save_error")
    import xfreeze

    saved = {k: v.numpy() for k, v in xfreeze.load_checkpoint(path).items()}
    assert same_bits(saved, r0["full"])
    start = W.torch_cnn().state_dict()
    for k in ("0.0.weight", "0.1.running_mean"):  # frozen before sharding: bit for bit
        assert np.array_equal(start[k].numpy(), r0["full"][k]), k
    assert not np.array_equal(start["1.0.weight"].numpy(), r0["full"]["1.0.weight"])  # unfrozen after sharding
    assert np.array_equal(r0["head_before_freeze"], r0["full"]["4.weight"])  # frozen after sharding: fixed
    assert r0["sizes"]["1.0.weight"] == (216, 108) and r1["sizes"]["1.0.weight"] == (216, 108)  # full, this rank
    for r in (r0, r1):  # load_matched into the sharded model: validated first, loaded through set_model_state_dict
        assert "strict load" in r["strict"] and same_bits(r["full"], r["after_strict"])
        assert r["loaded"] == r0["loaded"] and "4.weight" in r["loaded"]
        assert all((v == 0.5).all() for k, v in r["after_load"].items() if "num_batches" not in k)
    # EMA is the lead's (issue 8 moves it to foreach lerp on native tensors), deltas the checkpoint engineer's:
    # what fails today is reported here
    reported = []
    if not (isinstance(r0["ema_before"], dict) and r0["ema_before"]["moved"]):
        reported.append(
            "EMA built before fully_shard does not follow the sharded parameters (its shadow stays "
            "put: it still tracks the tensors fully_shard replaced)"
        )
    if "ema_error" in r0:
        reported.append(f"EMA built after fully_shard: {r0['ema_error']}")
    assert "none drifted" in r0["delta"], r0["delta"]
    if r0["delta_keys"].get("1.0.weight") != [6, 4, 3, 3]:  # save_delta is the checkpoint engineer's (I/O issue)
        reported.append(
            f"save_delta on a fully_shard model writes each rank's local shard under the full "
            f"names (1.0.weight {r0['delta_keys'].get('1.0.weight')}, full [6, 4, 3, 3])"
        )
    assert not reported, "; ".join(reported)
    assert np.array_equal(r0["ema_before"]["shadow"], r1["ema_before"]["shadow"]) and r0["ema_before"]["toward"]
    assert same_bits(*({k: v for k, v in r["ema"].items() if k not in local} for r in (r0, r1)))


@pytest.mark.parametrize("compiler", ["eager", "aot_eager"])
def test_stage_change_on_compiled_model_takes_effect(compiler):
    """torch.compile: dynamo guards on requires_grad, so the next call after a stage change recompiles and the
    newly trainable parameters get gradients (no torch._dynamo.reset needed). aot_eager traces the backward the way
    inductor does; inductor itself (measured: same result, 16 s here) is left out of the tier for time."""
    import xfreeze

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    xfreeze.freeze(model, "0")
    compiled = torch.compile(model, backend=compiler)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    staged = xfreeze.StagedUnfreeze(model, opt, [xfreeze.Stage(1, unfreeze=["0"])], unit="step")
    before = model[0].weight.detach().clone()
    for step in range(3):
        staged.step(step)
        opt.zero_grad()
        compiled(torch.randn(3, 4)).sum().backward()
        if step == 0:
            assert model[0].weight.grad is None
        opt.step()
    assert model[0].weight.grad is not None and not torch.equal(before, model[0].weight)


def test_fsdp1_use_orig_params_stage_changes_names_save_and_refused_load(tmp_path):
    path = str(tmp_path / "fsdp1.pt")
    r0, r1 = W.launch_torch(W.torch_fsdp1, tmp_path, path=path)
    assert r0["select"] == r1["select"] == ["1.0.weight", "1.0.bias"]  # plain names, no _fsdp_wrapped_module.
    local = ("1.1.running_mean", "1.1.running_var")  # a training BatchNorm's statistics are rank-local under FSDP
    assert same_bits(*({k: v for k, v in r["full"].items() if k not in local} for r in (r0, r1)))
    start = W.torch_cnn().state_dict()
    assert all(np.array_equal(start[k].numpy(), r0["full"][k]) for k in start if k.startswith("0."))
    import xfreeze

    assert same_bits({k: v.numpy() for k, v in xfreeze.load_checkpoint(path).items()}, r0["full"])
    stats = ("running_mean", "running_var")  # BatchNorm statistics are rank-local under FSDP (no buffer sync)
    for key in ("after_unfreeze", "after_freeze"):  # stage changes after wrapping: parameters identical on ranks
        assert same_bits(*({k: v for k, v in r[key].items() if not k.endswith(stats)} for r in (r0, r1))), key
    assert r0["unfreeze"][:2] == ["0.0.weight", "0.0.bias"] and r0["freeze"][:2] == ["1.0.weight", "1.0.bias"]
    assert not np.array_equal(r0["full"]["0.0.weight"], r0["after_unfreeze"]["0.0.weight"])  # trains once unfrozen
    for k in ("1.0.weight", "1.1.weight", "1.1.running_mean"):  # fixed bit for bit once frozen after wrapping
        assert np.array_equal(r0["after_unfreeze"][k], r0["after_freeze"][k]), k
    for r in (r0, r1):
        assert "load_matched into a FSDP1-sharded" in r["load"] and "nothing was changed" in r["load"]
        assert same_bits(r["after_freeze"], r["after_load"])
    sizes = {n: (full, r0["sizes"][n][1] + r1["sizes"][n][1]) for n, (full, _) in r0["sizes"].items()}
    assert sizes["1.0.weight"] == (216, 216) and all(full == local for full, local in sizes.values())
    # summary counts whole tensors on every rank (from the flat parameters' full shapes), not the local shards
    trainable = sum(full for name, (full, _) in r0["sizes"].items() if not name.startswith("0."))  # "0" was frozen
    assert r0["summary"] == r1["summary"] == trainable


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or not torch.distributed.is_nccl_available(), reason="needs a CUDA GPU and NCCL"
)
def test_ddp_and_fsdp2_stage_change_on_one_gpu_nccl(tmp_path):
    (r,) = W.launch_torch(W.torch_gpu, tmp_path, world=1, backend="nccl")
    assert r == {"ddp": True, "fsdp2": True}  # the block unfrozen after wrapping / sharding trains


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_rewrap_must_be_callable_and_single_process_is_untouched(framework):
    import xfreeze
    from xfreeze.model.guard import check_freeze_agreement, guard_trainability_change

    model = getattr(W, f"{framework}_cnn")()  # dist_workers builds the same CNN in each framework
    xfreeze.freeze(model, "0")
    opt = xfreeze.optimizer(model, "sgd", lr=0.1)
    with pytest.raises(xfreeze.XFreezeError, match="rewrap must be a function that wraps the model"):
        xfreeze.StagedUnfreeze(model, opt, [xfreeze.Stage(1, unfreeze=["0"])], rewrap=3)
    guard_trainability_change(model, ["0.0.weight"], ["4.weight"])  # no wrapper, no process group: allowed
    check_freeze_agreement(model)  # one process: nothing to compare
    staged = xfreeze.StagedUnfreeze(model, opt, [xfreeze.Stage(1, unfreeze=["0"])], rewrap=lambda m: 1 / 0)
    staged.step(1)  # no process group: the wrapper is never built, the stage applies as usual
    assert staged.wrapped is model and xfreeze.summary(model, print_table=False).counts.frozen == 0

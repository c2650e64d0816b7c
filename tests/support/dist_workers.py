"""Bodies of the 2-process tests (issue 10): each runs on every rank, trains a few steps on rank-specific data and
writes what the test compares (every tensor's bytes, error messages) to ``<out>/rank<r>.pkl``.

Launchers here bound every process (a deadline, then the processes are killed) and pick a free port per run.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
import traceback

import numpy as np

# every 2-process test is a few steps (seconds on a quiet machine); the bound is for a hung rank, and allows a loaded
# 2-core CI runner (90 s timed out once at load average 8); XFREEZE_DIST_TIMEOUT_S changes it
TIMEOUT_S = int(os.environ.get("XFREEZE_DIST_TIMEOUT_S", "180"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def results(out, world: int = 2) -> list:
    loaded = []
    for r in range(world):
        with open(os.path.join(out, f"rank{r}.pkl"), "rb") as f:
            loaded.append(pickle.load(f))
    return loaded


def _save(out, rank: int, result: dict) -> None:
    with open(os.path.join(out, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def _error(fn) -> str | None:
    """The XFreezeError message ``fn()`` raises (None when it raises nothing)."""
    import xfreeze

    try:
        fn()
    except xfreeze.XFreezeError as exc:
        return str(exc)
    return None


# --- torch ----------------------------------------------------------------------------------------------------------


def launch_torch(body, out, world: int = 2, backend: str = "gloo", **kwargs) -> list:
    import torch.multiprocessing as mp

    port = free_port()
    ctx = mp.start_processes(
        _torch_entry,
        args=(world, port, body, str(out), kwargs, backend),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    _join(ctx, [p for p in ctx.processes])
    return results(out, world)


def _join(ctx, processes) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"distributed test still running after {TIMEOUT_S} s")
    finally:
        for p in processes:
            if p.is_alive():
                p.kill()


def _torch_entry(rank, world, port, body, out, kwargs, backend="gloo"):
    import datetime

    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        _save(out, rank, body(rank, **kwargs))
    except Exception:
        _save(out, rank, {"crash": traceback.format_exc()})
        raise
    finally:
        import gc

        gc.collect()  # free retired DDP wrappers (their reducers) while the process group still exists
        dist.barrier()
        dist.destroy_process_group()


def torch_cnn(seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),  # 0: stem
        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()),  # 1: block
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )  # 4: head


def _torch_state(model) -> dict:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _torch_steps(wrapped_fn, opt, rank: int, steps, staged=None):
    import torch

    for step in steps:
        if staged is not None:
            staged.step(step)
        g = torch.Generator().manual_seed(1000 * rank + step)  # different data on every rank
        x, y = torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g)
        loss = torch.nn.functional.cross_entropy(wrapped_fn()(x), y)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()


def torch_staged_rewrap(rank: int) -> dict:
    """Freeze before wrap, then a stage unfreezes the block after DDP exists and a later one freezes it again."""
    import torch
    import xfreeze
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = torch_cnn()
    xfreeze.freeze(model, "0", "1")
    ddp = DDP(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    staged = xfreeze.StagedUnfreeze(
        ddp,
        opt,
        [
            xfreeze.Stage(0, freeze=["0", "1"]),
            xfreeze.Stage(2, unfreeze=["1"], lr=0.05),
            xfreeze.Stage(4, freeze=["1"]),
        ],
        unit="step",
        rewrap=lambda m: DDP(m),
    )
    start = _torch_state(model)
    head_momentum = []
    _torch_steps(lambda: staged.wrapped, opt, rank, range(0, 2), staged)
    head_momentum.append(opt.state[model[4].weight]["momentum_buffer"].clone().numpy())
    _torch_steps(lambda: staged.wrapped, opt, rank, range(2, 4), staged)
    mid = _torch_state(model)
    _torch_steps(lambda: staged.wrapped, opt, rank, range(4, 6), staged)
    return {
        "start": start,
        "mid": mid,
        "end": _torch_state(model),
        "groups": len(opt.param_groups),
        "old_wrapper": _error(lambda: ddp(torch.zeros(1, 3, 6, 6))),
        "live_is_ddp": isinstance(staged.wrapped, DDP),
        "momentum_kept": head_momentum[0].shape == opt.state[model[4].weight]["momentum_buffer"].shape,
    }


def torch_lightning_ddp(rank: int, root: str, package: str = "pytorch_lightning") -> dict:
    """Lightning's DDP strategy with xfreeze Finetuning: a stage unfreezes backbone blocks at epoch 2 (the callback
    rebuilds the DDP wrapper); then two resumed fits from Lightning checkpoints before and after the boundary.
    ``package``: ``pytorch_lightning`` or ``lightning.pytorch`` (the Trainer, module and callbacks all of it)."""
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0")  # processes launched here: Lightning launches none
    import importlib

    from test_integrations_lightning import STAGES, data, kit, net
    from torch.nn.parallel import DistributedDataParallel as DDP
    from xfreeze.integrations.lightning import Finetuning

    pl, Rates = importlib.import_module(package), kit(package).Rates

    class Wrappers(pl.Callback):  # the live DDP at every epoch start (after Finetuning ran: callbacks run in order)
        def __init__(self):
            self.seen = {}

        def on_train_epoch_start(self, trainer, pl_module):
            self.seen[trainer.current_epoch] = trainer.strategy.model

    def fit(name, ckpt=None):
        finetuning, rates, wrappers = Finetuning(STAGES, ema=0.5), Rates(), Wrappers()
        callbacks = [finetuning, rates, wrappers]
        if ckpt is None:
            callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=root, filename="{epoch}", save_top_k=-1))
        trainer = pl.Trainer(
            max_epochs=4,
            accelerator="cpu",
            devices=2,
            strategy="ddp",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=ckpt is None,
            callbacks=callbacks,
            default_root_dir=os.path.join(root, name),
        )
        model = net(package=package)
        start = _torch_state(model)
        trainer.fit(model, data(), ckpt_path=None if ckpt is None else os.path.join(root, ckpt))
        live = [wrappers.seen[e] for e in sorted(wrappers.seen)]
        return {
            "start": start,
            "end": _torch_state(model),
            "ema": {k: v.numpy().copy() for k, v in finetuning.ema.state_dict()["shadow"].items()},
            "rates": rates.seen,
            "ddp": all(isinstance(w, DDP) for w in live),
            "rebuilt_at": [e for e in sorted(wrappers.seen)[1:] if wrappers.seen[e] is not wrappers.seen[e - 1]],
            "retired": _error(lambda: live[0](data().dataset.tensors[0][:1])) if len(set(map(id, live))) > 1 else None,
        }

    out = {"run": fit("run")}
    for ckpt in ("epoch=0.ckpt", "epoch=2.ckpt"):  # before and after the boundary
        out[ckpt] = fit(ckpt.split(".")[0], ckpt)
    return out


def torch_hf_ddp(rank: int, root: str) -> dict:
    """The Hugging Face Trainer on 2 processes (it wraps the model in DDP itself and holds the wrapper): a stage
    unfreezes encoder layer 0 at epoch 1 (xfreeze keeps the DDP, averaging that layer's gradients by hooks); a
    resumed fit from the checkpoint after the boundary; a stage that freezes after wrapping, under the Trainer's
    default DDP (find_unused_parameters=True: it follows) and with ddp_find_unused_parameters=False (refused)."""
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE="2")  # as torchrun sets them
    from test_integrations_hf import STAGES, CpuProcessGroupArgs, bert, dataset, weights
    from test_integrations_hf import args as hf_args

    import transformers
    import xfreeze
    from xfreeze.integrations.transformers import Finetuning

    class Epochs(transformers.TrainerCallback):  # the weights at every epoch start (after Finetuning ran)
        def __init__(self):
            self.seen = {}

        def on_epoch_begin(self, args, state, control, model=None, **kwargs):
            self.seen[round(state.epoch or 0)] = weights(model)

    def fit(name, stages=STAGES, resume=None, **extra):
        model, staging, epochs = bert(), Finetuning(stages, ema=0.5), Epochs()
        args = hf_args(os.path.join(root, name), cls=CpuProcessGroupArgs, ddp_backend="gloo", **extra)
        trainer = transformers.Trainer(
            model=model,
            args=args,
            train_dataset=dataset(),
            callbacks=[staging, epochs],
            optimizers=staging.optimizers(model, "adamw", lr=2**-8, weight_decay=2**-8, num_training_steps=6),
        )
        start = weights(model)
        error = _error(lambda: trainer.train(resume_from_checkpoint=resume))
        return {
            "start": start,
            "end": weights(model),
            "error": error,
            "wrapper": type(trainer.model_wrapped).__name__,
            "groups": len(trainer.optimizer.param_groups),
            "ema": {k: v.numpy().copy() for k, v in staging.ema.state_dict()["shadow"].items()},
            "epochs": epochs.seen,
        }

    out = {"run": fit("run")}
    out["resumed"] = fit("resumed", resume=os.path.join(root, "run", "checkpoint-4"))  # after the epoch-1 boundary
    later_freeze = [xfreeze.Stage(0, freeze=["bert.embeddings"]), xfreeze.Stage(1, freeze=["bert.encoder.layer.0"])]
    out["freeze_later"] = fit("freeze_later", stages=later_freeze)  # the Trainer's default DDP follows a freeze
    out["refused"] = fit("refused", stages=later_freeze, ddp_find_unused_parameters=False)
    return out


def torch_keep_vs_rebuild(rank: int) -> dict:
    """The same schedule two ways under DDP: StagedUnfreeze(rewrap=) rebuilds the DDP at the boundary; a training
    framework's Staging keeps the DDP it found and averages the newly trainable block's gradients by hooks. Every
    step accumulates two micro-batches, the first inside ``no_sync()`` (as the HF Trainer does)."""
    import torch
    import xfreeze
    from torch.nn.parallel import DistributedDataParallel as DDP
    from xfreeze.integrations._staging import Staging

    stages = [xfreeze.Stage(0, freeze=["0", "1"]), xfreeze.Stage(2, unfreeze=["1"], lr=0.05)]

    def sgd(model):
        return xfreeze.optimizer(model, "sgd", lr=0.1, momentum=0.9)

    def accumulated_step(wrapper, opt, step):
        opt.zero_grad(set_to_none=False)
        for micro in range(2):
            g = torch.Generator().manual_seed(1000 * rank + 10 * step + micro)  # different data on every rank
            x, y = torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g)
            if micro == 0:
                with wrapper.no_sync():
                    torch.nn.functional.cross_entropy(wrapper(x), y).backward()
            else:
                torch.nn.functional.cross_entropy(wrapper(x), y).backward()
        opt.step()

    rebuilt = torch_cnn()
    xfreeze.freeze(rebuilt, "0", "1")
    opt_a = sgd(rebuilt)
    staged = xfreeze.StagedUnfreeze(DDP(rebuilt), opt_a, stages, unit="step", rewrap=lambda m: DDP(m))
    for step in range(6):
        staged.step(step)
        accumulated_step(staged.wrapped, opt_a, step)

    kept, staging = torch_cnn(), Staging(stages, unit="step", backend="torch")
    staging.prepare(kept)  # stage 0, before the framework wraps the model
    wrapper, opt_b = DDP(kept), sgd(kept)
    staging.attach(opt_b)
    for step in range(6):
        staging.step(step)
        accumulated_step(wrapper, opt_b, step)
    return {"rebuilt": _torch_state(rebuilt), "kept": _torch_state(kept), "live": staging.staged.wrapped is wrapper}


def torch_refusals(rank: int) -> dict:
    """What is refused under DDP, before anything changes, and the freeze-mask agreement check."""
    import torch
    import xfreeze
    from torch.nn.parallel import DistributedDataParallel as DDP
    from xfreeze.model.guard import check_freeze_agreement

    model = torch_cnn()
    xfreeze.freeze(model, "0")
    ddp = DDP(model)
    before = _torch_state(model)
    trainable_before = [p.requires_grad for p in model.parameters()]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = {
        "staged": _error(lambda: xfreeze.StagedUnfreeze(ddp, opt, [xfreeze.Stage(1, unfreeze=["0"])])),
        "staged_freeze": _error(lambda: xfreeze.StagedUnfreeze(ddp, opt, [xfreeze.Stage(1, freeze=["1"])])),
        "unfreeze": _error(lambda: xfreeze.unfreeze(ddp, "0")),
        "unfreeze_inner": _error(lambda: xfreeze.unfreeze(model, "0")),
        "freeze": _error(lambda: xfreeze.freeze(ddp, "1")),
        "agree": _error(lambda: check_freeze_agreement(ddp)),
    }
    out["unchanged"] = trainable_before == [p.requires_grad for p in model.parameters()]
    out["bits_unchanged"] = all((before[k] == v).all() for k, v in _torch_state(model).items())
    other = torch_cnn()
    xfreeze.freeze(other, "0" if rank == 0 else "1")  # a rank-dependent freeze
    out["disagree"] = _error(lambda: check_freeze_agreement(other))
    plain = torch_cnn()  # a plain model and rewrap=: StagedUnfreeze builds the wrapper itself
    xfreeze.freeze(plain, "0")
    opt = torch.optim.SGD([p for p in plain.parameters() if p.requires_grad], lr=0.1)
    staged = xfreeze.StagedUnfreeze(plain, opt, [xfreeze.Stage(1, unfreeze=["0"])], unit="step", rewrap=DDP)
    out["built"] = type(staged.wrapped).__name__
    _torch_steps(lambda: staged.wrapped, opt, rank, range(3), staged)
    out["plain"] = {k: v for k, v in _torch_state(plain).items() if "running" not in k}
    return out


def torch_sync_bn(rank: int) -> dict:
    """A frozen BatchNorm converted to SyncBatchNorm stays locked: no cross-rank collective in forward (on CPU the
    sync path raises, so a clean train-mode step proves it is not taken) and statistics bitwise fixed. (DDP refuses
    SyncBatchNorm on CPU, so the model runs bare in the process group.)"""
    import torch
    import xfreeze

    model = torch_cnn()
    xfreeze.freeze(model, "0")
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    start = _torch_state(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    unlocked = None
    try:
        _torch_steps(lambda: model, opt, rank, range(1))
    except ValueError as exc:  # block 1's SyncBatchNorm is not locked: it syncs (GPU only)
        unlocked = str(exc)
    xfreeze.freeze(model, "1")
    _torch_steps(lambda: model, opt, rank, range(1, 3))
    return {
        "start": start,
        "end": _torch_state(model),
        "unlocked": unlocked,
        "types": [type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__],
    }


def torch_save_rank0(rank: int, path: str) -> dict:
    import xfreeze
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = torch_cnn(seed=rank)  # different weights per rank: DDP broadcasts rank 0's
    ddp = DDP(model)
    xfreeze.save_checkpoint(ddp, path, rank=0)
    exists = os.path.exists(path)  # after the barrier: every rank sees the file
    return {
        "exists": exists,
        "state": _torch_state(model),
        "bad_rank": _error(lambda: xfreeze.save_checkpoint(ddp, path, rank=5)),
    }


def torch_fsdp2(rank: int, path: str) -> dict:
    """FSDP2 on CPU: freeze before sharding, a stage unfreezes after sharding, EMA, rank-0 full save."""
    import torch
    import xfreeze
    from torch.distributed.fsdp import fully_shard

    model = torch_cnn()
    xfreeze.freeze(model, "0", "1")
    for block in (model[0], model[1], model[4]):
        fully_shard(block)
    fully_shard(model)
    out = {}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    staged = xfreeze.StagedUnfreeze(
        model, opt, [xfreeze.Stage(2, unfreeze=["1"], lr=0.05), xfreeze.Stage(3, freeze=["4"])], unit="step"
    )
    try:
        ema = xfreeze.EMA(model, decay=0.9)
    except Exception as exc:  # reported, not hidden: the EMA rework is the lead's
        ema, out["ema_error"] = None, f"{type(exc).__name__}: {exc}"[:300]
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    for step in range(4):
        if step == 3:  # before the head is frozen after sharding
            head = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))["4.weight"]
            out["head_before_freeze"] = head.detach().cpu().numpy().copy()
        staged.step(step)
        g = torch.Generator().manual_seed(1000 * rank + step)
        x, y = torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if ema is not None:
            try:
                ema.update()
            except Exception as exc:
                ema, out["ema_error"] = None, f"{type(exc).__name__}: {exc}"[:300]
    try:
        xfreeze.save_checkpoint(model, path, rank=0)
        out["saved"] = True
    except Exception as exc:
        out["save_error"] = f"{type(exc).__name__}: {exc}"[:300]
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    out["full"] = {k: v.detach().cpu().numpy().copy() for k, v in full.items()}
    if ema is not None:
        shadow = ema.state_dict()["shadow"].items()  # DTensor shadows (sharded like the parameters) are gathered
        out["ema"] = {k: _full(v).detach().cpu().numpy().copy() for k, v in shadow}
    from xfreeze.backends.torch.adapter import ADAPTER

    out["sizes"] = ADAPTER.sharded_sizes(model)
    out["ema_before"] = _safe(lambda: _ema_before_sharding(rank))
    delta = path + f".delta{rank}.safetensors"  # the I/O issue's delta checkpoints, on the sharded model
    out["delta"] = _safe(lambda: xfreeze.save_delta(model, delta) and str(xfreeze.verify_frozen(model, delta)))
    out["delta_keys"] = _safe(lambda: {k: list(v.shape) for k, v in xfreeze.load_checkpoint(delta).items()})
    source = {k: torch.full_like(v, 0.5) for k, v in torch_cnn().state_dict().items() if v.is_floating_point()}
    bad = dict(source, **{"4.weight": torch.zeros(7, 6)})  # a wrong shape: strict refuses before any write
    out["strict"] = _safe(lambda: xfreeze.load_matched(model, bad, strict=True))
    options = StateDictOptions(full_state_dict=True)
    out["after_strict"] = {
        k: v.detach().cpu().numpy().copy() for k, v in get_model_state_dict(model, options=options).items()
    }
    out["loaded"] = sorted(xfreeze.load_matched(model, source).loaded)
    out["after_load"] = {
        k: v.detach().cpu().numpy().copy() for k, v in get_model_state_dict(model, options=options).items()
    }
    return out


def _full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _ema_before_sharding(rank: int) -> str:
    """EMA built on the plain model, then fully_shard, then updates: the shadow must follow the (sharded) model."""
    import torch
    import xfreeze
    from torch.distributed.fsdp import fully_shard

    model = torch_cnn()
    xfreeze.freeze(model, "0")
    ema = xfreeze.EMA(model, decay=0.9)
    fully_shard(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    _torch_steps(lambda: model, opt, rank, range(2))
    before = ema.state_dict()["shadow"]["4.weight"]
    before = before.full_tensor() if hasattr(before, "full_tensor") else before
    ema.update()
    shadow = ema.state_dict()["shadow"]["4.weight"]
    shadow = shadow.full_tensor() if hasattr(shadow, "full_tensor") else shadow
    weight = model[4].weight.full_tensor()
    expected = before + 0.1 * (weight - before)  # decay 0.9 (warm-up may lower it: compare direction only)
    return {
        "shadow": shadow.detach().numpy().copy(),
        "moved": bool((shadow != before).any()),
        "toward": bool(((shadow - before) * (expected - before) >= 0).all()),
    }


# --- Paddle ---------------------------------------------------------------------------------------------------------


def launch_paddle(body, out, world: int = 2, **kwargs) -> list:
    import paddle.distributed as dist

    ctx = dist.spawn(
        _paddle_entry, args=(body, str(out), kwargs), nprocs=world, join=False, backend="gloo", started_port=free_port()
    )
    _join(ctx, ctx.processes)
    return results(out, world)


def _paddle_entry(body, out, kwargs):
    import paddle.distributed as dist

    dist.init_parallel_env()
    rank = dist.get_rank()
    try:
        _save(out, rank, body(rank, **kwargs))
    except Exception:
        _save(out, rank, {"crash": traceback.format_exc()})
        raise


def paddle_hapi_dp(rank: int, root: str) -> dict:
    """paddle.Model.fit on 2 processes (paddle.Model wraps the network in DataParallel and holds it): a stage
    unfreezes blocks 3 and 4 at epoch 2 (xfreeze keeps the DataParallel and averages their gradients by hooks); a
    resumed fit from paddle.Model.save after the boundary; stage 0 after paddle.Model(net) is refused with a hint."""
    import paddle
    from test_integrations_hapi import STAGES, cnn, dataset
    from xfreeze.integrations.hapi import Finetuning

    def fit(epochs, load=None, save_dir=None):
        with paddle.utils.unique_name.guard():
            net, staging = cnn(), Finetuning(STAGES, ema=0.5)
            start = _paddle_state(net)
            opt = staging.optimizer(net, "sgd", lr=0.1, momentum=0.875, weight_decay=2**-10)  # before paddle.Model
            model = paddle.Model(net)
            model.prepare(opt, paddle.nn.CrossEntropyLoss())
            if load is not None:
                model.load(load)
            model.fit(
                dataset(), epochs=epochs, batch_size=8, shuffle=False, verbose=0, save_dir=save_dir, callbacks=[staging]
            )
            return {
                "start": start,
                "end": _paddle_state(net),
                "wrapper": type(model._adapter.ddp_model).__name__,
                "ema": {k: np.array(v.numpy(), copy=True) for k, v in staging.ema.state_dict()["shadow"].items()},
            }

    def wrong_order():
        with paddle.utils.unique_name.guard():
            net = cnn()
            model = paddle.Model(net)  # wraps the network in DataParallel at once
            model.prepare(Finetuning(STAGES).optimizer(net, "sgd", lr=0.1), paddle.nn.CrossEntropyLoss())

    save_dir = os.path.join(root, "ckpt")
    out = {"run": fit(4, save_dir=save_dir)}
    out["resumed"] = fit(1, load=os.path.join(save_dir, "2"))  # epochs 0-2 done, boundary at 2 included
    out["wrong_order"] = _error(wrong_order)
    return out


def paddlenlp_dp(rank: int, root: str) -> dict:
    """PaddleNLP's Trainer on 2 processes (it wraps the model in DataParallel in train() and holds it): a stage
    unfreezes encoder layer 0 at epoch 1 (xfreeze keeps the DataParallel and averages its gradients by hooks)."""
    os.environ["PADDLE_RANK_IN_NODE"] = str(rank)  # as python -m paddle.distributed.launch sets it
    import paddle
    from paddlenlp.trainer import Trainer, TrainingArguments
    from test_integrations_paddlenlp import LR, STAGES, dataset, ernie
    from xfreeze.integrations.paddlenlp import Finetuning

    class RankOrder(Trainer):  # a different, fixed half of the data on each rank
        def _get_train_sampler(self):
            return paddle.io.DistributedBatchSampler(
                self.train_dataset, batch_size=self.args.per_device_train_batch_size, shuffle=False
            )

    with paddle.utils.unique_name.guard():
        model, staging = ernie(), Finetuning(STAGES)
        start = _paddle_state(model)
        args = TrainingArguments(
            output_dir=os.path.join(root, "run"),
            num_train_epochs=3,
            per_device_train_batch_size=4,
            save_strategy="no",
            logging_steps=1000,
            seed=0,
            disable_tqdm=True,
            device="cpu",
            report_to=[],
        )
        trainer = RankOrder(
            model=model,
            args=args,
            train_dataset=dataset(),
            callbacks=[staging],
            optimizers=staging.optimizers(model, "adamw", lr=LR, weight_decay=2**-8),
        )
        error = _error(trainer.train)
        return {
            "start": start,
            "end": _paddle_state(model),
            "error": error,
            "wrapper": type(trainer.model_wrapped).__name__,
        }


def paddle_cnn(seed: int = 0):
    import paddle
    from paddle import nn

    paddle.seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Conv2D(3, 4, 3, padding=1), nn.BatchNorm2D(4), nn.ReLU()),
        nn.Sequential(nn.Conv2D(4, 6, 3, padding=1), nn.BatchNorm2D(6), nn.ReLU()),
        nn.AdaptiveAvgPool2D(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def _paddle_state(model) -> dict:
    return {k: np.array(v.numpy(), copy=True) for k, v in model.state_dict().items()}


def _paddle_steps(wrapped_fn, opt, rank: int, steps, staged=None):
    import paddle

    for step in steps:
        if staged is not None:
            staged.step(step)
        rng = np.random.default_rng(1000 * rank + step)
        x = paddle.to_tensor(rng.standard_normal((4, 3, 6, 6)).astype("float32"))
        y = paddle.to_tensor(rng.integers(0, 3, (4,)))
        loss = paddle.nn.functional.cross_entropy(wrapped_fn()(x), y)
        loss.backward()
        opt.step()
        opt.clear_grad()


def paddle_staged_rewrap(rank: int) -> dict:
    import paddle
    import xfreeze

    model = paddle_cnn()
    xfreeze.freeze(model, "0", "1")
    dp = paddle.DataParallel(model)
    opt = xfreeze.optimizer(model, "sgd", lr=0.1, momentum=0.9)
    staged = xfreeze.StagedUnfreeze(
        dp,
        opt,
        [xfreeze.Stage(0, freeze=["0", "1"]), xfreeze.Stage(2, unfreeze=["1"], lr=0.05)],
        unit="step",
        rewrap=lambda m: paddle.DataParallel(m),
    )
    start = _paddle_state(model)
    _paddle_steps(lambda: staged.wrapped, opt, rank, range(0, 5), staged)
    return {"start": start, "end": _paddle_state(model), "groups": len(opt._param_groups)}


def paddle_refusals(rank: int) -> dict:
    import paddle
    import xfreeze
    from xfreeze.model.guard import check_freeze_agreement

    model = paddle_cnn()
    xfreeze.freeze(model, "0")
    dp = paddle.DataParallel(model)
    before = _paddle_state(model)
    opt = xfreeze.optimizer(model, "sgd", lr=0.1)
    out = {
        "staged": _error(lambda: xfreeze.StagedUnfreeze(dp, opt, [xfreeze.Stage(1, unfreeze=["0"])])),
        "staged_freeze": _error(
            lambda: xfreeze.StagedUnfreeze(
                dp, opt, [xfreeze.Stage(1, freeze=["1"])], rewrap=lambda m: paddle.DataParallel(m)
            )
        ),
        "unfreeze": _error(lambda: xfreeze.unfreeze(dp, "0")),
        "freeze": _error(lambda: xfreeze.freeze(model, "1")),
        "agree": _error(lambda: check_freeze_agreement(dp)),
    }
    out["bits_unchanged"] = all((before[k] == v).all() for k, v in _paddle_state(model).items())
    out["trainable"] = [not p.stop_gradient for p in model.parameters()]
    other = paddle_cnn()
    xfreeze.freeze(other, "0" if rank == 0 else "1")
    out["disagree"] = _error(lambda: check_freeze_agreement(other))
    return out


def torch_fsdp1(rank: int, path: str) -> dict:
    """FSDP1 (use_orig_params=True) on CPU: patterns see plain names, freeze before wrapping, summary, rank-0 save,
    load_matched into the sharded model."""
    import torch
    import xfreeze
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = torch_cnn()
    xfreeze.freeze(model, "0")
    fsdp = FSDP(model, use_orig_params=True, device_id=torch.device("cpu"))
    out = {
        "select": _safe(lambda: xfreeze.select(fsdp, "1.0.*")),
        "summary": _safe(lambda: xfreeze.summary(fsdp, print_table=False).counts.trainable),
    }
    from xfreeze.backends.torch.adapter import ADAPTER

    out["sizes"] = ADAPTER.sharded_sizes(fsdp)
    opt = torch.optim.SGD([p for p in fsdp.parameters() if p.requires_grad], lr=0.1)
    _torch_steps(lambda: fsdp, opt, rank, range(2))
    out["save"] = _safe(lambda: str(xfreeze.save_checkpoint(fsdp, path, rank=0)))
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    def full():
        state = get_model_state_dict(fsdp, options=StateDictOptions(full_state_dict=True))
        return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}

    out["full"] = full()
    out["unfreeze"] = _safe(lambda: xfreeze.unfreeze(fsdp, "0").changed)  # after wrapping: a stage change
    opt.add_param_group(
        {
            "params": [
                p
                for p in fsdp.parameters()
                if p.requires_grad
                and p not in opt.state
                and all(p is not q for g in opt.param_groups for q in g["params"])
            ]
        }
    )
    _torch_steps(lambda: fsdp, opt, rank, range(2, 4))
    out["after_unfreeze"] = full()
    out["freeze"] = _safe(lambda: xfreeze.freeze(fsdp, "1").changed)
    _torch_steps(lambda: fsdp, opt, rank, range(4, 6))
    out["after_freeze"] = full()
    source = {k: torch.full_like(v, 0.5) for k, v in torch_cnn().state_dict().items()}
    out["load"] = _safe(lambda: sorted(xfreeze.load_matched(fsdp, source).loaded)[:3])
    out["after_load"] = full()
    return out


def _safe(fn):
    try:
        return fn()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:400]


def torch_gpu(rank: int) -> dict:
    """One GPU, NCCL, world size 1: DDP with a rewrap boundary, then FSDP2 with a stage after sharding."""
    import torch
    import xfreeze
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    for kind in ("ddp", "fsdp2"):
        model = torch_cnn().cuda()
        xfreeze.freeze(model, "0", "1")
        start = model[1][0].weight.detach().clone()
        if kind == "fsdp2":
            fully_shard(model)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        live = DDP(model) if kind == "ddp" else model
        staged = xfreeze.StagedUnfreeze(
            live,
            opt,
            [xfreeze.Stage(1, unfreeze=["1"])],
            unit="step",
            rewrap=(lambda m: DDP(m)) if kind == "ddp" else None,
        )
        for step in range(3):
            staged.step(step)
            x = torch.randn(4, 3, 6, 6, device="cuda")
            loss = staged.wrapped(x).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        weight = model[1][0].weight
        weight = weight.full_tensor() if hasattr(weight, "full_tensor") else weight
        out[kind] = not torch.equal(start, weight.detach())
    return out

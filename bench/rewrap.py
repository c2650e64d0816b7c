"""What rebuilding DDP at a stage boundary costs, against keeping ``find_unused_parameters=True`` on every step, and
what keeping a DDP that a training loop holds (Hugging Face Trainer) with per-parameter averaging hooks costs.

ResNet-50 (random weights), 2 ranks on CPU over gloo, batch 2 per rank at 96x96, SGD. The backbone is frozen except
layer4 + fc; at the boundary layer3 is unfrozen. Two ways to live through the boundary:

  rewrap       StagedUnfreeze(..., rewrap=lambda m: DDP(m)): one DDP rebuild at the boundary, plain DDP steps;
  find_unused  DDP(find_unused_parameters=True) around the model (which does NOT keep ranks identical after an
               unfreeze, issue 10; timed only for its per-step cost): a graph traversal on every step;
  keep         the integrations' path when the loop holds its DDP: the DDP built at stage 0 stays, and every layer3
               parameter gets a hook that all-reduces its gradient alone (no bucketing): per-step cost.

Prints, side by side: the rebuild (one-off, ms), a plain DDP step and a find_unused step (median ms), their ratio,
and after how many steps the rebuild has paid for itself. Timings, not a test: a couple of steps on a shared machine.
Run: .venv/bin/python bench/rewrap.py [--steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _steps(ddp, opt, n: int, rank: int) -> list:
    import torch

    times = []
    for i in range(n):
        g = torch.Generator().manual_seed(100 * rank + i)
        x, y = torch.randn(2, 3, 96, 96, generator=g), torch.randint(0, 1000, (2,), generator=g)
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return times


def _worker(rank: int, world: int, port: int, steps: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    import torchvision
    from torch.nn.parallel import DistributedDataParallel as DDP

    import xfreeze

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    result = {}
    for way in ("rewrap", "find_unused", "keep"):
        torch.manual_seed(0)
        model = torchvision.models.resnet50()
        stages = [xfreeze.Stage(0, freeze=["*", "!layer4", "!fc"]), xfreeze.Stage(1, unfreeze=["layer3"], lr=0.001)]
        if way == "keep":
            from xfreeze.integrations._staging import Staging

            staging = Staging(stages, unit="step", backend="torch")
            staging.prepare(model)  # stage 0 before the loop wraps the model
            ddp = DDP(model)
            opt = xfreeze.optimizer(model, "sgd", lr=0.01, momentum=0.9)
            staging.attach(opt)
            staging.step(1)  # adopts the DDP, unfreezes layer3 with averaging hooks
            _steps(ddp, opt, 1, rank)  # warm-up
            result[way] = statistics.median(_steps(ddp, opt, steps, rank))
            continue
        keep = ("!layer4", "!fc") if way == "rewrap" else ("!layer3", "!layer4", "!fc")  # same work after it
        xfreeze.freeze(model, "*", *keep)
        opt = xfreeze.optimizer(model, "sgd", lr=0.01, momentum=0.9)
        ddp = DDP(model, find_unused_parameters=way == "find_unused")
        if way == "rewrap":
            staged = xfreeze.StagedUnfreeze(
                ddp, opt, [xfreeze.Stage(1, unfreeze=["layer3"], lr=0.001)], rewrap=lambda m: DDP(m)
            )
            dist.barrier()
            start = time.perf_counter()
            staged.step(1)  # the boundary: unfreeze, rebuild DDP, grow the optimizer, mask agreement check
            result["rebuild"] = time.perf_counter() - start
            ddp = staged.wrapped
        _steps(ddp, opt, 1, rank)  # warm-up
        result[way] = statistics.median(_steps(ddp, opt, steps, rank))
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    import torch.multiprocessing as mp

    out = os.path.join(tempfile.mkdtemp(), "rewrap.json")
    mp.start_processes(_worker, args=(2, _port(), args.steps, out), nprocs=2, start_method="spawn", join=True)
    with open(out) as f:
        r = json.load(f)
    rows = [
        ("DDP rebuild at the boundary (once)", r["rebuild"]),
        ("DDP step after the rebuild", r["rewrap"]),
        ("DDP(find_unused_parameters=True) step", r["find_unused"]),
        ("kept DDP + averaging hooks step", r["keep"]),
    ]
    print("ResNet-50, 2 ranks, CPU, gloo, batch 2x96x96 per rank (layer3, layer4, fc training)")
    for name, seconds in rows:
        print(f"  {name:<40} {seconds * 1000:9.1f} ms")
    overhead = r["find_unused"] - r["rewrap"]
    print(f"  ratio rebuild / plain step            {r['rebuild'] / r['rewrap']:9.2f}")
    print(f"  ratio find_unused step / plain step   {r['find_unused'] / r['rewrap']:9.3f}")
    print(f"  ratio kept+hooks step / plain step    {r['keep'] / r['rewrap']:9.3f}")
    if overhead > 0:
        print(f"  the rebuild pays for itself after     {r['rebuild'] / overhead:9.1f} steps")
    else:
        print("  find_unused costs no measurable time per step here (the rebuild is a one-off cost)")


if __name__ == "__main__":
    sys.exit(main())

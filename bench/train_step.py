"""One training step of a ResNet-18 (64x64 inputs, batch 32) with the backbone frozen, three ways side by side:

  all      everything trainable (the optimizer holds every parameter);
  hand     frozen the best way the seed articles show: requires_grad / stop_gradient plus an optimizer over the
           trainable parameters only;
  xfreeze  xfreeze.freeze(model, "*", "!fc") + xfreeze.optimizer(model, "sgd", ...).

Prints step-time ratios (median of interleaved rounds in one process per framework), peak-RSS ratios (each way in
its own subprocess, so peaks are not shared), and the exact bytes held for gradients and optimizer state next to
the trainable parameters' own bytes (the minimum for SGD with momentum: one gradient and one velocity each).
Targets (issue 4): xfreeze / hand <= 1.02 in time; gradient and optimizer-state bytes == trainable bytes.
Note the ways differ in one behaviour on purpose: "hand" leaves the frozen BatchNorm layers in train mode (their
statistics drift, and they normalize with batch statistics); xfreeze locks them (eval-mode forward).
torch is also timed with the model and inputs in bfloat16 (the bf16 columns).
Run: .venv/bin/python bench/train_step.py [--rounds N] [--framework torch|paddle|both]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

WAYS = ("all", "hand", "xfreeze")
BATCH, SIZE, LR, MOMENTUM = 32, 64, 0.01, 0.9


def setup(framework: str, way: str, dtype: str = "float32"):
    """Model, optimizer and a step function for one way (torch also in bfloat16)."""
    import xfreeze

    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 3, SIZE, SIZE)).astype("float32")
    y = rng.integers(0, 10, BATCH)
    if framework == "torch":
        import torch
        import torchvision

        torch.manual_seed(0)
        torch.set_num_threads(2)
        model = torchvision.models.resnet18(num_classes=10).to(getattr(torch, dtype))
        if way == "hand":
            for name, p in model.named_parameters():
                p.requires_grad = name.startswith("fc.")
            opt = torch.optim.SGD(filter(lambda p: p.requires_grad, model.parameters()), lr=LR, momentum=MOMENTUM)
        elif way == "xfreeze":
            xfreeze.freeze(model, "*", "!fc")
            opt = xfreeze.optimizer(model, "sgd", lr=LR, momentum=MOMENTUM)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        xt, yt = torch.from_numpy(x).to(getattr(torch, dtype)), torch.from_numpy(y)

        def step():
            torch.nn.functional.cross_entropy(model(xt), yt).backward()
            opt.step()
            opt.zero_grad(set_to_none=False)

        def held():
            grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
            state = sum(
                t.numel() * t.element_size()
                for s in opt.state.values()
                for t in s.values()
                if torch.is_tensor(t) and t.dim() > 0
            )
            return grads, state
    else:
        import paddle

        paddle.seed(0)
        model = paddle.vision.models.resnet18(num_classes=10)
        if way == "hand":
            for name, p in model.named_parameters():
                p.stop_gradient = not name.startswith("fc.")
            opt = paddle.optimizer.Momentum(
                learning_rate=LR, momentum=MOMENTUM, parameters=[p for p in model.parameters() if not p.stop_gradient]
            )
        elif way == "xfreeze":
            xfreeze.freeze(model, "*", "!fc")
            opt = xfreeze.optimizer(model, "sgd", lr=LR, momentum=MOMENTUM)
        else:
            opt = paddle.optimizer.Momentum(learning_rate=LR, momentum=MOMENTUM, parameters=model.parameters())
        xt, yt = paddle.to_tensor(x), paddle.to_tensor(y)

        def step():
            paddle.nn.functional.cross_entropy(model(xt), yt).backward()
            opt.step()
            opt.clear_grad()

        def held():
            grads = sum(int(np.prod(p.shape)) * p.element_size() for p in model.parameters() if p.grad is not None)
            state = sum(
                int(np.prod(t.shape)) * t.element_size()
                for k, t in opt.state_dict().items()
                if k != "LR_Scheduler" and hasattr(t, "shape") and int(np.prod(t.shape)) > 1
            )
            return grads, state

    model.train()
    trainable = sum(int(np.prod(p.shape)) * 4 for n, p in model.named_parameters() if n.startswith("fc."))
    return step, held, trainable


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def measure_memory(framework: str, way: str) -> dict:
    """In a fresh process: extra peak RSS of 3 steps over the RSS after building the model, and bytes held."""
    step, held, trainable = setup(framework, way)
    base = rss_kib()
    for _ in range(3):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grads, state = held()
    return {"extra_kib": max(peak - base, 1), "grads": grads, "state": state, "trainable": trainable}


def measure_time(framework: str, rounds: int, steps: int, dtype: str = "float32") -> dict:
    setups = {way: setup(framework, way, dtype)[0] for way in WAYS}
    for step in setups.values():
        step()  # warm-up
    times = {way: [] for way in WAYS}
    for _ in range(rounds):  # interleaved, so drift in machine load hits every way alike
        for way, step in setups.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[way].append((time.perf_counter() - start) / steps)
    return {way: statistics.median(t) for way, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=["torch", "paddle", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(measure_memory(*args.memory_child)))
        return
    from rich.console import Console
    from rich.table import Table

    frameworks = ["torch", "paddle"] if args.framework == "both" else [args.framework]
    table = Table(
        title=f"ResNet-18, {SIZE}x{SIZE}, batch {BATCH}, backbone frozen, SGD momentum (median of "
        f"{args.rounds} interleaved rounds x {args.steps} steps)"
    )
    for column in (
        "framework",
        "way",
        "step ms",
        "time / hand",
        "peak extra MiB",
        "memory / hand",
        "grad bytes",
        "opt-state bytes",
        "trainable bytes",
        "bf16 step ms",
        "bf16 time / hand",
    ):
        table.add_column(column, justify="left" if column in ("framework", "way") else "right")
    for framework in frameworks:
        mem = {}
        for way in WAYS:
            out = (
                subprocess.run(
                    [sys.executable, __file__, "--memory-child", framework, way],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            mem[way] = json.loads(out)
        times = measure_time(framework, args.rounds, args.steps)
        half = measure_time(framework, args.rounds, args.steps, "bfloat16") if framework == "torch" else None
        for way in WAYS:
            m = mem[way]
            table.add_row(
                framework,
                way,
                f"{times[way] * 1e3:.1f}",
                f"{times[way] / times['hand']:.3f}",
                f"{m['extra_kib'] / 1024:.1f}",
                f"{m['extra_kib'] / mem['hand']['extra_kib']:.3f}",
                f"{m['grads']:,}",
                f"{m['state']:,}",
                f"{m['trainable']:,}",
                f"{half[way] * 1e3:.1f}" if half else "-",
                f"{half[way] / half['hand']:.3f}" if half else "-",
            )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()

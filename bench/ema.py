"""EMA.update() on ResNet-50 against a torch._foreach_lerp_ reference and timm's ModelEmaV3 (when installed).

Two settings: everything trainable, and a frozen backbone (only ``fc`` trains). The reference lerps every
parameter and copies the buffers, as ModelEmaV3 does; xfreeze lerps what trains and copies the rest (frozen
parameters and norm statistics), so it should cost at most as much (target <= 1.0x). Interleaved rounds, median;
CPU by default, ``--device cuda`` on a GPU machine.

    .venv/bin/python bench/ema.py [--device cuda] [--rounds 7] [--updates 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

import xfreeze


class ForeachReference:
    """What a hand-written fused EMA does: lerp every parameter, copy every buffer."""

    def __init__(self, model, decay):
        self.model, self.decay = model, decay
        self.params = [p.detach().clone() for p in model.parameters()]
        self.buffers = [b.detach().clone() for b in model.buffers()]

    @torch.no_grad()
    def update(self):
        torch._foreach_lerp_(self.params, [p.detach() for p in self.model.parameters()], 1.0 - self.decay)
        torch._foreach_copy_(self.buffers, [b for b in self.model.buffers()])


def timm_ema(model, decay):
    try:
        from timm.utils import ModelEmaV3
    except ImportError:
        return None
    ema = ModelEmaV3(model, decay=decay)
    return type("TimmEma", (), {"update": lambda self: ema.update(model)})()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(ema, updates, device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(updates):
        ema.update()
    sync(device)
    return (time.perf_counter() - start) / updates


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--updates", type=int, default=20)
    args = parser.parse_args()
    print(f"device: {args.device}, torch {torch.__version__}; ms per update, median of {args.rounds} rounds")
    for setting in ("all trainable", "frozen backbone"):
        model = torchvision.models.resnet50().to(args.device)
        if setting == "frozen backbone":
            xfreeze.freeze(model, "*", "!fc")
        emas = {"foreach reference": ForeachReference(model, 0.999), "xfreeze.EMA": xfreeze.EMA(model, 0.999)}
        timm = timm_ema(model, 0.999)
        if timm is not None:
            emas["timm ModelEmaV3"] = timm
        times = {name: [] for name in emas}
        for _ in range(args.rounds):
            for name, ema in emas.items():
                times[name].append(timed(ema, args.updates, args.device))
        base = statistics.median(times["foreach reference"])
        print(f"\n{setting}:")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:>18}: {median * 1e3:8.3f} ms   {median / base:5.2f}x the foreach reference")


if __name__ == "__main__":
    main()

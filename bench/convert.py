"""Conversion torch <-> Paddle: the path users hit (no ``arch=``), side by side with plain copies.

1. A ResNet-50 state dict (torch tensors) torch -> Paddle -> torch with ``xfreeze.convert`` and no ``arch=``, as a
   ratio to a plain clone of every tensor into the other framework and back (``_tensors.to_backend`` both ways);
   the round trip must be bitwise identical.
2. ``xfreeze.load_matched`` of a torchvision ResNet-18/50/152 state dict into the paddle.vision twin, **without**
   ``arch=`` (the map is chosen once per call from the target's names), and with ``arch="resnet"`` for comparison.
   Target: resnet152 < 1 s.

    .venv/bin/python bench/convert.py [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import paddle
import torch
import torchvision

import xfreeze
from xfreeze.core import tensors as _tensors


def median_time(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_round_trip(state):
    there = {k: _tensors.to_backend(v, "paddle") for k, v in state.items()}
    return {k: _tensors.to_backend(v, "torch") for k, v in there.items()}


def round_trip(state):
    return xfreeze.convert(xfreeze.convert(state, to="paddle"), to="torch")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    state = {k: v.detach().clone() for k, v in torchvision.models.resnet50().state_dict().items()}
    back = round_trip(state)
    bitwise = all(torch.equal(state[k], back[k]) for k in back)
    plain = median_time(lambda: plain_round_trip(state), args.rounds)
    ours = median_time(lambda: round_trip(state), args.rounds)
    print(
        f"ResNet-50 torch->paddle->torch, median of {args.rounds}: plain clone {plain * 1e3:.1f} ms, "
        f"xfreeze.convert (no arch=) {ours * 1e3:.1f} ms, ratio {ours / plain:.2f}; bitwise identical: {bitwise}"
    )
    print("\nload_matched of a torchvision state dict into paddle.vision (seconds, median):")
    for arch in ("resnet18", "resnet50", "resnet152"):
        source = {k: v.detach().clone() for k, v in getattr(torchvision.models, arch)().state_dict().items()}
        target = getattr(paddle.vision.models, arch)()
        auto = median_time(lambda: xfreeze.load_matched(target, source), max(1, args.rounds // 2))
        fixed = median_time(
            lambda: xfreeze.load_matched(target, xfreeze.convert(source, to="paddle", arch="resnet", model=target)), 1
        )
        print(f"  {arch:>9}: without arch= {auto:6.3f} s   (convert with arch= then load: {fixed:6.3f} s)")


if __name__ == "__main__":
    main()

"""Converting a ResNet-50 checkpoint torch -> Paddle -> torch, side by side with a plain copy of the same arrays.

Prints the time of xfreeze.convert (both directions) as a ratio to a plain copy of every array, and its peak extra
memory (tracemalloc, which sees numpy's allocations) as a ratio to the checkpoint size. Targets (issue 3): time
<= 3x the plain copy, extra memory <= 1x the checkpoint. Arrays that need no change are shared, not copied; only
Linear weights are transposed into new arrays.
Run: .venv/bin/python bench/convert.py [--rounds N]
"""
from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import numpy as np

import xfreeze


def checkpoint() -> dict:
    import torchvision
    model = torchvision.models.resnet50()
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def plain_copy(state):
    return {k: v.copy() for k, v in state.items()}


def round_trip(state):
    return xfreeze.convert(xfreeze.convert(state, to="paddle", arch="resnet"), to="torch", arch="resnet")


def measure(fn, state, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(state)
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    result = fn(state)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del result
    return statistics.median(times), peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    state = checkpoint()
    size = sum(a.nbytes for a in state.values())
    back = round_trip(state)
    bitwise = all(np.array_equal(state[k], back[k]) for k in state if not k.endswith("num_batches_tracked"))
    copy_time, copy_peak = measure(plain_copy, state, args.rounds)
    conv_time, conv_peak = measure(round_trip, state, args.rounds)
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"ResNet-50 checkpoint ({size / 2**20:.1f} MiB, {len(state)} arrays), median of {args.rounds}")
    for column in ("operation", "time ms", "time / plain copy", "peak extra MiB", "extra / checkpoint"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    table.add_row("plain copy of every array", f"{copy_time * 1e3:.1f}", "1.000", f"{copy_peak / 2**20:.1f}",
                  f"{copy_peak / size:.3f}")
    table.add_row("convert torch->paddle->torch", f"{conv_time * 1e3:.1f}", f"{conv_time / copy_time:.3f}",
                  f"{conv_peak / 2**20:.1f}", f"{conv_peak / size:.3f}")
    Console(width=140).print(table)
    print(f"round trip bitwise identical: {bitwise}")


if __name__ == "__main__":
    main()

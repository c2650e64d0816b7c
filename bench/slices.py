"""Cost follows the trainable rows (issue 21): gradient and Adam-state bytes of a 32k x 4096 embedding whose 64 new
rows train, against the same embedding trained whole, in torch and Paddle, measured side by side.

Counted: the bytes of every gradient the parameters hold after ``backward`` and of every tensor the optimizer keeps
(torch ``optimizer.state``; Paddle's accumulators) after one AdamW step. Not counted (and printed as a note): the
forward's joined weight and the embedding's dense backward buffer, both transient (freed after the step).

    .venv/bin/python bench/slices.py [--vocab 32000] [--dim 4096] [--new 64]
"""

from __future__ import annotations

import argparse
import gc

import numpy as np

import xfreeze


def torch_bytes(vocab: int, dim: int, new: int, split: bool) -> tuple[int, int]:
    import torch

    model = torch.nn.Sequential(torch.nn.Embedding(vocab, dim))
    if split:
        xfreeze.freeze(model, "*", f"!0.weight[{vocab - new}:]")
    opt = xfreeze.optimizer(model, "adamw", lr=1e-3, weight_decay=0.01)
    model(torch.tensor([1, vocab - 1])).square().mean().backward()
    grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
    opt.step()
    state = sum(v.nbytes for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
    return grads, state


def paddle_bytes(vocab: int, dim: int, new: int, split: bool) -> tuple[int, int]:
    import paddle

    model = paddle.nn.Sequential(paddle.nn.Embedding(vocab, dim))
    if split:
        xfreeze.freeze(model, "*", f"!0.weight[{vocab - new}:]")
    opt = xfreeze.optimizer(model, "adamw", lr=1e-3, weight_decay=0.01)
    model(paddle.to_tensor([1, vocab - 1])).square().mean().backward()
    grads = sum(_nbytes(p.grad) for p in model.parameters() if p.grad is not None)
    opt.step()
    state = sum(
        _nbytes(t) for per_param in opt._accumulators.values() for t in per_param.values() if int(np.prod(t.shape)) > 1
    )
    return grads, state


def _nbytes(tensor) -> int:
    return int(np.prod(tensor.shape)) * tensor.element_size()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--new", type=int, default=64)
    args = parser.parse_args()
    print(f"embedding {args.vocab} x {args.dim} float32, {args.new} new rows trained, AdamW")
    print(f"{'framework':10} {'whole: grad':>14} {'state':>14} {'rows: grad':>14} {'state':>14} {'ratio':>10}")
    for name, measure in (("torch", torch_bytes), ("paddle", paddle_bytes)):
        whole = measure(args.vocab, args.dim, args.new, split=False)
        gc.collect()
        rows = measure(args.vocab, args.dim, args.new, split=True)
        gc.collect()
        ratio = sum(whole) / max(sum(rows), 1)
        sizes = "".join(f"{_mib(n):>15}" for n in (*whole, *rows))
        print(f"{name:10}{sizes} {ratio:>9.0f}x")
    print(f"expected ratio: {args.vocab // args.new}x (the rows are 1/{args.vocab // args.new} of the tensor)")
    print(
        "note: forward builds the joined weight (one tensor of the embedding's size) and the embedding's backward a "
        "dense gradient of that size before the rows' slice is taken; both are freed after the step"
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


if __name__ == "__main__":
    main()

"""Delta checkpoints vs full checkpoints: ResNet-50 with a frozen backbone (only ``fc`` trains).

Prints, side by side, file size and save time of a full checkpoint (``xfreeze.save_checkpoint`` as safetensors, and
the framework's own save) against ``xfreeze.save_delta`` (trainable tensors + live statistics + fingerprint), and the
time of ``load_delta`` / ``verify_frozen`` (both hash every frozen tensor). No assertion: figures only.

    .venv/bin/python bench/delta.py [--backend torch|paddle] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import xfreeze


def build(backend: str):
    if backend == "torch":
        import torch
        import torchvision

        model = torchvision.models.resnet50()
        return model, lambda m, p: torch.save(m.state_dict(), p), ".pt"
    import paddle

    model = paddle.vision.models.resnet50()
    return model, lambda m, p: paddle.save(m.state_dict(), p), ".pdparams"


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["torch", "paddle"], default="torch")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    model, native_save, suffix = build(args.backend)
    xfreeze.freeze(model, "*", "!fc")
    folder = tempfile.mkdtemp()
    full, native, delta = (
        os.path.join(folder, n) for n in ("full.safetensors", "native" + suffix, "delta.safetensors")
    )
    rows = [
        (
            "full checkpoint (xfreeze safetensors)",
            timed(lambda: xfreeze.save_checkpoint(model, full), args.repeat),
            full,
        ),
        (f"full checkpoint ({args.backend} own save)", timed(lambda: native_save(model, native), args.repeat), native),
        ("delta (xfreeze.save_delta)", timed(lambda: xfreeze.save_delta(model, delta), args.repeat), delta),
    ]
    fc_bytes = sum(
        p.numel() * p.element_size() if hasattr(p, "element_size") else 0 for p in [model.fc.weight, model.fc.bias]
    )
    print(f"ResNet-50 ({args.backend}), backbone frozen, fc trains; head bytes: {fc_bytes:,}; median of {args.repeat}")
    print(f"{'what':42} {'bytes':>14} {'save s':>9} {'size vs full':>13} {'time vs full':>13}")
    base_size, base_time = os.path.getsize(full), rows[0][1]
    for name, seconds, path in rows:
        size = os.path.getsize(path)
        print(f"{name:42} {size:>14,} {seconds:>9.3f} {size / base_size:>12.4f}x {seconds / base_time:>12.3f}x")
    load = timed(lambda: xfreeze.load_delta(model, delta), args.repeat)
    verify = timed(lambda: xfreeze.verify_frozen(model, delta), args.repeat)
    print(f"load_delta {load:.3f} s; verify_frozen {verify:.3f} s (each hashes every frozen tensor)")


if __name__ == "__main__":
    main()

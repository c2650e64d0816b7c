"""A linear probe, live vs on a FeatureCache (issue 20): ResNet-18 from config, sklearn digits upscaled to 64x64,
frozen backbone (xfreeze.freeze(model, "*", "!fc"): norms locked) + a new 10-class fc, SGD with momentum.

  live     every epoch runs the frozen backbone again: out = model(x);
  cached   out = cache(x, indices): the first epoch fills the cache (runs the backbone once per sample, without
           autograd), later epochs read the stored features (inputs=None: a loader of indices and labels) and run
           only fc.

Both runs see the same batches in the same (shuffled) order, the same dtype (float32) and the same initial weights,
so the final fc weights are compared bit for bit. Then a ProbeSweep of 5 heads (5 learning-rate / decay settings)
against a ProbeSweep of 1 head, over the same filled cache, end to end (fill included) and training only.
Prints ratios measured side by side in one process per framework. Goals: >= 10x per epoch after the first, >= 4x end
to end over 10 epochs, equal fc weights, a 5-head sweep < 2x one head.
Run: .venv/bin/python bench/linear_probe.py [--framework torch|paddle|both] [--epochs 10] [--samples 1797]
     [--threads N]   (a quick look: --epochs 3 --samples 256)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

BATCH, LR, MOMENTUM = 32, 0.01, 0.9
SWEEP = [
    {"lr": 0.01},
    {"lr": 0.03, "weight_decay": 1e-4},
    {"lr": 0.003},
    {"lr": 0.1, "weight_decay": 1e-3},
    {"lr": 0.3},
]


def digits(samples: int):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.repeat(np.repeat(data.images[:samples] / 16.0, 8, axis=1), 8, axis=2)  # 8x8 -> 64x64 (nearest)
    x = np.repeat(x[:, None], 3, axis=1).astype("float32")  # 3 channels
    return x, data.target[:samples].astype("int64")


class Torch:
    name = "torch"

    def __init__(self):
        import torch
        import torchvision

        torch.manual_seed(0)
        self.t, self.base = torch, torchvision.models.resnet18(weights=None, num_classes=10)
        self.loss = torch.nn.functional.cross_entropy

    def copy(self):
        import copy

        return copy.deepcopy(self.base)

    def tensor(self, array):
        return self.t.from_numpy(np.ascontiguousarray(array))

    def step(self, opt, loss):
        loss.backward()
        opt.step()
        opt.zero_grad()

    def fc(self, model):
        return {k: v.detach().numpy().copy() for k, v in model.fc.state_dict().items()}


class Paddle:
    name = "paddle"

    def __init__(self):
        import paddle

        paddle.seed(0)
        self.p, self.base = paddle, paddle.vision.models.resnet18(pretrained=False, num_classes=10)
        self.loss = paddle.nn.functional.cross_entropy

    def copy(self):
        import copy

        return copy.deepcopy(self.base)

    def tensor(self, array):
        return self.p.to_tensor(np.ascontiguousarray(array))

    def step(self, opt, loss):
        loss.backward()
        opt.step()
        opt.clear_grad()

    def fc(self, model):
        return {k: v.numpy().copy() for k, v in model.fc.state_dict().items()}


def probe(fw, x, y, orders, forward_of):
    """Train fc for len(orders) epochs; returns (seconds per epoch, final fc weights, the model)."""
    import xfreeze

    model = fw.copy()
    xfreeze.freeze(model, "*", "!fc")
    model.train()
    opt = xfreeze.optimizer(model, "sgd", lr=LR, momentum=MOMENTUM)
    forward = forward_of(model)
    times = []
    for epoch, order in enumerate(orders):
        start = time.perf_counter()
        for s in range(0, len(order), BATCH):
            idx = order[s : s + BATCH]
            fw.step(opt, fw.loss(forward(epoch, x, idx), fw.tensor(y[idx])))
        times.append(time.perf_counter() - start)
    return times, fw.fc(model), model


def live(fw):
    return lambda model: lambda epoch, x, idx: model(fw.tensor(x[idx]))


def cached(fw, caches):
    import xfreeze

    def forward_of(model):
        cache = xfreeze.FeatureCache(model, "fc", size=len(caches["x"]), progress=False)
        caches["cache"] = cache
        return lambda epoch, x, idx: cache(fw.tensor(x[idx]) if epoch == 0 else None, idx)

    return forward_of


def sweep_time(fw, x, y, orders, configs) -> tuple[float, float]:
    """(fill seconds, training seconds) of a ProbeSweep over a fresh cache."""
    import xfreeze

    model = fw.copy()
    xfreeze.freeze(model, "*", "!fc")
    model.train()
    cache = xfreeze.FeatureCache(model, "fc", size=len(x), progress=False)
    start = time.perf_counter()
    cache.fill(((fw.tensor(x[s : s + BATCH]), np.arange(s, min(s + BATCH, len(x)))) for s in range(0, len(x), BATCH)))
    filled = time.perf_counter()
    sweep = xfreeze.ProbeSweep(cache, configs, optimizer="sgd", momentum=MOMENTUM)
    for order in orders:
        for s in range(0, len(order), BATCH):
            idx = order[s : s + BATCH]
            sweep.step(idx, fw.tensor(y[idx]), fw.loss)
    return filled - start, time.perf_counter() - filled


def run(fw, samples: int, epochs: int) -> None:
    x, y = digits(samples)
    orders = [np.random.default_rng(e).permutation(len(x)) for e in range(epochs)]
    live_times, live_fc, _ = probe(fw, x, y, orders, live(fw))
    caches = {"x": x}
    cached_times, cached_fc, _ = probe(fw, x, y, orders, cached(fw, caches))
    later = lambda t: statistics.median(t[1:]) if len(t) > 1 else t[0]  # noqa: E731
    per_epoch, end_to_end = later(live_times) / later(cached_times), sum(live_times) / sum(cached_times)
    print(f"\n== {fw.name}: ResNet-18, {len(x)} digits at 64x64, batch {BATCH}, {epochs} epochs ==")
    print(f"live   : first epoch {live_times[0]:.2f} s, later epochs {later(live_times):.3f} s (median)")
    print(f"cached : first epoch (fills) {cached_times[0]:.2f} s, later epochs {later(cached_times) * 1e3:.1f} ms")
    print(f"per epoch after the first: {per_epoch:.1f}x faster (goal >= 10x)")
    print(
        f"end to end incl. the fill: {end_to_end:.1f}x faster "
        f"({sum(live_times):.1f} s vs {sum(cached_times):.1f} s; goal >= 4x)"
    )
    same = all(np.array_equal(live_fc[k], cached_fc[k]) for k in live_fc)
    worst = max(float(np.abs(live_fc[k] - cached_fc[k]).max()) for k in live_fc)
    print(f"fc weights equal to the live run's: {'bit for bit' if same else f'NO, max abs difference {worst:.3g}'}")
    fill5, train5 = sweep_time(fw, x, y, orders, SWEEP)
    fill1, train1 = sweep_time(fw, x, y, orders, SWEEP[:1])
    print(
        f"5-head sweep vs 1 head: {(fill5 + train5) / (fill1 + train1):.2f}x end to end incl. the fill "
        f"(goal < 2x; 5 live runs would be ~5x), {train5 / train1:.2f}x training only "
        f"({train5:.2f} s vs {train1:.2f} s for {epochs} epochs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("torch", "paddle", "both"), default="both")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=1797, help="digits used (1797 = all)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # on a loaded machine small ops stall on OpenMP barriers
    for name in ("torch", "paddle") if args.framework == "both" else (args.framework,):
        run(Torch() if name == "torch" else Paddle(), args.samples, args.epochs)


if __name__ == "__main__":
    main()

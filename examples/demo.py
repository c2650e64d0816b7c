"""The xfreeze workflow on a real torchvision and paddle.vision ResNet-18, in both frameworks.

Freeze the backbone except its last stage, replace the head, look at what trains, then train a few steps the
way that bites users (optimizer over *all* parameters, momentum + weight decay, gradients zeroed not released,
``model.train()`` every step) and check that frozen weights and locked BatchNorm statistics did not move by a bit.

Run: ``make demo`` (or ``python examples/demo.py [--backend torch|paddle] [--steps N]``). No downloads: the models
are built from their configs with random weights; pass ``--pretrained`` to load ImageNet weights when online.
"""

from __future__ import annotations

import argparse

import numpy as np

import xfreeze


def build(backend: str, pretrained: bool):
    if backend == "torch":
        import torchvision

        return torchvision.models.resnet18(weights="IMAGENET1K_V1" if pretrained else None)
    import paddle

    return paddle.vision.models.resnet18(pretrained=pretrained)


def training_loop(backend: str, model, steps: int, seed: int = 0):
    """The loop users write by hand in each framework: SGD with momentum over every parameter."""
    rng = np.random.default_rng(seed)
    batches = [(rng.normal(size=(8, 3, 64, 64)).astype("float32"), rng.integers(0, 10, 8)) for _ in range(steps)]
    if backend == "torch":
        import torch

        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        for x, y in batches:
            model.train()
            torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
            opt.step()
            opt.zero_grad(set_to_none=False)
    else:
        import paddle

        opt = paddle.optimizer.Momentum(
            learning_rate=0.01, momentum=0.9, parameters=model.parameters(), weight_decay=1e-4
        )
        for x, y in batches:
            model.train()
            paddle.nn.functional.cross_entropy(model(paddle.to_tensor(x)), paddle.to_tensor(y)).backward()
            opt.step()
            opt.clear_grad()


def snapshot(model) -> dict:
    """Every parameter and BatchNorm statistic as numpy, under the framework's own names."""
    state = model.state_dict()
    return {
        k: np.array(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }


def demo(backend: str, steps: int, pretrained: bool) -> dict:
    print(f"\n=== {backend}: ResNet-18 ===")
    model = build(backend, pretrained)
    print(xfreeze.freeze(model, "*", "!layer4"))  # everything but the last stage
    head = xfreeze.replace_head(model, 10)  # new trainable classifier, 10 classes
    print(f"new head: {type(head).__module__}.{type(head).__name__} -> 10 classes")
    summary = xfreeze.summary(model, print_table=False)
    print("\n".join(str(summary).splitlines()[:12] + ["   ..."] + str(summary).splitlines()[-8:]))

    frozen = xfreeze.select(model, "*", "!layer4", "!fc")
    before = snapshot(model)
    training_loop(backend, model, steps)
    after = snapshot(model)
    stat_keys = [
        k
        for k in before
        if k.endswith(("running_mean", "running_var", "_mean", "_variance")) and not k.startswith("layer4")
    ]
    moved = [k for k in frozen + stat_keys if not np.array_equal(before[k], after[k])]
    trained = [k for k in before if k.startswith(("layer4", "fc")) and not np.array_equal(before[k], after[k])]
    print(
        f"after {steps} steps: {len(frozen)} frozen tensors and {len(stat_keys)} locked BatchNorm statistics, "
        f"{len(moved)} moved; {len(trained)} tensors of layer4/fc trained"
    )
    if moved:
        raise SystemExit(f"frozen tensors moved: {moved}")
    return {"names": xfreeze.select(model, "*"), "counts": summary.counts}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["torch", "paddle", "both"], default="both")
    parser.add_argument("--steps", type=int, default=3, help="training steps per framework (default 3)")
    parser.add_argument("--pretrained", action="store_true", help="load ImageNet weights (needs the network)")
    args = parser.parse_args(argv)
    backends = ["torch", "paddle"] if args.backend == "both" else [args.backend]
    results = {b: demo(b, args.steps, args.pretrained) for b in backends}
    if len(results) == 2:
        same = results["torch"] == results["paddle"]
        print(f"\ntorch and paddle: same parameter names and trainable/frozen counts: {same}")
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    main()

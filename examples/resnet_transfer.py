"""Transfer learning vs training from scratch on real handwritten digits, with a ResNet-18, in torch or Paddle.

The seed articles claim that transfer learning gives a higher start, a steeper slope and a higher end point than
training from scratch. This example measures it on data that ships offline (scikit-learn's bundled digits: 1,797
real 8x8 scans, upsampled to 32x32):

  1. "pretraining": a torchvision / paddle.vision ResNet-18 learns digits 0-4; the checkpoint is saved with xfreeze;
  2. fine-tuning on digits 5-9 with a handful of labels per class, four ways, through the xfreeze API
     (shape-matched loading, head replacement, freezing, optimizer groups, staged unfreezing):
       scratch        a fresh ResNet-18, everything trains;
       linear probe   pretrained backbone frozen (BatchNorm statistics locked), only the new head trains;
       staged         head first, then layer4, then everything, each stage with a smaller learning rate;
       full, 10x head everything trains from the pretrained weights, the new head at 10x the learning rate.
It prints accuracy per strategy per epoch, trainable parameters and time, and writes a PNG of the curves. The
ordering is whatever this run measured. ``--weights imagenet`` starts from the real ImageNet weights instead of the
digits pretraining (needs the network).

Run: python examples/resnet_transfer.py --backend torch|paddle [--epochs 8] [--shots 10] [--out results/]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xfreeze  # noqa: E402
from common import batches, runner  # noqa: E402

STRATEGIES = ("scratch", "linear probe", "staged", "full, 10x head")


def digits(size: int = 32):
    """scikit-learn's bundled digits as [N, 3, size, size] float32 in [0, 1], and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images.astype("float32") / 16.0
    images = np.kron(images, np.ones((size // 8, size // 8), dtype="float32"))  # nearest-neighbour upsampling
    return np.repeat(images[:, None], 3, axis=1), data.target.astype("int64")


def resnet18(backend: str, classes: int, imagenet: bool = False):
    if backend == "torch":
        import torchvision

        if imagenet:
            return torchvision.models.resnet18(weights="IMAGENET1K_V1")
        return torchvision.models.resnet18(num_classes=classes)
    import paddle

    return paddle.vision.models.resnet18(pretrained=imagenet, num_classes=1000 if imagenet else classes)


def pretrain(backend, run, x, y, args, rng) -> Path:
    """Train on the source task (digits 0-4) and save the checkpoint with xfreeze."""
    from tqdm import tqdm

    model = resnet18(backend, 5)
    opt = xfreeze.optimizer(model, "adam", lr=1e-3)
    for _ in tqdm(range(args.pretrain_epochs), desc=f"pretrain on digits 0-4 ({backend})", leave=False):
        for idx in batches(len(x), 64, rng):
            run.train_step(model, opt, {"x": x[idx]}, y[idx])
    path = args.out / f"pretrained_digits04_{backend}{'.pt' if backend == 'torch' else '.pdparams'}"
    xfreeze.save_checkpoint(model, path)
    return path


def strategy_setup(name, backend, source, args):
    """Model, optimizer and stages of one strategy, built only through xfreeze calls."""
    if name == "scratch":
        model = resnet18(backend, 5)
        return model, xfreeze.optimizer(model, "adam", lr=args.lr), None
    model = resnet18(backend, 5, imagenet=args.weights == "imagenet")
    if args.weights == "digits":
        report = xfreeze.load_matched(model, source, skip=["fc"])  # keep everything but the old head
        assert not report.missing or report.missing == [], report
    xfreeze.replace_head(model, 5)  # new trainable head for digits 5-9
    if name == "linear probe":
        xfreeze.freeze(model, "*", "!fc")
        return model, xfreeze.optimizer(model, "adam", lr=args.lr), None
    if name == "full, 10x head":
        return model, xfreeze.optimizer(model, "adam", lr=args.lr / 10, lr_mult={"fc": 10}), None
    third = max(args.epochs // 3, 1)
    stages = [
        xfreeze.Stage(0, freeze=["*", "!fc"]),
        xfreeze.Stage(third, unfreeze=["layer4"], lr=args.lr / 10),
        xfreeze.Stage(2 * third, unfreeze=["*"], lr=args.lr / 100),
    ]
    xfreeze.freeze(model, *stages[0].freeze)
    opt = xfreeze.optimizer(model, "adam", lr=args.lr)
    return model, opt, xfreeze.StagedUnfreeze(model, opt, stages)


def finetune(name, backend, run, source, train, test, args, rng) -> dict:
    from tqdm import tqdm

    model, opt, staged = strategy_setup(name, backend, source, args)
    if staged is not None:
        staged.step(0)
    trainable_at_start = xfreeze.summary(model, print_table=False).counts.trainable
    accuracy = [float(np.mean(run.predict(model, {"x": test[0]}).argmax(1) == test[1]))]
    start = time.perf_counter()
    for epoch in tqdm(range(args.epochs), desc=f"{name} ({backend})", leave=False):
        if staged is not None:
            staged.step(epoch)
        for idx in batches(len(train[0]), args.batch_size, rng):
            run.train_step(model, opt, {"x": train[0][idx]}, train[1][idx])
        accuracy.append(float(np.mean(run.predict(model, {"x": test[0]}).argmax(1) == test[1])))
    trainable_at_end = xfreeze.summary(model, print_table=False).counts.trainable
    trainable = f"{trainable_at_start:,}" + (
        f" -> {trainable_at_end:,}" if trainable_at_end != trainable_at_start else ""
    )
    return {"accuracy": accuracy, "time": time.perf_counter() - start, "trainable": trainable}


def few_shot_split(x, y, shots, rng):
    train = np.concatenate([rng.choice(np.flatnonzero(y == c), shots, replace=False) for c in range(5)])
    test = np.setdiff1d(np.arange(len(y)), train)
    return (x[train], y[train]), (x[test], y[test])


def report(results: dict, backend: str, args) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"digits 5-9, {args.shots} labels per class, ResNet-18 ({backend}); accuracy on "
        f"the other digits 5-9 before training (start) and after each epoch"
    )
    for column in ["strategy", "trainable", "start"] + [f"e{i + 1}" for i in range(args.epochs)] + ["time s"]:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for name, r in results.items():
        table.add_row(name, r["trainable"], *[f"{a:.3f}" for a in r["accuracy"]], f"{r['time']:.1f}")
    Console(width=160).print(table)
    ranked = sorted(results, key=lambda n: results[n]["accuracy"][-1], reverse=True)
    print("final accuracy, best first: " + ", ".join(f"{n} {results[n]['accuracy'][-1]:.3f}" for n in ranked))


def plot(results: dict, backend: str, args) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        ax.plot(range(len(r["accuracy"])), r["accuracy"], marker="o", label=name)
    ax.set(
        xlabel="epoch",
        ylabel="test accuracy (digits 5-9)",
        ylim=(0, 1),
        title=f"Transfer vs scratch, ResNet-18 ({backend}), {args.shots} labels/class",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    path = args.out / f"resnet_transfer_{backend}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["torch", "paddle"], default="torch")
    parser.add_argument(
        "--weights",
        choices=["digits", "imagenet"],
        default="digits",
        help="digits: pretrain on digits 0-4 here (offline); imagenet: real ImageNet weights (downloads them)",
    )
    parser.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs (default 8)")
    parser.add_argument("--pretrain-epochs", type=int, default=4, help="epochs on digits 0-4 (default 4)")
    parser.add_argument("--shots", type=int, default=10, help="labelled images per class of 5-9 (default 10)")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-images", type=int, default=0, help="evaluate on at most this many (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for checkpoint and plot")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    run = runner(args.backend, args.seed)
    x, y = digits()
    source = None
    if args.weights == "digits":
        source = pretrain(args.backend, run, x[y < 5], y[y < 5], args, rng)
        print(f"pretrained on digits 0-4 -> {source}")
    else:
        try:
            resnet18(args.backend, 5, imagenet=True)
        except Exception as exc:  # no network, no cache: say so, plainly
            raise SystemExit(
                f"could not get the ImageNet ResNet-18 weights for {args.backend} (offline?): "
                f"{type(exc).__name__}: {exc}"
            ) from None
    train, test = few_shot_split(x[y >= 5], y[y >= 5] - 5, args.shots, rng)
    if args.test_images:
        test = (test[0][: args.test_images], test[1][: args.test_images])
    results = {name: finetune(name, args.backend, run, source, train, test, args, rng) for name in STRATEGIES}
    report(results, args.backend, args)
    print(f"plot: {plot(results, args.backend, args)}")
    return results


if __name__ == "__main__":
    main()

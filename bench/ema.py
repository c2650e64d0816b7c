"""EMA cost = trainable bytes: ``EMA.update()`` on ResNet-50 with a frozen backbone against all-trainable.

Printed side by side in one run, per framework (torch's torchvision ResNet-50; Paddle's ``paddle.vision`` one when
Paddle is installed), both models built from config:

* **time**: ms per ``update()`` with everything trainable and with a frozen backbone (only ``fc`` trains, the
  norms locked); goal: frozen / all-trainable <= 0.15x. torch also prints a hand-written ``torch._foreach_lerp_``
  reference (lerp every parameter, copy every buffer) and timm's ``ModelEmaV3`` when installed (goal for xfreeze
  all-trainable: <= 1.0x the reference).
* **memory**: the bytes the EMA holds beyond the model's own tensors (shadows that share no memory with a model
  tensor, measured from the tensors themselves) against the head's bytes + the live (unlocked) statistics' bytes;
  goal: extra <= head + live statistics.
* **paddle / torch**: with both frameworks installed, the all-trainable (and frozen-backbone) update of Paddle over
  torch's, timed in the same interleaved rounds (goal: close to 1x).

Interleaved rounds, median; CPU by default, ``--device cuda`` on a GPU machine (Paddle then uses ``gpu``).

    .venv/bin/python bench/ema.py [--device cuda] [--rounds 7] [--updates 20] [--framework torch|paddle|both]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import xfreeze
from xfreeze.model.view import view_of


def torch_setup(device):
    import torch
    import torchvision

    def build():
        return torchvision.models.resnet50().to(device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def pointer(t):
        return t.untyped_storage().data_ptr()

    return build, sync, pointer, f"torch {torch.__version__}"


def paddle_setup(device):
    import paddle

    paddle.set_device("gpu" if device == "cuda" else "cpu")

    def sync():
        if device == "cuda":
            paddle.device.synchronize()

    def pointer(t):
        return t.data_ptr()

    return paddle.vision.models.resnet50, sync, pointer, f"paddle {paddle.__version__}"


class ForeachReference:
    """What a hand-written fused torch EMA does: lerp every parameter, copy every buffer."""

    def __init__(self, model, decay):
        self.model, self.decay = model, decay
        self.params = [p.detach().clone() for p in model.parameters()]
        self.buffers = [b.detach().clone() for b in model.buffers()]

    def update(self):
        import torch

        with torch.no_grad():
            torch._foreach_lerp_(self.params, [p.detach() for p in self.model.parameters()], 1.0 - self.decay)
            torch._foreach_copy_(self.buffers, list(self.model.buffers()))


def timm_ema(model, decay):
    if importlib.util.find_spec("timm") is None:
        return None
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=decay)
    return type("TimmEma", (), {"update": lambda self: ema.update(model)})()


def timed(ema, updates, sync) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(updates):
        ema.update()
    sync()
    return (time.perf_counter() - start) / updates


def extra_bytes(ema, model, pointer) -> int:
    """Bytes of the EMA's shadows that share no memory with a tensor of the model (measured, not self-reported)."""
    view = view_of(model)
    owned = {pointer(t) for t in list(view.params) + list(view.stat_tensors)}
    adapter = view.adapter
    return sum(adapter.nbytes(t) for t in ema.shadow.values() if pointer(t) not in owned)


def expected_bytes(model) -> tuple[int, int]:
    """(bytes of the trainable parameters, bytes of the statistics of norm layers that are not locked)."""
    view, adapter = view_of(model), view_of(model).adapter
    head = sum(adapter.nbytes(p) for p, on in zip(view.params, adapter.trainable_flags(view.params)) if on)
    live = sum(
        adapter.nbytes(t)
        for t, mi in zip(view.stat_tensors, view.stat_owner)
        if not adapter.is_norm_locked(view.modules[mi])
    )
    return head, live


def setup(framework, args) -> dict:
    """Both ResNet-50s of one framework (all trainable, frozen backbone) and the EMAs to time over them."""
    build, sync, pointer, version = (torch_setup if framework == "torch" else paddle_setup)(args.device)
    everything, frozen = build(), build()
    xfreeze.freeze(frozen, "*", "!fc")
    emas = {"all trainable": xfreeze.EMA(everything, 0.999), "frozen backbone": xfreeze.EMA(frozen, 0.999)}
    if framework == "torch":
        emas["foreach reference (all)"] = ForeachReference(everything, 0.999)
        timm = timm_ema(everything, 0.999)
        if timm is not None:
            emas["timm ModelEmaV3 (all)"] = timm
    return {"version": version, "sync": sync, "pointer": pointer, "models": (everything, frozen), "emas": emas}


def report(run, median, args) -> None:
    base = median["all trainable"]
    print(f"\n{run['version']}, ResNet-50, device {args.device}: ms per update, median of {args.rounds} rounds")
    for name, value in median.items():
        print(f"  {name:>24}: {value * 1e3:8.3f} ms   {value / base:5.2f}x xfreeze all-trainable")
    ratio = median["frozen backbone"] / base
    print(f"  frozen / all-trainable update: {ratio:.3f}x (goal <= 0.15x)")
    (everything, frozen), emas, pointer = run["models"], run["emas"], run["pointer"]
    held = extra_bytes(emas["frozen backbone"], frozen, pointer)
    head, live = expected_bytes(frozen)
    everything_held = extra_bytes(emas["all trainable"], everything, pointer)
    print(
        f"  EMA extra memory, frozen backbone: {held:,} B  vs head {head:,} B + live statistics {live:,} B "
        f"= {head + live:,} B ({'ok' if held <= head + live else 'over'}); all trainable: {everything_held:,} B"
    )


def bench(frameworks, args) -> None:
    """Every framework's EMAs timed in the same interleaved rounds, so the Paddle / torch ratio compares like
    with like on a machine whose load changes."""
    runs = {fw: setup(fw, args) for fw in frameworks}
    times: dict = {(fw, name): [] for fw, run in runs.items() for name in run["emas"]}
    for _ in range(args.rounds):
        for (fw, name), values in times.items():
            values.append(timed(runs[fw]["emas"][name], args.updates, runs[fw]["sync"]))
    medians = {fw: {name: statistics.median(times[fw, name]) for name in run["emas"]} for fw, run in runs.items()}
    for fw, run in runs.items():
        report(run, medians[fw], args)
    if len(runs) == 2:
        print("\npaddle / torch, measured side by side:")
        for name in ("all trainable", "frozen backbone"):
            ratio = medians["paddle"][name] / medians["torch"][name]
            print(
                f"  {name:>24}: {ratio:5.2f}x (paddle {medians['paddle'][name] * 1e3:.3f} ms, torch "
                f"{medians['torch'][name] * 1e3:.3f} ms)"
            )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--framework", choices=("torch", "paddle", "both"), default="both")
    args = parser.parse_args()
    frameworks = [
        fw for fw in ("torch", "paddle") if args.framework in (fw, "both") and importlib.util.find_spec(fw) is not None
    ]
    bench(frameworks, args)


if __name__ == "__main__":
    main()

"""What the examples need from each framework: seeding, tensors, a training step, predictions, a loss.

This is user-side code: the framework differences here are the ones a training loop has, not xfreeze's.
"""
from __future__ import annotations

import numpy as np


class TorchRunner:
    name = "torch"

    def __init__(self, seed: int):
        import torch
        self.torch = torch
        torch.manual_seed(seed)
        torch.set_num_threads(2)

    def tensor(self, array):
        return self.torch.from_numpy(np.ascontiguousarray(array))

    def train_step(self, model, opt, inputs: dict, labels) -> float:
        model.train()
        out = model(**{k: self.tensor(v) for k, v in inputs.items()})
        logits = out.logits if hasattr(out, "logits") else out
        loss = self.torch.nn.functional.cross_entropy(logits, self.tensor(labels))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    def predict(self, model, inputs: dict, batch: int = 256) -> np.ndarray:
        model.eval()
        n = len(next(iter(inputs.values())))
        preds = []
        with self.torch.no_grad():
            for i in range(0, n, batch):
                out = model(**{k: self.tensor(v[i:i + batch]) for k, v in inputs.items()})
                preds.append((out.logits if hasattr(out, "logits") else out).numpy())
        return np.concatenate(preds)


class PaddleRunner:
    name = "paddle"

    def __init__(self, seed: int):
        import paddle
        self.paddle = paddle
        paddle.seed(seed)
        paddle.set_device("cpu")

    def tensor(self, array):
        return self.paddle.to_tensor(np.ascontiguousarray(array))

    def train_step(self, model, opt, inputs: dict, labels) -> float:
        model.train()
        out = model(**{k: self.tensor(v) for k, v in inputs.items()})
        logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)
        loss = self.paddle.nn.functional.cross_entropy(logits, self.tensor(labels))
        loss.backward()
        opt.step()
        opt.clear_grad()
        return loss.item()

    def predict(self, model, inputs: dict, batch: int = 256) -> np.ndarray:
        model.eval()
        n = len(next(iter(inputs.values())))
        preds = []
        with self.paddle.no_grad():
            for i in range(0, n, batch):
                out = model(**{k: self.tensor(v[i:i + batch]) for k, v in inputs.items()})
                logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)
                preds.append(logits.numpy())
        return np.concatenate(preds)


def runner(backend: str, seed: int):
    return {"torch": TorchRunner, "paddle": PaddleRunner}[backend](seed)


def batches(n: int, size: int, rng):
    order = rng.permutation(n)
    return [order[i:i + size] for i in range(0, n, size)]

"""What the examples need from each framework: seeding, tensors, a training step, predictions, a loss.

This is user-side code: the framework differences here are the ones a training loop has, not xfreeze's.
"""

from __future__ import annotations

import numpy as np


class Runner:
    """The training step and batched prediction both frameworks share; subclasses supply the differences."""

    def train_step(self, model, opt, inputs: dict, labels) -> float:
        model.train()
        loss = self.cross_entropy(
            self.logits(model(**{k: self.tensor(v) for k, v in inputs.items()})), self.tensor(labels)
        )
        loss.backward()
        opt.step()
        self.clear(opt)
        return loss.item()

    def predict(self, model, inputs: dict, batch: int = 256) -> np.ndarray:
        model.eval()
        n = len(next(iter(inputs.values())))
        preds = []
        with self.no_grad():
            for i in range(0, n, batch):
                out = model(**{k: self.tensor(v[i : i + batch]) for k, v in inputs.items()})
                preds.append(self.logits(out).numpy())
        return np.concatenate(preds)

    @staticmethod
    def logits(out):
        """transformers returns an output object, PaddleNLP a tensor or tuple, vision models a tensor."""
        if hasattr(out, "logits"):
            return out.logits
        return out[0] if isinstance(out, (tuple, list)) else out


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, seed: int):
        import torch

        self.torch = torch
        torch.manual_seed(seed)
        torch.set_num_threads(2)
        self.no_grad, self.cross_entropy = torch.no_grad, torch.nn.functional.cross_entropy

    def tensor(self, array):
        return self.torch.from_numpy(np.ascontiguousarray(array))

    def clear(self, opt):
        opt.zero_grad(set_to_none=True)


class PaddleRunner(Runner):
    name = "paddle"

    def __init__(self, seed: int):
        import paddle

        self.paddle = paddle
        paddle.seed(seed)
        paddle.set_device("cpu")
        self.no_grad, self.cross_entropy = paddle.no_grad, paddle.nn.functional.cross_entropy

    def tensor(self, array):
        return self.paddle.to_tensor(np.ascontiguousarray(array))

    def clear(self, opt):
        opt.clear_grad()


def runner(backend: str, seed: int):
    return {"torch": TorchRunner, "paddle": PaddleRunner}[backend](seed)


def batches(n: int, size: int, rng):
    order = rng.permutation(n)
    return [order[i : i + size] for i in range(0, n, size)]

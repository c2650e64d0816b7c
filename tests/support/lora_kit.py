"""Tiny LoRA Llamas in both frameworks (the current stack: transformers 5 + PEFT, PaddleFormers): the framework
differences of the adapter tests live here, as one kit per framework (``lora_kit(fw.name)``), read and written
with the libraries' own APIs (the oracle the view is checked against).

Both build one Llama from the same tiny config (untied head: transformers' default; PaddleFormers ties by default),
PaddleFormers with ``fuse_rms_norm=False`` (its fused kernel needs a GPU), and wrap it the libraries' way:
``peft.get_peft_model(LoraConfig)`` / ``paddleformers.peft.LoRAModel(LoRAConfig)``.
"""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("FLAGS_enable_paddleformers_monkey_patch", "0")  # or paddleformers patches paddle.Tensor

LLAMA = dict(
    vocab_size=32,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)
TARGETS = ("q_proj", "v_proj")
IDS = np.array([[1, 5, 9, 3, 7, 2, 11, 4]], dtype=np.int64)


class TorchLora:
    name = "torch"

    def __init__(self):
        import torch  # before paddleformers: importing it first hides torch from transformers

        import peft
        import transformers

        self.torch, self.peft, self.transformers = torch, peft, transformers

    def llama(self, seed: int = 0):
        self.torch.manual_seed(seed)
        return self.transformers.LlamaForCausalLM(self.transformers.LlamaConfig(**LLAMA)).eval()

    def wrap(self, model, r: int = 4, alpha: float = 8, targets=TARGETS, rslora: bool = False):
        config = self.peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), use_rslora=rslora)
        return self.peft.get_peft_model(model, config).eval()

    def logits(self, model, ids=IDS) -> np.ndarray:
        with self.torch.no_grad():
            return model(input_ids=self.torch.from_numpy(ids)).logits.float().numpy()

    def randomize_adapters(self, model, seed: int = 1) -> None:
        """Random lora_A and lora_B (PEFT starts lora_B at zero: an adapter that changes nothing)."""
        gen = np.random.default_rng(seed)
        with self.torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(self.torch.from_numpy(gen.normal(0, 0.5, tuple(p.shape)).astype(np.float32)))

    def adapter_names(self, model) -> list:
        """The adapter weights' names as the library gives them, less its wrappers' prefix and PEFT's adapter name
        (``base_model.model.<name>.lora_A.default.weight`` -> ``<name>.lora_A``)."""
        prefix = "base_model.model."
        return [n[len(prefix) :].replace(".default.weight", "") for n, _ in model.named_parameters() if "lora_" in n]

    def trainable_count(self, model) -> int:
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def train_step(self, model, seed: int = 0) -> None:
        opt = self.torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        ids = self.torch.from_numpy(IDS)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()

    def save_adapter(self, model, folder) -> None:
        model.save_pretrained(folder)


class PaddleLora:
    name = "paddle"

    def __init__(self):
        import torch  # noqa: F401  (imported before paddleformers: see TorchLora)

        import paddle
        from paddleformers.peft import LoRAConfig, LoRAModel
        from paddleformers.transformers import LlamaConfig, LlamaForCausalLM

        self.paddle, self.LoRAConfig, self.LoRAModel = paddle, LoRAConfig, LoRAModel
        self.LlamaConfig, self.LlamaForCausalLM = LlamaConfig, LlamaForCausalLM

    def llama(self, seed: int = 0):
        self.paddle.seed(seed)
        model = self.LlamaForCausalLM(self.LlamaConfig(**LLAMA, fuse_rms_norm=False))
        model.eval()
        return model

    def wrap(self, model, r: int = 4, alpha: float = 8, targets=TARGETS, rslora: bool = False):
        patterns = [f".*{t}" for t in targets]
        wrapped = self.LoRAModel(model, self.LoRAConfig(r=r, lora_alpha=alpha, target_modules=patterns, rslora=rslora))
        wrapped.eval()
        return wrapped

    def logits(self, model, ids=IDS) -> np.ndarray:
        with self.paddle.no_grad():
            out = model(input_ids=self.paddle.to_tensor(ids))
        logits = out.logits if hasattr(out, "logits") else out[0]
        return logits.astype("float32").numpy()

    def randomize_adapters(self, model, seed: int = 1) -> None:
        gen = np.random.default_rng(seed)
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.set_value(gen.normal(0, 0.5, tuple(p.shape)).astype(np.float32))

    def adapter_names(self, model) -> list:
        """The adapter weights' names as PaddleFormers gives them, less ``LoRAModel``'s ``model.`` prefix."""
        return [n[len("model.") :] for n, _ in model.named_parameters() if "lora_" in n]

    def trainable_count(self, model) -> int:
        return sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)

    def train_step(self, model, seed: int = 0) -> None:
        params = [p for p in model.parameters() if not p.stop_gradient]
        opt = self.paddle.optimizer.SGD(learning_rate=0.1, parameters=params)
        ids = self.paddle.to_tensor(IDS)
        out = model(input_ids=ids, labels=ids)
        loss = out.loss if hasattr(out, "loss") else out[0]
        loss.backward()
        opt.step()
        opt.clear_grad()


LORA_KITS = {"torch": TorchLora, "paddle": PaddleLora}
OTHER = {"torch": "paddle", "paddle": "torch"}
_made: dict = {}


def lora_kit(name: str):
    if name not in _made:
        _made[name] = LORA_KITS[name]()
    return _made[name]

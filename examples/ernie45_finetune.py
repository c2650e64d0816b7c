"""Fine-tune a small ERNIE 4.5 causal LM in torch (transformers) or Paddle (PaddleFormers), last block + lm_head only.

The workflow: build ``Ernie4_5ForCausalLM`` from a tiny config (offline), freeze everything with ``xfreeze.freeze``
and unfreeze the last decoder block and ``lm_head`` (PaddleFormers' ``LMHead`` included), train with AdamW over what
trains, check with ``xfreeze.verify_frozen`` that every frozen tensor kept its bits, then carry the trained weights to
the other framework with ``xfreeze.load_matched`` (PaddleFormers fuses ``q/k/v_proj`` into one ``qkv_proj``,
interleaved per key-value head, and ``gate_proj``/``up_proj`` into ``up_gate_proj``; transformers keeps them apart:
xfreeze splits and joins them) and compare both frameworks' answers.

The task is GENERATED (templates over small word lists, offline): a review, then "so it was", then the answer word
"good" or "bad"; a negation flips it. It exercises the workflow on the model's last position; it is not real data and
says nothing about ERNIE 4.5's quality. The model's lower blocks are random and frozen, so accuracy stays modest.

Needs the current stack (transformers 5 for torch's Ernie4_5, PaddleFormers 1.2 for Paddle's).
Run: python examples/ernie45_finetune.py --backend torch|paddle [--epochs 8] [--examples 600]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xfreeze  # noqa: E402
from common import batches, runner  # noqa: E402

POSITIVE = ["great", "wonderful", "excellent", "pleasant", "brilliant", "lovely"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "poor", "dull"]
NOUNS = ["movie", "book", "meal", "phone", "hotel", "concert", "game", "trip"]
TEMPLATES = ["the {n} was {a}", "the {n} was not {a}", "what a {a} {n}", "never a {a} {n}"]
ANSWERS = ["bad", "good"]
SPECIALS = ["<pad>", "<s>"]
LENGTH = 9  # tokens before the answer: left-filled with <s> so that every example has the same length
CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention: the fused qkv_proj interleaves 2 query heads per key-value head
    head_dim=16,
    max_position_embeddings=32,
    rms_norm_eps=1e-6,
    initializer_range=0.1,  # larger than the 0.02 default: the random frozen blocks pass more signal on
    rope_theta=10000.0,  # transformers' and PaddleFormers' Ernie4_5 configs default to different thetas
    pad_token_id=0,
    tie_word_embeddings=False,
)


def generated_examples(n: int, rng) -> tuple[list[str], np.ndarray]:
    """Generated prompts and answers (1 good, 0 bad); a negation in the template flips the answer."""
    prompts, answers = [], []
    for _ in range(n):
        template, positive = TEMPLATES[rng.integers(len(TEMPLATES))], rng.random() < 0.5
        adjective = rng.choice(POSITIVE if positive else NEGATIVE)
        prompts.append(template.format(n=rng.choice(NOUNS), a=adjective) + " so it was")
        answers.append(int(positive) ^ (" not " in template or "never " in template))
    return prompts, np.array(answers, dtype="int64")


class WordTokenizer:
    """Whitespace tokens over the generated vocabulary (no download); prompts are left-filled with ``<s>``."""

    def __init__(self):
        words = sorted({w for t in TEMPLATES for w in t.split() if "{" not in w} | {"so", "it"})
        self.vocab = {w: i for i, w in enumerate(SPECIALS + words + POSITIVE + NEGATIVE + NOUNS + ANSWERS)}
        self.answers = slice(self.vocab[ANSWERS[0]], self.vocab[ANSWERS[-1]] + 1)  # last in the vocabulary

    def __call__(self, prompts) -> np.ndarray:
        ids = np.full((len(prompts), LENGTH), self.vocab["<s>"], dtype="int64")
        for row, prompt in enumerate(prompts):
            tokens = [self.vocab[w] for w in prompt.split()][-LENGTH:]
            ids[row, LENGTH - len(tokens) :] = tokens
        return ids


def build(backend: str, vocab_size: int, seed: int):
    """A random-weight ERNIE 4.5 causal LM of the framework, from the same tiny config."""
    if backend == "torch":
        import torch
        from transformers import Ernie4_5Config, Ernie4_5ForCausalLM

        torch.manual_seed(seed)
        config = Ernie4_5Config(vocab_size=vocab_size, **CONFIG, attn_implementation="eager")
        return Ernie4_5ForCausalLM(config)
    # PaddleFormers' import traps: it patches paddle.Tensor methods unless this flag is 0, and imported before torch
    # it hides torch from transformers for the whole process (the carry-over to torch needs it)
    os.environ.setdefault("FLAGS_enable_paddleformers_monkey_patch", "0")
    if importlib.util.find_spec("torch") is not None:
        import torch  # noqa: F401
    import paddle
    from paddleformers.transformers import Ernie4_5Config, Ernie4_5ForCausalLM

    paddle.seed(seed)
    config = Ernie4_5Config(vocab_size=vocab_size, **CONFIG, fuse_rms_norm=False)  # the fused norm is GPU-only
    return Ernie4_5ForCausalLM(config)


def answer_logits(run, model, ids, answers: slice):
    """The logits of "bad" and "good" at the last position (the next word)."""
    return run.logits(model(run.tensor(ids)))[:, -1, answers]


def train_epoch(run, model, opt, data, answers, rng) -> float:
    model.train()
    losses = []
    for idx in batches(len(data[1]), 32, rng):
        loss = run.cross_entropy(answer_logits(run, model, data[0][idx], answers), run.tensor(data[1][idx]))
        loss.backward()
        opt.step()
        run.clear(opt)
        losses.append(float(loss.item()))
    return float(np.mean(losses))


def predict(run, model, ids, answers) -> np.ndarray:
    model.eval()
    with run.no_grad():
        return answer_logits(run, model, ids, answers).numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["torch", "paddle"], default="torch")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--examples", type=int, default=600, help="generated examples (3/4 train, 1/4 test)")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    run, tokenize = runner(args.backend, args.seed), WordTokenizer()
    prompts, answers = generated_examples(args.examples, rng)
    split = len(prompts) * 3 // 4
    train, test = (tokenize(prompts[:split]), answers[:split]), (tokenize(prompts[split:]), answers[split:])
    print(f"data: {len(prompts)} GENERATED examples (not real text), e.g. {prompts[0]!r} -> {ANSWERS[answers[0]]!r}")

    model = build(args.backend, len(tokenize.vocab), args.seed)
    last = f"model.layers.{CONFIG['num_hidden_layers'] - 1}"
    xfreeze.freeze(model, "*")
    print(xfreeze.unfreeze(model, last, "lm_head"))  # the last decoder block and the LM head train
    frozen = xfreeze.frozen_fingerprint(model)
    opt = xfreeze.optimizer(model, "adamw", lr=args.lr, weight_decay=0.01)
    accuracy = lambda: float(np.mean(predict(run, model, test[0], tokenize.answers).argmax(1) == test[1]))  # noqa: E731
    history, start = [accuracy()], time.perf_counter()
    for epoch in range(args.epochs):
        loss = train_epoch(run, model, opt, train, tokenize.answers, rng)
        history.append(accuracy())
        print(f"epoch {epoch + 1}: train loss {loss:.3f}  test accuracy {history[-1]:.3f}")
    check = xfreeze.verify_frozen(model, frozen)
    print(f"frozen tensors unchanged: {check.ok} ({check.checked} checked)")
    print(f"{args.backend}: accuracy {history[0]:.3f} -> {history[-1]:.3f} in {time.perf_counter() - start:.1f} s")
    carry_over(args, model, run, test, tokenize)
    return history


def carry_over(args, model, run, test, tokenize) -> None:
    """Convert the fine-tuned weights to the other framework and compare the answers on the test prompts."""
    other = "paddle" if args.backend == "torch" else "torch"
    if importlib.util.find_spec({"torch": "transformers", "paddle": "paddleformers"}[other]) is None:
        print(f"(skipping the {other} comparison: its ERNIE 4.5 library is not installed)")
        return
    twin = build(other, len(tokenize.vocab), args.seed + 1)
    report = xfreeze.load_matched(twin, model)  # names, layouts, fused qkv_proj / up_gate_proj converted
    print(report)
    mine = predict(run, model, test[0], tokenize.answers)
    theirs = predict(runner(other, args.seed), twin, test[0], tokenize.answers)
    same = float(np.mean(mine.argmax(1) == theirs.argmax(1)))
    print(
        f"{args.backend} -> {other}: same answer on {same:.1%} of the test prompts; largest logit difference "
        f"{np.abs(mine - theirs).max():.2e}"
    )


if __name__ == "__main__":
    main()

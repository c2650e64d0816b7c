"""Sharded checkpoint folders: peak memory of ``load_matched`` from a folder vs from one merged file.

A transformers Llama built from its config (hidden 512, 8 layers, vocab 8000: 33.6M parameters, 134 MB in
float32) is saved twice, as a sharded ``save_pretrained`` folder (``max_shard_size``, about 8 shards) and as one
merged ``.safetensors`` file. Each load runs in a fresh process that first builds the model; a thread samples the
process's resident memory every millisecond, and the figure is the peak above the memory held before the load.
Loading the folder streams it (one shard read, planned and placed at a time, every shard read twice: see
``xfreeze/weights/shards.py``); the merged file is read whole. Also into a Paddle twin (PaddleNLP Llama in the classic
environment, PaddleFormers in the current one) with ``--paddle``, which converts on the way.

    .venv/bin/python bench/shards.py [--shard-mb 20] [--paddle]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

CONFIG = dict(
    vocab_size=8000,
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
    tie_word_embeddings=False,
)


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_during(fn) -> tuple:
    """(peak resident bytes above the start, seconds) while ``fn`` runs."""
    start, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    began = time.perf_counter()
    fn()
    seconds = time.perf_counter() - began
    done.set()
    thread.join()
    return max(peak[0], rss()) - start, seconds


def build(framework: str):
    if framework == "torch":
        import torch
        import transformers

        torch.manual_seed(1)
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).eval()
    try:
        from paddleformers.transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM(LlamaConfig(**CONFIG, fuse_rms_norm=False)).eval()
    except ImportError:
        from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()


def child(source: str, framework: str) -> None:
    """One measurement, in its own process: build the model, then load ``source`` into it."""
    import warnings

    import xfreeze

    model = build(framework)
    warnings.simplefilter("ignore")
    grown, seconds = peak_during(lambda: xfreeze.load_matched(model, source, allow_partial=True))
    print(json.dumps({"peak": grown, "seconds": seconds}))


def measure(source: str, framework: str) -> dict:
    env = dict(os.environ, FLAGS_enable_paddleformers_monkey_patch="0")
    out = subprocess.run(
        [sys.executable, __file__, "--child", source, framework], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-mb", type=int, default=20, help="max_shard_size of the folder (MB)")
    parser.add_argument("--paddle", action="store_true", help="also load into the Paddle twin (converting)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    import xfreeze

    with tempfile.TemporaryDirectory() as tmp:
        model = build("torch")
        folder, merged = os.path.join(tmp, "folder"), os.path.join(tmp, "merged.safetensors")
        model.save_pretrained(folder, max_shard_size=f"{args.shard_mb}MB")
        xfreeze.save_checkpoint(model, merged)
        sizes = [os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors")]
        del model
        print(
            f"Llama {CONFIG['hidden_size']}x{CONFIG['num_hidden_layers']} layers, vocab {CONFIG['vocab_size']}: "
            f"{os.path.getsize(merged) / 2**20:.0f} MiB; folder of {len(sizes)} shards, largest "
            f"{max(sizes) / 2**20:.0f} MiB"
        )
        for framework in ("torch", "paddle") if args.paddle else ("torch",):
            by_folder, by_file = measure(folder, framework), measure(merged, framework)
            print(
                f"{framework:6s} load_matched peak RSS above the built model: folder {by_folder['peak'] / 2**20:.0f} "
                f"MiB ({by_folder['seconds']:.2f} s), merged file {by_file['peak'] / 2**20:.0f} MiB "
                f"({by_file['seconds']:.2f} s); folder/file memory ratio {by_folder['peak'] / by_file['peak']:.2f}, "
                f"time ratio {by_folder['seconds'] / by_file['seconds']:.2f}"
            )


if __name__ == "__main__":
    main()

"""Tiny real architectures for the issue-11 sweep: torchvision / paddle.vision classifiers, transformers and PaddleNLP
families (built from configs, random weights), timm distilled and auxiliary-head models.

Each case is ``Case(id, framework, build)``; ``build()`` returns ``(model, inputs, head)``: the model, a dict of
keyword inputs (or one tensor under ``"x"``) and the ``head=`` argument for replace_head (``"auto"`` unless the
family has no classification head class). ``run_case`` does what a user does: replace the head, freeze everything
else, one AdamW step (weight decay on) over **all** parameters, and checks that frozen tensors are bitwise unchanged
and the new head(s) moved.
"""

from __future__ import annotations

import gc
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

import xfreeze

NUM_CLASSES = 3
TINY_TEXT = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)


@dataclass
class Case:
    id: str
    framework: str
    build: Callable


# --- torchvision / paddle.vision --------------------------------------------------------------------------------
# torchvision builders need no weights; very large ones (>150M parameters) stay out of the sweep on CPU.
TV_SKIP = {"vit_h_14", "vit_l_16", "vit_l_32", "regnet_y_128gf", "regnet_y_32gf", "regnet_y_16gf", "regnet_x_32gf"}
TV_SIZES = {"inception_v3": 299, "googlenet": 32, "alexnet": 64}  # Inception's aux head needs 299
PV_SIZES = {"alexnet": 224, "inception_v3": 75, "googlenet": 224, "squeezenet1_0": 64, "squeezenet1_1": 64}


def torchvision_names() -> list[str]:
    import torchvision

    return [n for n in torchvision.models.list_models(module=torchvision.models) if n not in TV_SKIP]


def paddle_vision_names() -> list[str]:
    import inspect

    import paddle.vision.models as models

    return sorted(n for n in models.__all__ if n[0].islower() and inspect.isfunction(getattr(models, n)))


def torchvision_case(name: str) -> Case:
    def build():
        import torch
        import torchvision

        size = TV_SIZES.get(name, 224 if name.startswith(("vit_", "swin", "maxvit")) else 32)
        if name.startswith("maxvit"):
            size = 224
        kwargs = {"num_classes": 10}
        if name.startswith(("vit_", "swin", "maxvit")) or name in ("googlenet", "inception_v3"):
            kwargs["image_size"] = size if name.startswith("vit_") else None
            kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if name in ("googlenet", "inception_v3"):
            kwargs.update(aux_logits=True, init_weights=False)
        model = torchvision.models.get_model(name, **kwargs)
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        return model, {"x": x}, "auto"

    return Case(f"torchvision-{name}", "torch", build)


def paddle_vision_case(name: str) -> Case:
    def build():
        import paddle
        import paddle.vision.models as models

        size = PV_SIZES.get(name, 64)
        model = getattr(models, name)(num_classes=10)
        x = paddle.to_tensor(np.random.RandomState(0).randn(2, 3, size, size).astype("float32"))
        return model, {"x": x}, "auto"

    return Case(f"paddle.vision-{name}", "paddle", build)


# --- transformers ----------------------------------------------------------------------------------------------
def _ids(vocab=64, eos=None, batch=2, length=8):
    ids = np.random.RandomState(0).randint(3, vocab, (batch, length))
    if eos is not None:
        ids[:, -1] = eos
    return ids


def hf_case(family: str) -> Case:
    def build():
        import torch
        import transformers as T

        text = dict(TINY_TEXT, num_labels=NUM_CLASSES)
        ids = {"input_ids": torch.from_numpy(_ids())}
        small_llm = dict(text, num_key_value_heads=1, pad_token_id=0, max_position_embeddings=32)
        image = {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
        vit = dict(
            image_size=32,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=NUM_CLASSES,
        )
        if family == "llama":
            model = T.LlamaForSequenceClassification(T.LlamaConfig(**small_llm))
        elif family == "qwen2":
            model = T.Qwen2ForSequenceClassification(T.Qwen2Config(**small_llm))
        elif family == "mistral":
            model = T.MistralForSequenceClassification(T.MistralConfig(**small_llm))
        elif family == "gemma":
            model = T.GemmaForSequenceClassification(T.GemmaConfig(**small_llm, head_dim=8))
        elif family == "gpt2":
            model = T.GPT2ForSequenceClassification(
                T.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, num_labels=NUM_CLASSES, pad_token_id=0)
            )
        elif family == "t5":
            model = T.T5ForSequenceClassification(
                T.T5Config(
                    vocab_size=64,
                    d_model=16,
                    d_kv=8,
                    d_ff=32,
                    num_layers=1,
                    num_heads=2,
                    num_labels=NUM_CLASSES,
                    eos_token_id=1,
                    pad_token_id=0,
                    decoder_start_token_id=0,
                )
            )
            ids = {"input_ids": torch.from_numpy(_ids(eos=1))}
        elif family == "bart":
            model = T.BartForSequenceClassification(
                T.BartConfig(
                    vocab_size=64,
                    d_model=16,
                    encoder_layers=1,
                    decoder_layers=1,
                    encoder_attention_heads=2,
                    decoder_attention_heads=2,
                    encoder_ffn_dim=32,
                    decoder_ffn_dim=32,
                    num_labels=NUM_CLASSES,
                    max_position_embeddings=32,
                    eos_token_id=2,
                )
            )
            ids = {"input_ids": torch.from_numpy(_ids(eos=2))}
        elif family == "bert":
            model = T.BertForSequenceClassification(T.BertConfig(**text))
        elif family == "ernie":
            model = T.ErnieForSequenceClassification(T.ErnieConfig(**text))
        elif family == "deberta":
            model = T.DebertaForSequenceClassification(T.DebertaConfig(**text))
        elif family == "mobilebert":
            model = T.MobileBertForSequenceClassification(
                T.MobileBertConfig(**dict(text, hidden_size=32), embedding_size=16, intra_bottleneck_size=16)
            )
        elif family == "xlnet":
            model = T.XLNetForSequenceClassification(
                T.XLNetConfig(vocab_size=64, d_model=16, n_layer=1, n_head=2, d_inner=32, num_labels=NUM_CLASSES)
            )
        elif family == "vit":
            model, ids = T.ViTForImageClassification(T.ViTConfig(**vit)), image
        elif family == "swin":
            model, ids = (
                T.SwinForImageClassification(
                    T.SwinConfig(
                        image_size=32,
                        patch_size=4,
                        embed_dim=8,
                        depths=[1, 1],
                        num_heads=[1, 2],
                        window_size=4,
                        num_labels=NUM_CLASSES,
                    )
                ),
                image,
            )
        elif family == "deit-teacher":
            model, ids = T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(**vit)), image
        elif family == "levit-teacher":
            model, ids = (
                T.LevitForImageClassificationWithTeacher(
                    T.LevitConfig(
                        image_size=32,
                        hidden_sizes=[16, 24, 32],
                        num_attention_heads=[1, 2, 2],
                        depths=[1, 1, 1],
                        key_dim=[8, 8, 8],
                        patch_size=16,
                        num_labels=NUM_CLASSES,
                    )
                ),
                image,
            )
        else:
            raise ValueError(family)
        return model, ids, "auto"

    return Case(f"transformers-{family}", "torch", build)


HF_FAMILIES = (
    "llama",
    "qwen2",
    "mistral",
    "gemma",
    "gpt2",
    "t5",
    "bart",
    "bert",
    "ernie",
    "deberta",
    "mobilebert",
    "xlnet",
    "vit",
    "swin",
    "deit-teacher",
    "levit-teacher",
)


# --- PaddleNLP -------------------------------------------------------------------------------------------------
def paddlenlp_case(family: str) -> Case:
    def build():
        import paddle
        import paddlenlp.transformers as P

        text = dict(TINY_TEXT, num_labels=NUM_CLASSES, max_position_embeddings=32, type_vocab_size=2)
        ids = {"input_ids": paddle.to_tensor(_ids())}
        head = "auto"
        if family == "ernie":
            model = P.ErnieForSequenceClassification(P.ErnieConfig(**text))
        elif family == "bert":
            model = P.BertForSequenceClassification(P.BertConfig(**text))
        elif family == "deberta":
            model = P.DebertaForSequenceClassification(
                P.DebertaConfig(**text, pooler_hidden_size=16, pooler_dropout=0.0)
            )
        elif family == "mobilebert":
            model = P.MobileBertForSequenceClassification(
                P.MobileBertConfig(
                    **dict(text, hidden_size=32), embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16
                )
            )
        elif family == "gpt":
            model = P.GPTForSequenceClassification(P.GPTConfig(**dict(text, pad_token_id=0)))
        elif family == "bart":
            model = P.BartForSequenceClassification(
                P.BartConfig(
                    vocab_size=64,
                    d_model=16,
                    encoder_layers=1,
                    decoder_layers=1,
                    encoder_attention_heads=2,
                    decoder_attention_heads=2,
                    encoder_ffn_dim=32,
                    decoder_ffn_dim=32,
                    num_labels=NUM_CLASSES,
                    max_position_embeddings=32,
                    eos_token_id=2,
                    pad_token_id=1,
                )
            )
            ids = {"input_ids": paddle.to_tensor(_ids(eos=2))}
        elif family == "llama":
            model = P.LlamaForCausalLM(
                P.LlamaConfig(**dict(TINY_TEXT, num_key_value_heads=1, max_position_embeddings=32))
            )
            head = "keep:lm_head"  # PaddleNLP 2.8.1 has no LlamaForSequenceClassification
        elif family == "t5":
            model = P.T5ForConditionalGeneration(
                P.T5Config(
                    vocab_size=64,
                    d_model=16,
                    d_kv=8,
                    d_ff=32,
                    num_layers=1,
                    num_decoder_layers=1,
                    num_heads=2,
                    tie_word_embeddings=False,
                )
            )
            ids = {"input_ids": paddle.to_tensor(_ids()), "decoder_input_ids": paddle.to_tensor(_ids())}
            head = "lm_head"
        else:
            raise ValueError(family)
        return model, ids, head

    return Case(f"paddlenlp-{family}", "paddle", build)


PADDLENLP_FAMILIES = ("ernie", "bert", "deberta", "mobilebert", "gpt", "bart", "llama", "t5")


# --- timm ------------------------------------------------------------------------------------------------------
TIMM_MODELS = {  # two-headed (distillation / auxiliary) and one-headed references, at small input sizes
    "deit_tiny_distilled_patch16_224": dict(img_size=32),
    "pit_ti_distilled_224": dict(img_size=64),
    "levit_128s": dict(img_size=64),
    "efficientformer_l1": dict(img_size=224),
    "repvit_m1": {},
    "volo_d1_224": dict(img_size=64),
    "crossvit_tiny_240": dict(img_size=240),
    "resnet18": {},
    "vit_tiny_patch16_224": dict(img_size=32),
}
TIMM_SIZES = {"repvit_m1": 64, "resnet18": 32, "crossvit_tiny_240": 240}


def timm_case(name: str) -> Case:
    def build():
        import timm
        import torch

        kwargs = TIMM_MODELS[name]
        model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
        size = kwargs.get("img_size", TIMM_SIZES.get(name, 64))
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        return model, {"x": x}, "auto"

    return Case(f"timm-{name}", "torch", build)


# --- the check -------------------------------------------------------------------------------------------------
def _logits(out):
    """Every floating output tensor (logits of all heads) of a model's forward."""
    if hasattr(out, "logits") and out.logits is not None:
        return [out.logits]
    if isinstance(out, dict):
        return [v for v in out.values() if hasattr(v, "shape")]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _logits(o)]
    return [out] if hasattr(out, "shape") and out is not None else []


def run_case(case: Case) -> dict:
    """replace_head, freeze all but the head(s), one AdamW step over all parameters; returns what it saw."""
    model, inputs, head = case.build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if head.startswith("keep:"):  # a head kept as it is (PaddleNLP Llama: a causal LM, no classifier class)
            heads = [head[5:]]
        else:
            new = xfreeze.replace_head(model, NUM_CLASSES, head=head)  # SqueezeNet: a new 1x1-conv classifier
            heads = _heads_of(model, new if isinstance(new, list) else [new])
    xfreeze.freeze(model, "*")
    xfreeze.unfreeze(model, *heads)
    before, after = STEPS[case.framework](model, inputs)
    frozen = [k for k in before if not any(k == h or k.startswith(h + ".") for h in heads)]
    changed_frozen = [k for k in frozen if not np.array_equal(before[k], after[k])]
    moved_heads = [k for k in before if k not in frozen and not np.array_equal(before[k], after[k])]
    del model, inputs, before, after
    gc.collect()  # one process builds ~140 models: give each one's memory back before the next
    return {
        "heads": heads,
        "changed_frozen": changed_frozen,
        "moved_heads": moved_heads,
        "warned": [str(w.message) for w in caught if "class-logit heads" in str(w.message)],
    }


def _heads_of(model, layers) -> list[str]:
    view = xfreeze.model.view.view_of(model)
    ids = {id(layer) for layer in layers}
    return [p for p, m in zip(view.paths, view.modules) if id(m) in ids]


def _torch_step(model, inputs):
    import torch

    model.train()
    before = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    out = model(inputs["x"]) if "x" in inputs else model(**inputs)
    loss = sum(t.float().pow(2).mean() for t in _logits(out))
    loss.backward()
    opt.step()
    after = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return before, after


def _paddle_step(model, inputs):
    import paddle

    model.train()
    before = {k: np.array(v.numpy()) for k, v in model.state_dict().items()}
    opt = paddle.optimizer.AdamW(learning_rate=1e-2, parameters=model.parameters(), weight_decay=0.1)
    out = model(inputs["x"]) if "x" in inputs else model(**inputs)
    loss = sum(t.astype("float32").pow(2).mean() for t in _logits(out))
    loss.backward()
    opt.step()
    after = {k: np.array(v.numpy()) for k, v in model.state_dict().items()}
    return before, after


STEPS = {"torch": _torch_step, "paddle": _paddle_step}  # one training step per framework, by name

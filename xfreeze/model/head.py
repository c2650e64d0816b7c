"""replace_head: find the classifier of a vision or text model and put a new trainable linear layer there.

How ``head="auto"`` decides (reads only the model view):
  1. The output layer of a block with a known head name (``HEAD_NAMES``; the last linear layer of the block, and
     its numbered siblings with the same output size: crossvit's ``head.0`` / ``head.1``). ``sequence_summary`` is
     used only when no other name is found (XLNet's summary feeds ``logits_proj``).
  2. The other heads that also produce class logits (``EXTRA_HEADS``: distillation heads of DeiT / LeViT /
     EfficientFormer / RepViT / PiT / SwiftFormer, VOLO's ``aux_head``, GoogLeNet and InceptionV3 auxiliary
     classifiers): the last linear layer of each such block with the primary head's output size. ``auto``
     replaces **all** of them and warns which; replacing one would leave the model failing on its first forward.
  3. Else a model with exactly one linear layer uses it.
  4. Else a model with no linear layer whose last 1x1 convolution outputs the model's ``num_classes`` (a conv
     classifier: SqueezeNet's ``classifier.1`` / paddle.vision's ``_conv9``) gets a new 1x1 convolution there.
Linear-kind modules that are not one plain Linear (``Conv1D``, ``Linear3D``, ``MultiheadAttention``) are never heads.
"""

from __future__ import annotations

import fnmatch
import numbers
import warnings

from .view import invalidate, view_of
from ..backends.kinds import replaceable_linear
from ..core.errors import XFreezeError, check_choice

# Where classifiers live: torchvision / paddle.vision ResNet (fc), VGG and MobileNet (classifier.N), ViT (heads.head),
# timm (head, head.fc, classif), transformers / PaddleNLP ...ForSequenceClassification (classifier), causal LMs with a
# sequence-classification head (score), BART / T5 (classification_head), XLNet / XLM / Flaubert (logits_proj,
# sequence_summary), paddle.vision DenseNet (out), ShuffleNetV2 (_fc), AlexNet (_fc8), GoogLeNet (_fc_out),
# DeiT-with-teacher (cls_classifier).
HEAD_NAMES = (
    "fc",
    "classifier",
    "heads",
    "head",
    "last_linear",
    "score",
    "classification_head",
    "logits_proj",
    "out",
    "_fc",
    "_fc8",
    "_fc_out",
    "classif",
    "cls_classifier",
    "sequence_summary",
)
_FALLBACK = ("sequence_summary",)
# blocks of second class-logit heads: distillation / auxiliary classifiers
EXTRA_HEADS = (
    "head_dist",
    "dist_head",
    "aux_head",
    "distillation_classifier",
    "classifier_distill",
    "aux1",
    "aux2",
    "AuxLogits",
    "_out1",
    "_out2",
)
INITS = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "normal", "zeros", "default")


def replace_head(model, num_classes: int, *, head="auto", init: str = "xavier_uniform", backend: str | None = None):
    """Swap the final classifier (every class-logit head) for a new trainable linear layer with ``num_classes`` outputs.

    Each new layer keeps the old one's input size, bias setting, device and dtype. The label count of the model's
    config follows (transformers ``config.num_labels`` / ``id2label`` / ``label2id``, PaddleNLP ``num_classes``)
    so ``model(..., labels=y)`` works.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        num_classes: outputs of the new layer (>= 1).
        head: ``"auto"``; a module name or a glob pattern matching exactly one linear layer; or a list of them (one
            layer each). ``auto`` replaces all heads producing class logits of two-headed models (a classifier plus
            a distillation or auxiliary head) and warns naming them.
        init: weight init: one of ``INITS``; biases start at zero (``"default"`` keeps the framework's own).
        backend: force ``"torch"`` or ``"paddle"``.

    Returns:
        The new linear layer when one head was replaced; a list of the new layers, in model order, when several were
        (``head=[...]`` with several names, or a two-headed model under ``auto``).

    Raises:
        XFreezeError: bad ``num_classes``, ``init`` or ``head``, or the head cannot be found (the message lists the
            candidate linear layers). The model is unchanged then.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1000))
        >>> xfreeze.replace_head(model, 10, head="2").out_features
        10
    """
    view = view_of(model, backend)
    adapter = view.adapter
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise XFreezeError(f"num_classes must be an integer >= 1. Received: num_classes={num_classes!r}")
    check_choice("init", init, INITS)
    paths = find_heads(view, head)
    if head == "auto" and len(paths) > 1:
        warnings.warn(
            f"replace_head replaced {len(paths)} class-logit heads of {view.label}: {', '.join(paths)} "
            f"(a classifier plus distillation/auxiliary heads; all must change size together).\n"
            f"HINT: pass head=NAME or head=[NAMES] to choose explicitly.",
            UserWarning,
            stacklevel=2,
        )
    new = []
    for path in paths:
        old = view.modules[view.module_index[path]]
        if adapter.conv_head_features(old) is not None and view.kinds[view.module_index[path]] == "conv":
            layer = adapter.new_conv_head(old, int(num_classes), init)
        else:
            layer = adapter.new_linear(old, int(num_classes), init)
        parent, _, attr = path.rpartition(".")
        setattr(view.modules[view.module_index[parent]], attr, layer)
        new.append(layer)
    adapter.update_label_count(view.inner, int(num_classes))
    invalidate(model)
    return new[0] if len(new) == 1 else new


def find_heads(view, head="auto") -> list[str]:
    """Every head ``replace_head`` would replace, in model order; raises listing candidates when it cannot tell."""
    linears = [
        p for p, m, k in zip(view.paths, view.modules, view.kinds) if p and k == "linear" and replaceable_linear(m)
    ]
    if isinstance(head, (list, tuple)) and head and all(isinstance(h, str) and h for h in head):
        found = [_one(view, linears, h) for h in head]
        if len(set(found)) != len(found):
            raise XFreezeError(f"head={list(head)!r} names the same layer twice ({', '.join(found)}) in {view.label}")
        return sorted(found, key=view.module_index.__getitem__)
    if head == "auto":
        found, ambiguous = _auto(view, linears)
        if not found and not linears:
            found = _conv_classifier(view)
        if found and not ambiguous:
            return found
        what = "found no classification head" if not found else "is ambiguous (head='auto')"
        candidates = f": {', '.join(map(repr, found))} could each be the head" if found else ""
        raise XFreezeError(
            f"replace_head {what} in {view.label}{candidates}. "
            f"Pass head=NAME, one of the linear layers: {_describe(view, linears)}"
        )
    if not isinstance(head, str) or not head:
        raise XFreezeError(f"head must be 'auto', a module name or a list of module names. Received: head={head!r}")
    return [_one(view, linears, head)]


def _one(view, linears: list, head: str) -> str:
    found = [p for p in linears if p == head or fnmatch.fnmatchcase(p, head)]
    if len(found) != 1:
        raise XFreezeError(
            f"replace_head head={head!r} matched {len(found) or 'no'} linear layers in {view.label}"
            f"{': ' + ', '.join(found) if found else ''}. "
            f"Pass head=NAME, one of the linear layers: {_describe(view, linears)}"
        )
    return found[0]


def _auto(view, linears: list) -> tuple[list[str], bool]:
    """(heads, ambiguous): the primary head (+ numbered siblings) and the extra class-logit heads."""
    extra = [p for p in linears if any(c in EXTRA_HEADS for c in p.split("."))]
    plain = [p for p in linears if p not in extra]
    blocks = _primary(view, plain, [n for n in HEAD_NAMES if n not in _FALLBACK]) or _primary(view, plain, _FALLBACK)
    if not blocks:
        return (plain[:1] if len(linears) == 1 else []), False
    if len(blocks) > 1:
        return [b[-1] for b in blocks], True
    primary = blocks[0]
    outputs = _out(view, primary[-1])
    last: dict = {}
    for p in extra:
        parts = p.split(".")
        cut = max(i for i, c in enumerate(parts) if c in EXTRA_HEADS)
        last[".".join(parts[: cut + 1])] = p  # the last linear layer of each extra block
    heads = primary + [p for p in last.values() if _out(view, p) == outputs]
    return sorted(set(heads), key=view.module_index.__getitem__), False


def _conv_classifier(view) -> list[str]:
    """The last 1x1 convolution, when its outputs are the model's ``num_classes`` (a conv classifier)."""
    classes = getattr(view.inner, "num_classes", None)
    convs = [p for p, m, k in zip(view.paths, view.modules, view.kinds) if p and k == "conv"]
    if not convs or not isinstance(classes, int):
        return []
    features = view.adapter.conv_head_features(view.modules[view.module_index[convs[-1]]])
    return [convs[-1]] if features is not None and features[1] == classes else []


def _primary(view, linears: list, names) -> list[list[str]]:
    """Per head name found: its output layer (the block's last linear) and numbered siblings of the same size."""
    found = []
    for name in names:
        inside = [p for p in linears if p == name or p.startswith(name + ".")]
        if not inside:
            continue
        last = inside[-1]
        parent, _, leaf = last.rpartition(".")
        siblings = [
            p
            for p in inside[:-1]
            if leaf.isdigit()
            and p.rpartition(".")[0] == parent
            and p.rpartition(".")[2].isdigit()
            and _out(view, p) == _out(view, last)
        ]
        found.append(siblings + [last])
    return found


def _out(view, path: str) -> int:
    return view.adapter.linear_features(view.modules[view.module_index[path]])[1]


def _describe(view, linears: list) -> str:
    if not linears:
        return "(the model has none)"
    parts = []
    for path in linears[-12:]:
        in_f, out_f, _ = view.adapter.linear_features(view.modules[view.module_index[path]])
        parts.append(f"{path} ({in_f}->{out_f})")
    return ("... " if len(linears) > 12 else "") + ", ".join(parts)

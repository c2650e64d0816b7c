"""replace_head: find the classifier of a vision or text model and put a new trainable linear layer there."""
from __future__ import annotations

import fnmatch
import numbers

from . import _select
from ._backend import adapter_for
from ._errors import XFreezeError, check_choice

# Where classifiers live: torchvision / paddle.vision ResNet (fc), VGG and MobileNet (classifier.N), ViT (heads.head),
# timm (head, head.fc), transformers / PaddleNLP ...ForSequenceClassification (classifier).
HEAD_NAMES = ("fc", "classifier", "heads", "head", "last_linear")
INITS = ("xavier_uniform", "xavier_normal", "kaiming_uniform", "normal", "zeros", "default")


def replace_head(model, num_classes: int, *, head: str = "auto", init: str = "xavier_uniform",
                 backend: str | None = None):
    """Swap the final classifier for a new trainable linear layer with ``num_classes`` outputs.

    The new layer keeps the old one's input size, bias setting, device and dtype.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        num_classes: outputs of the new layer (>= 1).
        head: ``"auto"``, or the module name (or a glob pattern matching exactly one linear layer).
        init: weight init: one of ``INITS``; biases start at zero (``"default"`` keeps the framework's own).
        backend: force ``"torch"`` or ``"paddle"``.

    Returns:
        The new linear layer (``torch.nn.Linear`` / ``paddle.nn.Linear``), already placed in the model.

    Raises:
        XFreezeError: bad ``num_classes`` or ``init``, or the head cannot be found (the message lists the
            candidate linear layers). The model is unchanged then.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1000))
        >>> xfreeze.replace_head(model, 10, head="2").out_features
        10
    """
    adapter = adapter_for(model, backend)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise XFreezeError(f"num_classes must be an integer >= 1. Received: num_classes={num_classes!r}")
    check_choice("init", init, INITS)
    path = find_head(adapter, model, head)
    modules = dict(adapter.named_modules(model))
    new = adapter.new_linear(modules[path], int(num_classes), init)
    parent, _, attr = path.rpartition(".")
    setattr(modules[parent], attr, new)
    return new


def find_head(adapter, model, head: str = "auto") -> str:
    """The dotted name of the classifier layer ``replace_head`` would replace."""
    linears = [(p, m) for p, m in adapter.named_modules(model) if p and adapter.module_kind(m) == "linear"]
    if head == "auto":
        found = _auto(adapter, model, linears)
        what = "found no classification head" if not found else "is ambiguous (head='auto')"
    else:
        if not isinstance(head, str) or not head:
            raise XFreezeError(f"head must be 'auto' or a module name. Received: head={head!r}")
        found = [p for p, _ in linears if p == head or fnmatch.fnmatchcase(p, head)]
        what = f"head={head!r} matched {len(found) or 'no'} linear layers"
    if len(found) != 1:
        candidates = f": {', '.join(map(repr, found))} could each be the head" if found else ""
        raise XFreezeError(f"replace_head {what} in {_select.model_name(adapter, model)}{candidates}. "
                           f"Pass head=NAME, one of the linear layers: {_describe(adapter, linears)}")
    return found[0]


def _auto(adapter, model, linears) -> list[str]:
    found = []
    for name in HEAD_NAMES:
        inside = [p for p, _ in linears if p == name or p.startswith(name + ".")]
        if inside:
            found.append(inside[-1])  # the last linear layer of a classifier block is the output layer
    return found


def _describe(adapter, linears) -> str:
    if not linears:
        return "(the model has none)"
    parts = []
    for path, module in linears[-12:]:
        in_f, out_f, _ = adapter.linear_features(module)
        parts.append(f"{path} ({in_f}->{out_f})")
    return ("... " if len(linears) > 12 else "") + ", ".join(parts)

"""replace_head: find the classifier of a vision or text model and put a new trainable linear layer there.

How ``head="auto"`` decides (reads only the model view):
  1. The output layer of a block with a known head name (``HEAD_NAMES``; the last linear layer of the block, and
     its numbered siblings with the same output size: crossvit's ``head.0`` / ``head.1``). ``sequence_summary`` is
     used only when no other name is found (XLNet's summary feeds ``logits_proj``).
  2. The other heads that also produce class logits (``EXTRA_HEADS``: distillation heads of DeiT / LeViT /
     EfficientFormer / RepViT / PiT / SwiftFormer, VOLO's ``aux_head``, GoogLeNet and InceptionV3 auxiliary
     classifiers): the last linear layer of each such block with the primary head's output size. ``auto``
     replaces **all** of them and warns which; replacing one would leave the model failing on its first forward.
  3. Else a model with exactly one linear layer uses it, when it is the model's last layer (below).
  4. Else a model with no linear layer whose last 1x1 convolution outputs the model's ``num_classes`` (a conv
     classifier: SqueezeNet's ``classifier.1`` / paddle.vision's ``_conv9``) gets a new 1x1 convolution there,
     when it is the model's last layer.
Linear-kind modules that are not one plain Linear (``Conv1D``, ``Linear3D``, ``MultiheadAttention``) are never heads.

"The model's last layer" is read from the view's module order (registration order: ``__init__`` order), not from
a forward pass, which xfreeze never runs: a layer is last when no module with parameters or norm statistics is
registered after it. An autoencoder's Linear bottleneck, followed by its decoder, is therefore refused (with a
``HINT:`` to name it); so is a head that a model registers before its body, which ``head=NAME`` takes as it is.

``head=NAME`` takes any plain Linear or 1x1, ungrouped 2-D convolution (a segmentation classifier such as
torchvision FCN's ``classifier.4``), by exact name or glob pattern.
"""

from __future__ import annotations

import difflib
import fnmatch
import numbers
import warnings

from .adapters import adapted
from .view import invalidate, view_of
from ..backends.kinds import replaceable_linear
from ..core.errors import XFreezeError, check_choice
from ..core.table import human_bytes

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
# Bounds on num_classes, checked before anything is allocated. Paddle keeps shape dimensions as int32 (a larger one
# raises a raw IndexError, or SystemError past int64), and 16 GiB is past any real classifier: a 256k-token LM head
# of width 16384 in float32. Above them the allocation fails (or the OS kills the process) half-way.
MAX_CLASSES = 2**31 - 1
MAX_HEAD_BYTES = 2**34


def replace_head(model, num_classes: int, *, head="auto", init: str = "xavier_uniform", backend: str | None = None):
    """Swap the final classifier (every class-logit head) for a new trainable layer with ``num_classes`` outputs.

    A Linear head gets a new Linear, a 1x1-convolution head (SqueezeNet, a segmentation classifier named with
    ``head=``) a new 1x1 convolution. Each new layer keeps the old one's input size, bias setting, device and dtype,
    and is trainable (also in a frozen model). The label count of the model's config follows (transformers
    ``config.num_labels`` / ``id2label`` / ``label2id``, PaddleNLP ``num_classes``) so ``model(..., labels=y)``
    works. Every argument is checked and every new layer built before the first one is put in place.

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer``.
        num_classes: outputs of the new layer: an int from 1 to ``MAX_CLASSES``, the new layer at most
            ``MAX_HEAD_BYTES`` bytes.
        head: ``"auto"``; a module name or a glob pattern matching exactly one plain Linear or 1x1 convolution;
            or a list of them (one layer each). ``auto`` replaces all heads producing class logits of two-headed
            models (a classifier plus a distillation or auxiliary head) and warns naming them; it refuses a lone
            Linear that is not the model's last layer (an autoencoder's bottleneck: see the module docstring).
        init: weight init: one of ``INITS``; biases start at zero (``"default"`` keeps the framework's own).
        backend: force ``"torch"`` or ``"paddle"``.

    Returns:
        The new layer when one head was replaced; a list of the new layers, in model order, when several were
        (``head=[...]`` with several names, or a two-headed model under ``auto``).

    Raises:
        XFreezeError: bad ``num_classes`` (not an int, < 1, or a layer too large to build), ``init`` or ``head``
            (the message lists the candidate layers and close names), the head cannot be found, or the model holds
            adapters (PEFT, PaddleFormers ``LoRAModel``: replace the head before wrapping). The model is unchanged
            then.

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1000))
        >>> xfreeze.replace_head(model, 10, head="2").out_features
        10
    """
    view = view_of(model, backend)
    if adapted(view):  # PEFT / LoRAModel wrap layers at get_peft_model time: a new head after it is never trained
        raise XFreezeError(
            f"replace_head on {view.label}, a model with adapters: replace the head before get_peft_model / "
            "LoRAModel, or list it in modules_to_save (PaddleFormers: trainable_modules); nothing was changed"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise XFreezeError(f"num_classes must be an integer >= 1. Received: num_classes={num_classes!r}")
    check_choice("init", init, INITS)
    paths = find_heads(view, head)
    classes = int(num_classes)
    for path in paths:
        _check_size(view, path, classes)
    if head == "auto" and len(paths) > 1:
        warnings.warn(
            f"replace_head replaced {len(paths)} class-logit heads of {view.label}: {', '.join(paths)} "
            f"(a classifier plus distillation/auxiliary heads; all must change size together).\n"
            f"HINT: pass head=NAME or head=[NAMES] to choose explicitly.",
            UserWarning,
            stacklevel=2,
        )
    new = [_new_layer(view, path, classes, init) for path in paths]  # all built before any is put in place
    for path, layer in zip(paths, new):
        parent, _, attr = path.rpartition(".")
        setattr(view.modules[view.module_index[parent]], attr, layer)
    view.adapter.update_label_count(view.inner, classes)
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
            f"replace_head {what} in {view.label}{candidates}. Pass head=NAME, one of the {_listing(view, linears)}"
        )
    if not isinstance(head, str) or not head:
        raise XFreezeError(f"head must be 'auto', a module name or a list of module names. Received: head={head!r}")
    return [_one(view, linears, head)]


def _one(view, linears: list, head: str) -> str:
    """The one plain Linear or 1x1 convolution ``head`` names (exactly, or as a glob pattern)."""
    candidates = sorted(set(linears) | set(_conv_heads(view)), key=view.module_index.__getitem__)
    if head in candidates:
        return head
    found = [p for p in candidates if fnmatch.fnmatchcase(p, head)]
    if len(found) == 1:
        return found[0]
    if found:
        raise XFreezeError(
            f"replace_head head={head!r} matched {len(found)} linear layers or 1x1 convolutions in {view.label}: "
            f"{_describe(view, found)}. Pass head=NAME naming one of them, or head=[NAMES] to replace several"
        )
    raise XFreezeError(
        f"replace_head head={head!r} matched no linear layers or 1x1 convolutions in {view.label}"
        f"{_not_a_head(view, head, candidates)}. Pass head=NAME, one of the {_listing(view, linears)}"
    )


def _not_a_head(view, head: str, candidates: list) -> str:
    """Why ``head`` matched nothing: the module it names is no head (and which layers inside it are), or close
    names."""
    index = view.module_index.get(head)
    if index is not None:
        inside = [p for p in candidates if p.startswith(head + ".")]
        within = f"; inside it: {_describe(view, inside)}" if inside else ""
        return f": {head!r} is a {type(view.modules[index]).__name__}, not a Linear or a 1x1 convolution{within}"
    close = difflib.get_close_matches(head, candidates, n=3, cutoff=0.7)
    close = close or difflib.get_close_matches(head, [p for p in view.paths if p], n=3, cutoff=0.7)
    return f" (no module is named {head!r}; did you mean {' or '.join(map(repr, close))}?)" if close else ""


def _auto(view, linears: list) -> tuple[list[str], bool]:
    """(heads, ambiguous): the primary head (+ numbered siblings) and the extra class-logit heads."""
    extra = [p for p in linears if any(c in EXTRA_HEADS for c in p.split("."))]
    plain = [p for p in linears if p not in extra]
    blocks = _primary(view, plain, [n for n in HEAD_NAMES if n not in _FALLBACK]) or _primary(view, plain, _FALLBACK)
    if not blocks:
        if len(linears) == 1 and plain:
            _check_last(view, plain[0], "the only linear layer")
            return plain, False
        return [], False
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
    convs = [p for p, k in zip(view.paths, view.kinds) if p and k == "conv"]
    if not convs or not isinstance(classes, int):
        return []
    features = view.adapter.conv_head_features(view.modules[view.module_index[convs[-1]]])
    if features is None or features[1] != classes:
        return []
    _check_last(view, convs[-1], f"the last convolution, with num_classes={classes} outputs,")
    return [convs[-1]]


def _check_last(view, path: str, what: str) -> None:
    """Refuse an ``auto`` head that layers with parameters follow in registration order (no forward is run)."""
    index = view.module_index[path]
    owners = {mi for mi, _, _ in view.registered} | set(view.stat_owner)
    after = [p for i, p in enumerate(view.paths) if i > index and i in owners and not p.startswith(path + ".")]
    if not after:
        return
    shown = ", ".join(f"{p} ({type(view.modules[view.module_index[p]]).__name__})" for p in after[:3])
    more = f" and {len(after) - 3} more" if len(after) > 3 else ""
    raise XFreezeError(
        f"replace_head (head='auto') will not replace {path!r} ({_features(view, path)}), {what} of "
        f"{view.label}: layers with parameters come after it ({shown}{more}), so it looks like a bottleneck or a "
        f"hidden layer, not the classifier, and replacing it would break the model's next forward. The order is "
        f"the model's registration order (xfreeze runs no forward).\n"
        f"HINT: pass head={path!r} if it really is the classifier (a model that registers its head before its "
        f"body), or head=NAME for another layer."
    )


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


def _conv_heads(view) -> list[str]:
    """The 1x1, ungrouped 2-D convolutions (heads ``head=NAME`` may name), in model order."""
    conv_head = view.adapter.conv_head_features
    return [p for p, m, k in zip(view.paths, view.modules, view.kinds) if p and k == "conv" and conv_head(m)]


def _is_conv(view, path: str) -> bool:
    index = view.module_index[path]
    return view.kinds[index] == "conv" and view.adapter.conv_head_features(view.modules[index]) is not None


def _in_out(view, path: str) -> tuple[int, int]:
    module = view.modules[view.module_index[path]]
    if _is_conv(view, path):
        return view.adapter.conv_head_features(module)
    return view.adapter.linear_features(module)[:2]


def _out(view, path: str) -> int:
    return _in_out(view, path)[1]


def _features(view, path: str) -> str:
    in_f, out_f = _in_out(view, path)
    return f"1x1 conv {in_f}->{out_f}" if _is_conv(view, path) else f"{in_f}->{out_f}"


def _describe(view, paths: list) -> str:
    if not paths:
        return "(the model has none)"
    shown = ", ".join(f"{p} ({_features(view, p)})" for p in paths[-12:])
    return ("... " if len(paths) > 12 else "") + shown


def _listing(view, linears: list) -> str:
    """The layers an error offers for ``head=``: the linear layers, or the 1x1 convolutions of a model with none."""
    convs = [] if linears else _conv_heads(view)
    if convs:
        return f"1x1 convolutions: {_describe(view, convs)}"
    return f"linear layers: {_describe(view, linears)}"


def _check_size(view, path: str, classes: int) -> None:
    """Refuse a new head too large to build, before anything is allocated: bytes per class are the old head's
    bytes (every tensor it registers, tied ones too) over its outputs."""
    index = view.module_index[path]
    in_f, out_f = _in_out(view, path)
    adapter = view.adapter
    own = sum(adapter.nbytes(t) for mi, _, t in view.registered if mi == index)
    per_class = -(-own // max(out_f, 1))
    need = per_class * classes
    if classes <= MAX_CLASSES and need <= MAX_HEAD_BYTES:
        return
    raise XFreezeError(
        f"num_classes={classes} is too large for head {path!r} of {view.label} ({in_f} in-features, "
        f"{per_class} bytes per class): the new layer would need {need:,} bytes ({human_bytes(need)}). replace_head "
        f"builds at most {MAX_CLASSES:,} classes and {MAX_HEAD_BYTES:,} bytes ({human_bytes(MAX_HEAD_BYTES)}) "
        f"per head. Received: num_classes={classes}"
    )


def _new_layer(view, path: str, classes: int, init: str):
    """A new head like the one at ``path``; an allocation the device refuses is an XFreezeError."""
    old = view.modules[view.module_index[path]]
    build = view.adapter.new_conv_head if _is_conv(view, path) else view.adapter.new_linear
    try:
        return build(old, classes, init)
    except (MemoryError, RuntimeError) as error:  # torch: RuntimeError / OutOfMemoryError; Paddle: MemoryError
        raise XFreezeError(
            f"replace_head could not build the new head {path!r} of {view.label} with num_classes={classes} "
            f"({_features(view, path)} today): {type(error).__name__}: {str(error).splitlines()[0][:200]}. "
            f"The model is unchanged."
        ) from error

"""torch <-> Paddle weight conversion: generic layer rules plus architecture name maps.

Generic rules (every architecture):
  * Linear weights are [out, in] in torch and [in, out] in Paddle: transposed. Embedding and Conv weights share a
    layout and are NOT transposed (a popular converter transposes every 2-D weight and breaks embeddings).
  * BatchNorm statistics: ``running_mean``/``running_var`` <-> ``_mean``/``_variance``; torch's
    ``num_batches_tracked`` has no Paddle counterpart and is dropped (noted).
  * Embedding ``padding_idx``: Paddle forces that row's output to zero, torch returns the stored row. Converting to
    torch, a non-zero padding row is zeroed so torch outputs what Paddle did; converting to Paddle, a non-zero row
    is reported (Paddle will output zeros there).
Which weights are Linear is decided from the target model's own modules when it is given; without one, 2-D
``*.weight`` tensors are transposed unless their module name says embedding (reported as a guess).

Architecture maps: torchvision ResNet <-> paddle.vision ResNet share names; transformers ``ErnieModel`` (torch) <->
PaddleNLP ``ErnieModel`` (Paddle) need the ``ERNIE`` map below. The map is chosen by how many of the target model's
names it produces (or by ``arch=``).
"""
from __future__ import annotations

import re

import numpy as np

from ._backend import adapter_for
from ._checkpoint import StateDict, as_state_dict, to_numpy
from ._errors import check_choice

# (torch fragment, Paddle fragment); {i} is a layer number. Applied anywhere in a key (after "ernie." etc.).
ARCH_MAPS = {
    "resnet": [],
    "ernie": [
        ("embeddings.LayerNorm.", "embeddings.layer_norm."),
        ("encoder.layer.{i}.attention.self.query.", "encoder.layers.{i}.self_attn.q_proj."),
        ("encoder.layer.{i}.attention.self.key.", "encoder.layers.{i}.self_attn.k_proj."),
        ("encoder.layer.{i}.attention.self.value.", "encoder.layers.{i}.self_attn.v_proj."),
        ("encoder.layer.{i}.attention.output.dense.", "encoder.layers.{i}.self_attn.out_proj."),
        ("encoder.layer.{i}.attention.output.LayerNorm.", "encoder.layers.{i}.norm1."),
        ("encoder.layer.{i}.intermediate.dense.", "encoder.layers.{i}.linear1."),
        ("encoder.layer.{i}.output.dense.", "encoder.layers.{i}.linear2."),
        ("encoder.layer.{i}.output.LayerNorm.", "encoder.layers.{i}.norm2."),
    ],
}
_STATS = {"torch": ("running_mean", "running_var"), "paddle": ("_mean", "_variance")}
_LEGACY_NORM = {"gamma": "weight", "beta": "bias"}  # TF-era BERT checkpoints name LayerNorm parameters so


def convert(state, to: str, model=None, *, arch: str | None = None) -> StateDict:
    """Convert a state dict between torch and Paddle names and layouts.

    Args:
        state: ``{name: tensor or array}`` of the other framework (a :class:`StateDict` from
            :func:`load_checkpoint`, a model's ``state_dict()``, or plain numpy arrays).
        to: ``"paddle"`` or ``"torch"``.
        model: the target model; when given, layouts are decided from its modules and every key it cannot place is
            listed in ``result.unplaced``.
        arch: ``"resnet"`` or ``"ernie"`` to force a name map (default: the one that places the most keys).

    Returns:
        StateDict: numpy arrays under the target framework's names (arrays that need no change are shared, not
        copied), with ``notes`` saying what was renamed, transposed, dropped or zeroed, and ``unplaced``.

    Raises:
        XFreezeError: ``to`` or ``arch`` unknown, or non-tensor values.

    Example:
        >>> import numpy as np, xfreeze
        >>> out = xfreeze.convert({"fc.weight": np.zeros((10, 512), "float32")}, to="paddle")
        >>> out["fc.weight"].shape
        (512, 10)
    """
    check_choice("to", to, ("torch", "paddle"))
    if arch is not None:
        check_choice("arch", arch, tuple(ARCH_MAPS))
    state = state if isinstance(state, StateDict) else as_state_dict(dict(state))
    source = "torch" if to == "paddle" else "paddle"
    targets = _target_info(model) if model is not None else None
    names = {key: _rename(key, source, to, arch or _best_arch(state, source, to, targets)) for key in state}
    out = StateDict(framework=to, format=state.format, notes=list(state.notes))
    for key, value in state.items():
        new = names[key]
        if new is None:
            out.notes.append((key, "dropped: no counterpart in " + to))
            continue
        if new != key:
            out.notes.append((key, f"renamed to {new}"))
        out[new] = _convert_value(key, new, to_numpy(value, key), to, targets, out.notes)
    out.unplaced = sorted(set(out) - set(targets)) if targets is not None else []
    for key in out.unplaced:
        out.notes.append((key, "not placed: the target model has no such key"))
    return out


def _rename(key: str, source: str, to: str, arch: str) -> str | None:
    head, _, leaf = key.rpartition(".")
    if source == "torch" and leaf == "num_batches_tracked":
        return None
    if source == "torch" and leaf in _LEGACY_NORM and "LayerNorm" in head:
        leaf = _LEGACY_NORM[leaf]
    if leaf in _STATS[source]:
        leaf = _STATS[to][_STATS[source].index(leaf)]
    name = f"{head}.{leaf}" if head else leaf
    for pattern, replacement in _compiled(arch, source):
        name, count = pattern.subn(replacement, name, count=1)
        if count:
            break
    return name


def _compiled(arch: str, source: str):
    rules = []
    for torch_side, paddle_side in ARCH_MAPS[arch]:
        src, dst = (torch_side, paddle_side) if source == "torch" else (paddle_side, torch_side)
        pattern = "(^|\\.)" + re.escape(src).replace(re.escape("{i}"), "(\\d+)")
        rules.append((re.compile(pattern), "\\g<1>" + dst.replace("{i}", "\\g<2>")))
    return rules


def _best_arch(state, source, to, targets) -> str:
    def placed(arch):
        names = {_rename(k, source, to, arch) for k in state}
        if targets is not None:
            return len(names & set(targets))
        return sum(1 for k in state if _rename(k, source, to, arch) != _rename(k, source, to, "resnet"))
    return max(ARCH_MAPS, key=lambda arch: (placed(arch), arch == "resnet"))


def _convert_value(key, new, array: np.ndarray, to, targets, notes) -> np.ndarray:
    if targets is not None:
        kind, padding_idx = targets.get(new, (None, None))
        transpose = kind == "linear" and array.ndim == 2 and new.endswith("weight")
    else:
        kind, padding_idx = None, None
        owner = new.rpartition(".")[0].lower()
        transpose = array.ndim == 2 and new.endswith(".weight") and "embed" not in owner
        if transpose:
            notes.append((key, "transposed as a Linear weight (a guess from its name: pass model= to be sure)"))
    if transpose:
        array = np.ascontiguousarray(array.T)
        if targets is not None:
            notes.append((key, "transposed (Linear)"))
    if kind == "embedding" and padding_idx is not None and np.any(array[padding_idx] != 0):
        if to == "torch":
            array = array.copy()
            array[padding_idx] = 0
            notes.append((key, f"padding row {padding_idx} zeroed: Paddle output zeros there, torch returns the row"))
        else:
            notes.append((key, f"padding row {padding_idx} is non-zero: Paddle will output zeros there, torch "
                               "returned the row"))
    return array


def _target_info(model) -> dict:
    """Target key -> (module kind, embedding padding index) from the model's own modules."""
    adapter = adapter_for(model)
    info = {}
    for path, module in adapter.named_modules(model):
        kind, padding = adapter.module_kind(module), adapter.padding_idx(module)
        for local, _ in adapter.direct_parameters(module):
            info[f"{path}.{local}" if path else local] = (kind, padding)
    for name in adapter.state_arrays(model):
        info.setdefault(name, (None, None))
    return info



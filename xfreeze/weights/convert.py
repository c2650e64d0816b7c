"""Weight conversion between frameworks: names and layouts go through one neutral naming.

Each framework describes itself once against the neutral (torch-ecosystem) naming, in its adapter's
``backends/<framework>_names.py`` (:class:`xfreeze.backends.naming.Naming`): statistic names, the Linear weight
layout, what an Embedding does with its padding row, state it alone keeps, and architecture name maps. Converting
from A to B is A -> neutral -> B, so a third framework needs one description, not one map per pair.

Generic rules, from those descriptions:
  * Linear weights are transposed when the two layouts differ; Embedding and Conv weights never are (a popular
    converter transposes every 2-D weight and breaks embeddings). Which weights are Linear is decided from the
    target model's own modules when it is given; without one, 2-D ``*.weight`` tensors outside embeddings are
    transposed and each such case is reported as a guess.
  * Statistic names map through the neutral ones; state only one framework keeps is dropped (noted).
  * Embedding ``padding_idx``: Paddle forces that row's output to zero, torch returns the stored row. Converting to
    torch, a non-zero padding row is zeroed so torch outputs what Paddle did; converting to Paddle it is reported.
Values stay native tensors (a torch tensor becomes a Paddle tensor bit for bit, bf16 included); the architecture
map is the one that places the most keys (or ``arch=``), chosen once per call. ``arch`` is spelled as the command
line's ``--arch``: a model name of the target's zoo (then the state must fit that model) or a name map.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache

import numpy as np

from ..backends import ADAPTERS
from ..backends.kinds import adapter_leaf, weight_layout
from ..backends.naming import Naming, naming
from ..core import tensors as _tensors
from ..core.dispatch import adapter_named, installed
from ..core.errors import XFreezeError, check_choice
from ..model.view import view_of
from . import fusion as _fusion
from .statedict import StateDict, as_state_dict, guess_framework

FRAMEWORKS = tuple(ADAPTERS)


def convert(
    state,
    to: str,
    model=None,
    *,
    arch: str | None = None,
    source: str | None = None,
    allow_partial: bool = False,
) -> StateDict:
    """Convert a state dict between frameworks' names and layouts.

    Args:
        state: ``{name: tensor or array}`` of another framework (a :class:`StateDict` from
            :func:`load_checkpoint`, a ``state_dict()``, or plain numpy arrays).
        to: the target framework, ``"torch"`` or ``"paddle"``.
        model: the target model (optional but recommended): layouts are then decided from its own modules and
            keys it cannot place are listed in ``result.unplaced``.
        arch: what ``state`` is, spelled as on the command line (``xfreeze convert --arch``): a model name of the
            target framework's zoo (``"resnet50"``: torchvision, or timm, for torch; paddle.vision for Paddle), built
            with random weights to decide the layouts, and the state must fit it (by names and shapes; refused
            otherwise, unless ``allow_partial``); or a name map of :func:`convert_archs` (``"resnet"``, ``"llama"``:
            PaddleNLP's, ``"paddleformers"``, ``"ernie4_5"``: PaddleFormers' fused layers, ``"ernie"``), which only
            forces the renaming. Default: the name map that places most keys (fused layers split and joined; their
            numbers of heads come from ``model``'s config, or from the ``config.json`` of the folder ``state`` was
            read from).
        source: the framework ``state`` comes from, when neither its ``framework`` attribute nor its keys tell.
        allow_partial: with ``arch`` naming a model, convert a state that does not fit it (fewer than half of its
            tensors place, or fewer than half of the model's keys are filled) instead of refusing it.

    Returns:
        StateDict: converted tensors (the target framework's own when it is installed, dtypes kept bit for bit),
        with ``framework=to`` and ``notes`` saying what was renamed, transposed, dropped, zeroed or of another
        shape than ``arch``'s.

    Raises:
        XFreezeError: an unknown ``to``/``arch``/``source`` (with the closest names), ``arch`` and ``model`` both
            naming a model, a state that does not fit ``arch``, a state whose framework cannot be told, non-tensor
            values, or a dtype the target framework cannot hold (named).

    Example:
        >>> import torch, xfreeze
        >>> out = xfreeze.convert({"fc.weight": torch.zeros(10, 512)}, to="paddle")
        >>> tuple(out["fc.weight"].shape)
        (512, 10)
    """
    check_choice("to", to, FRAMEWORKS)
    if not isinstance(allow_partial, bool):
        raise XFreezeError(f"allow_partial must be True or False. Received: allow_partial={allow_partial!r}")
    name_map, named = _resolve_arch(arch, to, model)
    model = named if named is not None else model
    state = state if isinstance(state, StateDict) else as_state_dict(dict(state))
    origin = _source_framework(state, to, source)
    src, dst = naming(origin), naming(to)
    targets = _target_info(model) if model is not None else None
    chosen = name_map or _best_arch(list(state), src, dst, targets)
    # fused layers (one framework's qkv_proj, the other's q/k/v_proj) split first: their numbers of heads come from the
    # model's config, else the config.json of the folder the state was read from
    heads, why = _fusion.heads_for(model, state.config, state.config_from)
    state = _fusion.split(state, src, chosen, heads, lambda k: _fusion.out_axis(src, chosen, k), why)
    placing = _fusion.with_parts(targets, dst, chosen) if targets is not None else None
    names = {key: rename(key, src, dst, chosen) for key in state}
    folded = {_fusion.fused_name(n, dst, chosen) for n in names.values() if n}
    if model is not None and name_map is None and not set(targets or ()) <= folded:
        names, chosen = _aligned(state, names, src, dst, model) or (names, chosen)
    out = StateDict(framework=to, format=state.format, notes=list(state.notes))
    rules = (
        _value_rules(src, list(state)),
        _value_rules(dst, list(targets) if targets is not None else [n for n in names.values() if n]),
    )
    out.differences = _differences(src, list(state)) + _differences(
        dst, list(targets) if targets is not None else [n for n in names.values() if n]
    )
    out.notes += [("", f"architectures differ: {text}") for text in out.differences]
    keep_native = installed(to)
    for key, value in state.items():
        new = names[key]
        if new is None:
            out.notes.append((key, f"dropped: no counterpart in {to}"))
            continue
        if new != key:
            out.notes.append((key, f"renamed to {new}"))
        value = _tensors.to_backend(value, to, key) if keep_native else value
        value = _convert_value(key, new, value, (src, dst, chosen), placing, out.notes)
        out[new] = _revalue(key, new, value, rules, out.notes)
    _fusion.join(out, dst, chosen, heads, lambda k: _fusion.out_axis(dst, chosen, k, placing), why)
    out.arch = chosen
    out.unplaced = sorted(set(out) - set(targets)) if targets is not None else []
    for key in out.unplaced:
        out.notes.append((key, "not placed: the target model has no such key"))
    if named is not None:
        check_fit(out, named, str(arch), allow_partial=allow_partial)
    return out


def convert_archs() -> tuple:
    """The name maps :func:`convert` knows, for ``arch=``: every architecture map some framework describes
    (``"resnet"`` is the plain one: the same names in both frameworks). ``arch=`` also takes any model name of the
    target framework's zoo (``"resnet50"``), as ``xfreeze convert --arch`` does.

    Returns:
        tuple: the map names, sorted.

    Example:
        >>> import xfreeze
        >>> xfreeze.convert_archs()
        ('ernie', 'ernie4_5', 'llama', 'paddleformers', 'resnet')
    """
    names = {"resnet"}
    for framework in FRAMEWORKS:
        names |= set(naming(framework).arch_maps)
    return tuple(sorted(names))


def _resolve_arch(arch, to: str, model) -> tuple:
    """(name map or None, model built from ``arch`` or None): ``arch`` is a name map or a model name of ``to``."""
    if arch is None:
        return None, None
    if not isinstance(arch, str):
        raise XFreezeError(f"arch must be a model or name-map name (a str). Received: arch={arch!r}")
    if arch in convert_archs():
        return arch, None
    adapter = adapter_named(to)
    built = adapter.build_named_model(arch)
    if built is None:
        names = list(dict.fromkeys([*convert_archs(), *adapter.model_names()]))  # torchvision and timm share names
        close = difflib.get_close_matches(arch, names, n=3, cutoff=0.6)
        raise XFreezeError(
            f"unknown arch={arch!r} for {to}: neither {adapter.model_zoo} nor a name map of convert_archs() "
            f"{convert_archs()}" + (f". Did you mean {' or '.join(map(repr, close))}?" if close else ".")
        )
    if model is not None:
        raise XFreezeError(
            f"arch={arch!r} names a model and model= gives one: pass one of them (or a name map as arch, "
            f"one of {convert_archs()})"
        )
    return None, built


def check_fit(out: StateDict, model, arch: str, *, allow_partial: bool = False) -> None:
    """Refuse a converted state that is not ``arch`` (``model``): fewer than half of its tensors place in the model
    by name and shape, or fewer than half of the model's keys are filled. Shape differences are added to the notes.

    Args:
        out: what :func:`convert` returned for ``model``.
        model: the model of that architecture.
        arch: how the user named it (for the message).
        allow_partial: only note the differences, never refuse.

    Raises:
        XFreezeError: the state does not fit, naming how much placed and the first differences.
    """
    view = view_of(model)
    shapes = dict(zip(view.names, view.shapes))
    shapes.update((k, tuple(_tensors.shape_of(t))) for k, t in zip(view.stat_keys, view.stat_tensors))
    targets = [key for key in view.key_info() if key in shapes]
    other = [(k, tuple(_tensors.shape_of(v)), tuple(shapes[k])) for k, v in out.items() if k in shapes]
    other = [(k, have, want) for k, have, want in other if have != want]
    for key, have, want in other:
        out.notes.append((key, f"shape {list(have)} differs from {arch}'s {list(want)}"))
    placed = sum(1 for k in out if k in shapes) - len(other)
    if allow_partial or (2 * placed >= len(targets) and 2 * placed >= len(out)):
        return
    examples = [f"{k!r} is {list(have)} where {arch} has {list(want)}" for k, have, want in other[:2]]
    examples += [f"{arch} has no {k!r}" for k in sorted(set(out) - set(shapes))[:2]]
    raise XFreezeError(
        f"the {len(out)} tensors do not fit arch={arch!r} ({view.label}): {placed} of them place in its "
        f"{len(targets)} keys by name and shape ({len(other)} of another shape, "
        f"{len(set(out) - set(shapes))} names it lacks; e.g. {'; '.join(examples) or 'nothing placed'}). "
        "Is the file another architecture? Name the right arch, or pass allow_partial=True "
        "(xfreeze convert --allow-partial) to convert it anyway"
    )


def rename(key: str, src: Naming, dst: Naming, arch: str) -> str | None:
    """``key`` of ``src``'s naming in ``dst``'s, through the neutral naming; None when ``dst`` has no counterpart."""
    head, _, leaf = key.rpartition(".")
    if leaf in src.own_only_leaves and src is not dst:
        return None
    if leaf in src.leaf_aliases and any(m in head for m in src.alias_modules):
        leaf = src.leaf_aliases[leaf]
    leaf = _stat_to_neutral(src).get(leaf, leaf)
    leaf = dst.stat_names.get(leaf, leaf)
    name = f"{head}.{leaf}" if head else leaf
    name = _apply(_rules(src.framework, arch, to_neutral=True), name)
    return _apply(_rules(dst.framework, arch, to_neutral=False), name)


def _source_framework(state: StateDict, to: str, source) -> str:
    if source is not None:
        check_choice("source", source, FRAMEWORKS)
        return source
    origin = state.framework or guess_framework(state)
    if origin is None:
        others = [fw for fw in FRAMEWORKS if fw != to]
        if len(others) == 1:
            return others[0]
        raise XFreezeError(f"cannot tell which framework the state dict comes from; pass source=one of {others}")
    return origin


@lru_cache(maxsize=None)
def _stat_to_neutral_of(framework: str) -> dict:
    return {native: neutral for neutral, native in naming(framework).stat_names.items()}


def _stat_to_neutral(src: Naming) -> dict:
    return _stat_to_neutral_of(src.framework)


@lru_cache(maxsize=None)
def _rules(framework: str, arch: str, to_neutral: bool) -> tuple:
    """Compiled (pattern, replacement) rules of one framework's map for ``arch``, in one direction."""
    rules = []
    for neutral, native in naming(framework).arch_maps.get(arch, ()):
        src, dst = (native, neutral) if to_neutral else (neutral, native)
        pattern = "(^|\\.)" + re.escape(src).replace(re.escape("{i}"), "(\\d+)")
        rules.append((re.compile(pattern), "\\g<1>" + dst.replace("{i}", "\\g<2>")))
    return tuple(rules)


def _apply(rules, name: str) -> str:
    for pattern, replacement in rules:
        name, count = pattern.subn(replacement, name, count=1)
        if count:
            break
    return name


def _best_arch(keys: list, src: Naming, dst: Naming, targets) -> str:
    """The map that places the most keys in the target model (split and joined where a map fuses layers; without
    one: that renames the most, fusing nothing), once per call; ties go to the map whose keys tell it (either side's
    ``arch_signals``; of those, to one that fuses: it is the more specific), then to the plain one."""
    plain = {k: rename(k, src, dst, "resnet") for k in keys}

    def score(arch):
        if targets is None:
            names = plain.values() if arch == "resnet" else (rename(k, src, dst, arch) for k in keys)
            return sum(1 for k, n in zip(keys, names) if n != plain[k])
        parts = (p for k in keys for p in _fusion.part_names(k, src, arch) or [k])
        return sum(1 for p in parts if _fusion.fused_name(rename(p, src, dst, arch) or "", dst, arch) in targets)

    def told(arch):
        sides = ((src, keys), (dst, list(targets or ())))
        return any(
            side.arch_signals.get(arch) and any(re.search(side.arch_signals[arch], k) for k in ks) for side, ks in sides
        )

    def rank(arch):
        said = told(arch)
        return score(arch), said, said and bool(src.fusions.get(arch) or dst.fusions.get(arch)), arch == "resnet"

    return max(convert_archs(), key=rank)


def _convert_value(key, new, value, sides: tuple, targets, notes):
    src, dst, arch = sides
    kind, padding_idx = (targets.get(new) or (None, None))[:2] if targets is not None else (None, None)
    if (
        len(_tensors.shape_of(value)) == 2
        and (new.endswith("weight") or adapter_leaf(new))  # LoRA lora_A / lora_B: laid out as their layer's Linear
        and _fusion.layout(src, arch, key) != _fusion.layout(dst, arch, new, targets)
    ):
        if targets is not None:
            transpose = kind == "linear"
            if transpose:
                notes.append((key, "transposed (Linear)"))
        else:
            transpose = "embed" not in new.rpartition(".")[0].lower()
            if transpose:
                notes.append((key, "transposed as a Linear weight (a guess from its name: pass model= to be sure)"))
        value = _tensors.transpose(value) if transpose else value
    if (
        kind == "embedding"
        and padding_idx is not None
        and src.padding_row != dst.padding_row
        and _tensors.row_nonzero(value, padding_idx)
    ):
        if dst.padding_row == "stored":
            value = _tensors.zero_row(value, padding_idx)
            notes.append(
                (
                    key,
                    f"padding row {padding_idx} zeroed: {src.framework} output zeros there, "
                    f"{dst.framework} returns the row",
                )
            )
        else:
            notes.append(
                (
                    key,
                    f"padding row {padding_idx} is non-zero: {dst.framework} will output zeros there, "
                    f"{src.framework} returned the row",
                )
            )
    return value


def _aligned(state, names: dict, src: Naming, dst: Naming, model):
    """Keys paired module by module in model order, when the name maps leave target keys unplaced.

    Both frameworks list a state in module order (a module's own tensors, then its children's), so twin
    architectures whose modules are named differently (torchvision vs paddle.vision AlexNet, DenseNet, ...) pair up
    by position. Used only when every module pairs with one holding the same leaves with the same shapes (a Linear's
    transposed); otherwise ``None`` and :func:`alignment_difference` says where the architectures differ.
    """
    pairs = _module_pairs(state, names, src, dst, model)
    if isinstance(pairs, str):
        return None
    renamed = dict(names)
    for (_, source_keys), (target_path, _) in pairs:
        for key in source_keys:
            leaf = names[key].rpartition(".")[2] if names[key] else None
            renamed[key] = f"{target_path}.{leaf}" if leaf else None
    return renamed, "aligned"


def alignment_difference(state, model, source: str | None = None) -> str | None:
    """Why ``state`` does not pair module by module with ``model`` (None when it does): the first difference."""
    state = state if isinstance(state, StateDict) else as_state_dict(dict(state))
    to = view_of(model).adapter.name
    src, dst = naming(_source_framework(state, to, source)), naming(to)
    names = {key: rename(key, src, dst, "resnet") for key in state}
    pairs = _module_pairs(state, names, src, dst, model)
    return pairs if isinstance(pairs, str) else None


def _module_pairs(state, names: dict, src: Naming, dst: Naming, model):
    """[((source path, keys), (target path, leaves))] in module order, or a sentence naming the first difference."""
    view = view_of(model)
    info = view.key_info()
    shapes = dict(zip(view.names, view.shapes))
    shapes.update((k, tuple(_tensors.shape_of(t))) for k, t in zip(view.stat_keys, view.stat_tensors))
    target: dict = {}
    for key in sorted((k for k in info if k in shapes), key=lambda k: view.module_index.get(k.rpartition(".")[0], -1)):
        path, _, leaf = key.rpartition(".")
        target.setdefault(path, {})[leaf] = (shapes[key], info[key][0])
    source: dict = {}
    for key in state:
        if names[key] is not None:
            source.setdefault(key.rpartition(".")[0], []).append(key)
    if len(source) != len(target):
        return f"the source has {len(source)} modules with weights, the target {view.label} has {len(target)}"
    pairs = list(zip(source.items(), target.items()))
    for i, ((spath, keys), (tpath, leaves)) in enumerate(pairs):
        have = {names[k].rpartition(".")[2]: tuple(_tensors.shape_of(state[k])) for k in keys}
        want = {leaf: shape for leaf, (shape, _) in leaves.items()}
        kind = next(iter(leaves.values()))[1]
        if kind == "linear" and src.linear_layout != dst.linear_layout:
            have = {leaf: shape[::-1] if len(shape) == 2 else shape for leaf, shape in have.items()}
        if have != want:
            return (
                f"module {i + 1} differs: source {spath!r} holds {_leaves(have)} where the target's {tpath!r} "
                f"holds {_leaves(want)}"
            )
    return pairs


def _leaves(shapes: dict) -> str:
    return ", ".join(f"{leaf} {list(shape)}" for leaf, shape in shapes.items()) or "nothing"


def _differences(side: Naming, keys: list) -> list:
    """What the side's architecture, told by its keys, computes differently from its twin in the other framework."""
    present = set(keys)
    return [text for when, text in side.arch_differences if all(k in present for k in when)]


def _value_rules(side: Naming, keys: list) -> list:
    """The side's value rules whose architecture keys are all present, compiled."""
    present = set(keys)
    return [(re.compile(r.key), r) for r in side.value_rules if all(k in present for k in r.when)]


def _revalue(key, new, value, rules, notes):
    """Source value -> neutral convention -> target convention (see :class:`ValueRule`)."""
    src_rule = next((r for pattern, r in rules[0] if pattern.fullmatch(key)), None)
    dst_rule = next((r for pattern, r in rules[1] if pattern.fullmatch(new)), None)
    if src_rule is None and dst_rule is None:
        return value
    try:
        array = _tensors.to_numpy(value, key).astype(np.float64)
    except XFreezeError:
        notes.append((key, "not adjusted: a dtype numpy cannot hold (outputs will differ slightly)"))
        return value
    dtype = _tensors.to_numpy(value, key).dtype
    if src_rule is not None:
        array = (array - src_rule.shift) / src_rule.scale
    if dst_rule is not None:
        array = array * dst_rule.scale + dst_rule.shift
    if src_rule is not None and src_rule.shift or dst_rule is not None and dst_rule.shift:
        if (array < 0).any() and key.endswith(("var", "variance")):
            notes.append((key, "variance clipped at 0 (the target's larger norm epsilon cannot be matched exactly)"))
            array = np.maximum(array, 0)
    for rule in (src_rule, dst_rule):
        if rule is not None:
            notes.append((key, f"adjusted: {rule.why}"))
    return _tensors.to_backend(array.astype(dtype), _tensors.backend_of(value), key)


def _target_info(model) -> dict:
    """Target key -> (module kind, embedding padding index, the module's own weight layout or None), from the view."""
    view = view_of(model)
    own = {name: weight_layout(type(view.modules[mi])) for name, mi in zip(view.names, view.owner)}
    return {key: (*info, own.get(key)) for key, info in view.key_info().items()}

"""The selector language: glob, ``re:``, ``type:`` and ``!`` patterns over dotted parameter names.

A pattern selects a parameter when it matches the parameter's own name or the name (for ``type:``, the class or
framework-neutral kind) of any module that contains it: ``layer4`` selects everything under ``layer4``.
Each pattern is compiled once and matched once per call against the model view: once per parameter name and once
per module path, with module matches propagated down the module tree (so the cost is linear in the model's size).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass

import numpy as np

from ..core.errors import XFreezeError

KINDS = ("norm", "linear", "conv", "embedding")


@dataclass(frozen=True)
class Pattern:
    text: str
    negate: bool
    kind: str  # "glob" | "re" | "type"
    body: str
    regex: re.Pattern | None = None

    def name_hits(self, names: list) -> np.ndarray:
        """Which of ``names`` the pattern matches by name (always False for ``type:``)."""
        if self.kind == "type":
            return np.zeros(len(names), dtype=bool)
        regex = self.regex
        if regex is None:  # only type: patterns have none
            return np.zeros(len(names), dtype=bool)
        match = regex.fullmatch if self.kind == "re" else regex.match
        return np.fromiter((match(n) is not None for n in names), dtype=bool, count=len(names))

    def hits(self, view) -> np.ndarray:
        """Which of the view's parameters the pattern matches (its ``!`` aside): by name, or by a module holding
        them. Made once per view and pattern (a schedule or group build asks for the same pattern many times)."""
        cache = view.pattern_hits
        if self.text not in cache:
            mask = self.name_hits(view.names) | self.module_hits(view)[view.owner_array]
            mask.flags.writeable = False  # shared by every caller
            cache[self.text] = mask
        return cache[self.text]

    def module_hits(self, view) -> np.ndarray:
        """Modules covered by the pattern: matched themselves or inside a matched module."""
        if self.kind == "type":
            own = np.fromiter((self.body in t for t in view.type_names), dtype=bool, count=len(view.paths))
        else:
            own = self.name_hits(view.paths)
            own[0] = own[0] and view.paths[0] != ""  # the root has no name to match
        covered = own.copy()
        parent = view.parent
        for i in range(len(covered)):  # parents come before children
            if not covered[i] and parent[i] >= 0 and covered[parent[i]]:
                covered[i] = True
        return covered


def compile_patterns(patterns) -> list[Pattern]:
    flat = _flatten(patterns)
    if not flat:
        raise XFreezeError(
            'No patterns given. Pass at least one, e.g. "*" for every parameter or "backbone.*" for a submodule'
        )
    return [_compile(p) for p in flat]


def _flatten(patterns) -> list[str]:
    flat = []
    for p in patterns:
        if isinstance(p, (list, tuple)):
            flat.extend(_flatten(p))
        elif isinstance(p, str):
            flat.append(p)
        else:
            raise XFreezeError(f"Patterns must be strings; received {type(p).__name__} {p!r}")
    return flat


def _compile(text: str) -> Pattern:
    negate = text.startswith("!")
    rest = text[1:] if negate else text
    kind, body = (
        ("re", rest[3:])
        if rest.startswith("re:")
        else ("type", rest[5:])
        if rest.startswith("type:")
        else ("glob", rest)
    )
    if not body.strip():
        raise XFreezeError(
            f'Empty pattern {text!r}: write what to match, e.g. "fc.*", "re:layer[0-9]\\..*" or "type:norm"'
        )
    regex = None
    if kind == "re":
        try:
            regex = re.compile(body)
        except re.error as exc:
            raise XFreezeError(f"Invalid regular expression in pattern {text!r}: {exc}") from None
    elif kind == "glob":
        regex = re.compile(fnmatch.translate(body))
    return Pattern(text, negate, kind, body, regex)


def select_mask(
    view, patterns: list[Pattern], names: list | None = None, owners=None, allow_stat_only: bool = True
) -> np.ndarray:
    """Apply the patterns left to right over the view's parameters (or over ``names`` owned by module indices
    ``owners``); a leading ``!`` pattern starts from everything. Raises for a pattern that matches nothing:
    neither a parameter nor, when ``allow_stat_only``, a norm layer that has statistics but no parameters."""
    names = view.names if names is None else names
    owners = view.owner_array if owners is None else owners
    chosen = np.full(len(names), bool(patterns and patterns[0].negate))
    for pattern in patterns:
        modules = pattern.module_hits(view)
        hits = pattern.name_hits(names)
        if len(names):
            hits |= modules[owners]
        if not hits.any() and not (allow_stat_only and _covers_stat_only(view, modules)):
            raise no_match(view, pattern)
        chosen = chosen & ~hits if pattern.negate else chosen | hits
    return chosen


def select_indices(view, patterns) -> np.ndarray:
    """Indices of the view's parameters that ``patterns`` (strings, compiled here) select, in model order; raises
    for a pattern that matches nothing, with the closest real names."""
    return np.flatnonzero(select_mask(view, compile_patterns(patterns)))


def module_mask(view, patterns: list[Pattern]) -> np.ndarray:
    """The modules the patterns select as a whole (no error when none)."""
    chosen = np.full(len(view.paths), bool(patterns and patterns[0].negate))
    for pattern in patterns:
        hits = pattern.module_hits(view)
        chosen = chosen & ~hits if pattern.negate else chosen | hits
    return chosen


def _covers_stat_only(view, modules: np.ndarray) -> bool:
    return any(modules[i] and not view.direct(i) for i in view.stat_modules)


def no_match(view, pattern: Pattern) -> XFreezeError:
    what = f"Pattern {pattern.text!r} matched no parameters of {view.label}."
    if not view.names:
        return XFreezeError(f"{what} The model has no parameters.")
    if pattern.kind == "type":
        candidates = sorted({n for names in set(view.type_names) for n in names})
        close = difflib.get_close_matches(pattern.body, candidates, n=3, cutoff=0.6)
        shown = [("!" if pattern.negate else "") + "type:" + c for c in close]
        known = ", ".join(c for c in candidates if c in KINDS or c[0].isupper())
        tail = f" Did you mean {' or '.join(map(repr, shown))}?" if shown else f" Types in the model: {known}"
        return XFreezeError(what + tail)
    paths = [p for p in view.paths if p]
    candidates = _suggestion_pool(view.names, paths, pattern.body)
    close = difflib.get_close_matches(pattern.body, candidates, n=3, cutoff=0.6)
    prefix = ("!" if pattern.negate else "") + ("re:" if pattern.kind == "re" else "")
    if close:
        return XFreezeError(what + f" Did you mean {' or '.join(repr(prefix + c) for c in close)}?")
    sample = ", ".join(view.names[:5])
    return XFreezeError(what + f" Parameter names look like: {sample}, ... (see xfreeze.summary(model))")


def _suggestion_pool(names: list, paths: list, body: str, limit: int = 2000) -> list:
    """Candidate spellings for a "Did you mean": bounded, so an error on a 100k-tensor model stays fast.
    Numbers are collapsed (``blocks.17.attn`` and ``blocks.3.attn`` are one shape) before sampling."""
    pool = list(dict.fromkeys(list(paths) + [p + ".*" for p in paths] + list(names)))
    if len(pool) <= limit:
        return pool
    first = body.split(".")[0]
    near = [c for c in pool if c.split(".")[0] == first]
    by_shape = {re.sub(r"\d+", "0", c): c for c in pool}
    return (near[: limit // 2] + list(by_shape.values()))[:limit]

"""The selector language: glob, ``re:``, ``type:`` and ``!`` patterns over dotted parameter names.

A pattern selects a parameter when it matches the parameter's own name or the name (for ``type:``, the class or
framework-neutral kind) of any module that contains it: ``layer4`` selects everything under ``layer4``.
Each pattern is compiled once and matched once per call against the model view: once per parameter name and once
per module path, with module matches propagated down the module tree (so the cost is linear in the model's size).

Patterns are user input, so matching runs in bounded time: globs compile to Python regular expressions that cannot
backtrack catastrophically (``fnmatch.translate``), and ``re:`` patterns run on RE2 (google-re2), whose matching is
linear in the name's length whatever the pattern. What RE2 cannot express (backreferences, lookaround) is refused.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import weakref
from dataclasses import dataclass, replace

import numpy as np
import re2

from ..core.errors import XFreezeError
from .slices import RowIndex, base_name, split_index
from .adapters import tensor_kind_hits

KINDS = ("norm", "linear", "conv", "embedding")
MAX_NESTING = 100  # groups in a re: pattern; a name selector never needs more, and the limit keeps RE2's parse small
MAX_LIST_DEPTH = 32  # lists of lists of patterns
RE2_SYNTAX = "https://github.com/google/re2/wiki/Syntax"


@dataclass(frozen=True)
class Pattern:
    text: str
    negate: bool
    kind: str  # "glob" | "re" | "type"
    body: str
    regex: re.Pattern | None = None  # globs: a Python regex (fnmatch's translation backtracks boundedly)
    bounded: "re2.Set | None" = None  # re: patterns: an RE2 full-match set of this one pattern (linear time)
    index: "RowIndex | None" = None  # a trailing [rows] (issue 21): the pattern selects rows of what it matches

    def name_hits(self, names: list, view=None) -> np.ndarray:
        """Which of ``names`` the pattern matches by name (always False for ``type:``); ``view``: the view that
        ``names`` belongs to, whose UTF-8 names are then encoded once."""
        if self.bounded is not None:
            match = getattr(self.bounded, "_set", self.bounded).Match  # the C++ set: one call per name
            texts = _utf8(view, names)
            hits = np.fromiter(map(bool, map(match, texts)), dtype=bool, count=len(texts))
            return _row_param_hits(self, hits, names)
        if self.regex is None:  # type: patterns match module classes; tensor kinds (type:adapter) match here
            return tensor_kind_hits(view, names, self.body)
        if self.body == "*" and self.index is None:  # everything (the first pattern of most calls): no matching
            return np.ones(len(names), dtype=bool)
        hits = np.fromiter(map(bool, map(self.regex.match, names)), dtype=bool, count=len(names))
        return _row_param_hits(self, hits, names)

    def hits(self, view) -> np.ndarray:
        """Which of the view's parameters the pattern matches (its ``!`` aside): by name, or by a module holding
        them. Made once per view and pattern (a schedule or group build asks for the same pattern many times)."""
        cache = view.pattern_hits
        if self.text not in cache:
            mask = self.name_hits(view.names, view) | self.module_hits(view)[view.owner_array]
            mask.flags.writeable = False  # shared by every caller
            cache[self.text] = mask
        return cache[self.text]

    def module_hits(self, view) -> np.ndarray:
        """Modules covered by the pattern: matched themselves or inside a matched module (made once per view and
        pattern; read-only)."""
        cache = view.pattern_modules
        if self.text not in cache:
            covered = self._module_hits(view)
            covered.flags.writeable = False
            cache[self.text] = covered
        return cache[self.text]

    def _module_hits(self, view) -> np.ndarray:
        if self.kind == "type":
            own = np.fromiter((self.body in t for t in view.type_names), dtype=bool, count=len(view.paths))
        else:
            own = self.name_hits(view.paths, view)
            own[0] = own[0] and view.paths[0] != ""  # the root has no name to match
        covered, parent = own.copy(), view.parent
        above = parent
        while (up := above >= 0).any():  # one step up the tree per round, every module at once: rounds = depth
            covered[up] |= own[above[up]]
            above = np.where(up, parent[np.maximum(above, 0)], -1)
        return covered


def compile_patterns(patterns, argument: str = "patterns") -> list[Pattern]:
    """Compile selector patterns: a string, or a list or tuple of strings (nested lists are flattened).

    Args:
        patterns: the patterns, as the caller received them.
        argument: the caller's name for them, used in errors (``"patterns"``, ``"skip"``, ...).

    Returns:
        list[Pattern]: compiled patterns, in order.

    Raises:
        XFreezeError: no patterns, something that is not a string or a list of strings, an empty pattern, or a
            ``re:`` pattern that is invalid or cannot be matched in bounded time.
    """
    flat = _flatten(patterns, argument)
    if not flat:
        raise XFreezeError(
            f'No patterns given ({argument}). Pass at least one, e.g. "*" for every parameter or "backbone.*" '
            "for a submodule"
        )
    return [_compile(p) for p in flat]


def _flatten(patterns, argument: str) -> list[str]:
    """The strings of ``patterns`` (a string, or lists / tuples of them nested up to MAX_LIST_DEPTH), in order;
    iterative, so a deeply nested or self-containing list is an error, not a RecursionError."""
    if isinstance(patterns, str):
        return [patterns]
    if not isinstance(patterns, (list, tuple)):
        raise _not_patterns(argument, patterns)
    flat: list[str] = []
    stack = [iter(patterns)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, str):
            flat.append(item)
        elif isinstance(item, (list, tuple)):
            if len(stack) >= MAX_LIST_DEPTH:
                raise XFreezeError(
                    f"{argument}: lists of patterns nested more than {MAX_LIST_DEPTH} deep (or a list that contains "
                    "itself). Pass a flat list of strings, e.g. ['*', '!head']"
                )
            stack.append(iter(item))
        else:
            raise _not_patterns(argument, item, inside=True)
    return flat


_END = object()


def _not_patterns(argument: str, value, inside: bool = False) -> XFreezeError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    where = f"in {argument}" if inside else f"as {argument}"
    unordered = " (a set has no order, and '!' patterns depend on it: pass a list)"
    hints: dict[type, str] = {
        dict: " (a dict: pass its keys as a list if they are patterns)",
        set: unordered,
        frozenset: unordered,
        bytes: " (bytes: decode them to a str)",
    }
    hint = hints.get(type(value), "")
    return XFreezeError(
        f"Patterns must be strings; received {type(value).__name__} {shown} {where}{hint}. Pass strings or "
        'lists of strings, e.g. "*", "!head" or ["layer4", "fc"]; nothing was changed'
    )


def _compile(text: str) -> Pattern:
    negate = text.startswith("!")
    rest = text[1:] if negate else text
    # a trailing [rows] on a glob or a type: pattern; in a re: pattern brackets are the regex's own classes
    rest, index = (rest, None) if rest.startswith("re:") else split_index(rest)
    if index is not None:
        return replace(_compile(("!" if negate else "") + rest), text=text, index=index)
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
    if kind == "re":
        return Pattern(text, negate, kind, body, bounded=_bounded(text, body))
    if kind == "glob":
        return Pattern(text, negate, kind, body, regex=re.compile(fnmatch.translate(body)))
    return Pattern(text, negate, kind, body)


def _row_param_hits(pattern: Pattern, hits: np.ndarray, names: list) -> np.ndarray:
    """A split tensor's rows parameter (``w[0:4]``) is matched by the patterns that match its tensor (``w``,
    ``*.weight``, ``w[32000:]``: an optimizer's ``lr_mult`` reaches the trainable rows), never by its own name alone."""
    rows = _rows_names(names)
    if not rows:
        return hits
    for i, base in rows:
        hits[i] = bool(hits[i]) or _matches(pattern, base)
    return hits


def _matches(pattern: Pattern, name: str) -> bool:
    if pattern.bounded is not None:
        return bool(getattr(pattern.bounded, "_set", pattern.bounded).Match(name.encode("utf-8", "surrogatepass")))
    return pattern.regex is not None and pattern.regex.match(name) is not None


_rows_cache: dict = {}  # id(names list) -> (the list, [(position, its tensor's name)]): few lists, checked by identity


def _rows_names(names: list) -> list:
    """``[(position, tensor name)]`` of the rows parameters (names ending in ``[rows]``) among ``names``."""
    entry = _rows_cache.get(id(names))
    if entry is None or entry[0] is not names:
        if len(_rows_cache) > 64:
            _rows_cache.clear()
        found = []
        if "]" in "\0".join(names):  # one scan of one string (most models have no rows parameter)
            found = [(i, b) for i, n in enumerate(names) if n.endswith("]") and (b := base_name(n)) is not None]
        entry = _rows_cache[id(names)] = (names, found)
    return entry[1]


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is an XFreezeError, not a line on stderr
    options.never_capture = True  # only "does it match" is asked: no group spans to track
    return options


_OPTIONS = _options()


def _bounded(text: str, body: str) -> re2.Set:
    """A full-match RE2 set of one pattern: matching is linear in the name's length (no backtracking)."""
    depth = _nesting(body)
    if depth > MAX_NESTING:
        raise XFreezeError(
            f"Regular expression in pattern {_short(text)} nests groups {depth} deep (at most {MAX_NESTING}). "
            "Write it flatter, e.g. alternatives side by side: re:(layer3|layer4)\\..*"
        )
    try:
        re2.compile(body, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise XFreezeError(
            f"Invalid regular expression in pattern {_short(text)}: {reason}. re: patterns run on RE2, which matches "
            "in time linear in the name whatever the pattern, so backreferences (\\1), lookaround ((?=...), "
            f"(?<=...)) and \\Z (write \\z, or nothing: the whole name must match anyway) are not supported; "
            f"syntax: {RE2_SYNTAX}"
        ) from None
    bounded = re2.Set.FullMatchSet(_OPTIONS)
    bounded.Add(body)
    bounded.Compile()
    return bounded


def _nesting(body: str) -> int:
    """How deep the groups of a regular expression nest (escapes and character classes skipped)."""
    depth = deepest = 0
    i, in_class = 0, False
    while i < len(body):
        c = body[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 2 if body[i + 1 : i + 2] == "]" or body[i + 1 : i + 3] == "^]" else 1
            continue
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth = max(depth - 1, 0)
        i += 1
    return deepest


def _short(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else repr(text[: limit - 3] + "...") + f" ({len(text)} characters)"


# view -> {id of its names or paths list: (the list, its names as UTF-8 bytes)}: RE2 matches bytes, and a schedule
# asks for many patterns over the same names
_encoded: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _utf8(view, names: list) -> list:
    """``names`` as UTF-8 bytes; encoded once per view for its own names and module paths."""
    if view is None or (names is not view.names and names is not view.paths):
        return [n.encode("utf-8", "surrogatepass") for n in names]
    cached = _encoded.setdefault(view, {})
    entry = cached.get(id(names))
    if entry is None or entry[0] is not names:
        entry = cached[id(names)] = (names, [n.encode("utf-8", "surrogatepass") for n in names])
    return entry[1]


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
        hits = pattern.name_hits(names, view)
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

"""The selector language: glob, ``re:``, ``type:`` and ``!`` patterns over dotted parameter names.

A pattern selects a parameter when it matches the parameter's own name or the name (for ``type:``, the class or
framework-neutral kind) of any module that contains it: ``layer4`` selects everything under ``layer4``.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field

from ._errors import XFreezeError

KINDS = ("norm", "linear", "conv", "embedding")


@dataclass
class Entry:
    """One parameter (or, for module coverage, one module) with the modules that contain it, outermost first."""
    name: str
    param: object
    module: object                       # the module that owns the parameter directly
    ancestors: list = field(default_factory=list)   # [(path, module)], root ("") first, owner last


@dataclass
class Pattern:
    text: str
    negate: bool
    kind: str       # "glob" | "re" | "type"
    body: str
    regex: re.Pattern | None = None

    def matches(self, entry: Entry, adapter) -> bool:
        if self.kind == "type":
            return any(self.body in _type_names(adapter, m) for _, m in entry.ancestors)
        names = [entry.name] + [path for path, _ in entry.ancestors if path]
        if self.kind == "re":
            return any(self.regex.fullmatch(n) for n in names)
        return any(fnmatch.fnmatchcase(n, self.body) for n in names)


def model_name(adapter, model) -> str:
    return f"{type(model).__name__} ({adapter.name})"


def walk(adapter, model) -> list[Entry]:
    """Every parameter of ``model`` once (shared ones under their first name), in model order."""
    modules = dict(adapter.named_modules(model))
    entries, seen = [], set()
    for path, module in modules.items():
        for local, param in adapter.direct_parameters(module):
            if id(param) not in seen:
                seen.add(id(param))
                name = f"{path}.{local}" if path else local
                entries.append(Entry(name, param, module, _ancestors(modules, path)))
    return entries


def entries_for(adapter, model, names: list[str]) -> list[Entry]:
    """Entries for arbitrary dotted keys of ``model`` (parameters and statistics), for matching patterns."""
    modules = dict(adapter.named_modules(model))
    out = []
    for name in names:
        path = name.rpartition(".")[0]
        out.append(Entry(name, None, modules.get(path), _ancestors(modules, path)))
    return out


def module_entries(adapter, model) -> list[Entry]:
    """Every named module as an entry, so that patterns can say which modules they cover."""
    modules = dict(adapter.named_modules(model))
    return [Entry(path, None, module, _ancestors(modules, path)) for path, module in modules.items() if path]


def _ancestors(modules: dict, path: str) -> list:
    parts = path.split(".") if path else []
    prefixes = [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]
    return [(p, modules[p]) for p in prefixes if p in modules]


def compile_patterns(patterns) -> list[Pattern]:
    flat = _flatten(patterns)
    if not flat:
        raise XFreezeError('No patterns given. Pass at least one, e.g. "*" for every parameter '
                           'or "backbone.*" for a submodule')
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
    kind, body = ("re", rest[3:]) if rest.startswith("re:") else ("type", rest[5:]) if rest.startswith("type:") \
        else ("glob", rest)
    if not body.strip():
        raise XFreezeError(f"Empty pattern {text!r}: write what to match, e.g. \"fc.*\", \"re:layer[0-9]\\..*\" "
                           f"or \"type:norm\"")
    regex = None
    if kind == "re":
        try:
            regex = re.compile(body)
        except re.error as exc:
            raise XFreezeError(f"Invalid regular expression in pattern {text!r}: {exc}") from None
    return Pattern(text, negate, kind, body, regex)


def resolve(adapter, model, patterns: list[Pattern], entries: list[Entry]) -> list[Entry]:
    """Apply the patterns left to right; a leading ``!`` pattern starts from every parameter.

    A pattern must match a parameter, or a norm layer that has statistics but no parameters (affine=False)."""
    chosen: set[int] = set(range(len(entries))) if patterns and patterns[0].negate else set()
    stat_only = None
    for pattern in patterns:
        hits = {i for i, e in enumerate(entries) if pattern.matches(e, adapter)}
        if not hits:
            stat_only = _stat_only_modules(adapter, model) if stat_only is None else stat_only
            if not any(pattern.matches(e, adapter) for e in stat_only):
                raise _no_match(adapter, model, pattern, entries)
        chosen = chosen - hits if pattern.negate else chosen | hits
    return [entries[i] for i in sorted(chosen)]


def covered_modules(adapter, model, patterns: list[Pattern]) -> list[Entry]:
    """The modules the patterns select as a whole (no error when none)."""
    entries = module_entries(adapter, model)
    chosen: set[int] = set(range(len(entries))) if patterns and patterns[0].negate else set()
    for pattern in patterns:
        hits = {i for i, e in enumerate(entries) if pattern.matches(e, adapter)}
        chosen = chosen - hits if pattern.negate else chosen | hits
    return [entries[i] for i in sorted(chosen)]


def _stat_only_modules(adapter, model) -> list[Entry]:
    return [e for e in module_entries(adapter, model)
            if adapter.norm_statistics(e.module) and not adapter.direct_parameters(e.module)]


def _type_names(adapter, module) -> set[str]:
    kind = adapter.module_kind(module)
    return set(adapter.class_names(module)) | ({kind} if kind else set())


def _no_match(adapter, model, pattern: Pattern, entries: list[Entry]) -> XFreezeError:
    what = f"Pattern {pattern.text!r} matched no parameters of {model_name(adapter, model)}."
    if not entries:
        return XFreezeError(f"{what} The model has no parameters.")
    if pattern.kind == "type":
        candidates = sorted({n for e in entries for _, m in e.ancestors for n in _type_names(adapter, m)})
        close = difflib.get_close_matches(pattern.body, candidates, n=3, cutoff=0.6)
        shown = [("!" if pattern.negate else "") + "type:" + c for c in close]
        known = ", ".join(c for c in candidates if c in KINDS or c[0].isupper())
        tail = f" Did you mean {' or '.join(map(repr, shown))}?" if shown else f" Types in the model: {known}"
        return XFreezeError(what + tail)
    paths = {p for e in entries for p, _ in e.ancestors if p}
    candidates = [e.name for e in entries] + sorted(paths) + sorted(p + ".*" for p in paths)
    close = difflib.get_close_matches(pattern.body, candidates, n=3, cutoff=0.6)
    prefix = ("!" if pattern.negate else "") + ("re:" if pattern.kind == "re" else "")
    if close:
        return XFreezeError(what + f" Did you mean {' or '.join(repr(prefix + c) for c in close)}?")
    sample = ", ".join(e.name for e in entries[:5])
    return XFreezeError(what + f" Parameter names look like: {sample}, ... (see xfreeze.summary(model))")

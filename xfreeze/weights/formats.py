"""The checkpoint format registry: every format xfreeze reads or writes is one
:class:`~xfreeze.backends.formats.FileFormat` entry, and loading, saving and detection only walk the entries.

Detection: the file is first probed as a container, in the order of :data:`CONTAINERS` (a safetensors header, a zip
archive, a pickle stream); a probe checks the container's structure and bounds what it declares. The formats of the
first container that matches then sniff the probe's findings, in registry order: the framework-free formats
registered here (safetensors, npz), then each framework's own (``backends/<framework>/formats.py``), whose ``read`` /
``write`` references (``"adapter"``, ``"pickle"``) are resolved here into the readers and writers below. Messages name
the formats frameworks first ("not a torch, Paddle, safetensors or npz file").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..backends.formats import FILE_FORMATS, FileFormat
from ..core import tensors as _tensors
from ..core.dispatch import adapter_named
from ..core.errors import XFreezeError, check_choice
from . import npz, pickles, safetensors


@dataclass(frozen=True)
class Container:
    name: str
    # probe(path, head, what) -> (findings or None, problem or None); may raise for a corrupt or bomb container.
    # A problem ("is not a valid safetensors file: ...") is reported only when no other container matches.
    probe: Callable
    # unmatched(what, findings, formats) -> the refusal when no format of this container sniffs the file; None:
    # try the next container
    unmatched: Callable | None = None
    # guard(path, size, fmt): what runs before a framework's own reader, which would allocate what the file declares
    guard: Callable | None = None


CONTAINERS = (
    Container("safetensors", safetensors.probe),
    Container("zip", npz.probe, npz.unmatched),
    Container("pickle", pickles.probe, guard=pickles.guard),
)

CORE_FORMATS = (
    FileFormat("safetensors", (".safetensors",), "safetensors", safetensors.sniff, safetensors.read, safetensors.write),
    FileFormat("npz", (".npz",), "zip", npz.sniff, npz.read, npz.write, missing="an npz (members not all .npy)"),
)


def _read_with_adapter(path: Path, size: int, fmt: FileFormat):
    """A framework's own safe loader (``torch.load(weights_only=True)``), after the core's checks: the container's
    guard (a pickle's opcodes), and the tensor bytes the file declares against its size."""
    guard = next(c.guard for c in CONTAINERS if c.name == fmt.container)
    if guard is not None:
        guard(path, size, fmt)
    if fmt.declared_bytes is not None:
        declared = fmt.declared_bytes(path)
        if declared > size:
            raise XFreezeError(
                f"it declares {declared:,} bytes of tensor data in a file of {size:,} bytes; refused "
                "(a file may not declare more than it holds)"
            )
    return adapter_named(fmt.framework).load_file(path), {}


def _write_with_adapter(state: dict, fmt: FileFormat, framework, metadata: dict):
    adapter = adapter_named(fmt.framework)
    tensors = {k: _tensors.to_backend(v, fmt.framework, k) for k, v in state.items()}
    return lambda f: adapter.save_file(tensors, f)


READERS = {"adapter": _read_with_adapter, "pickle": pickles.read}
WRITERS = {"adapter": _write_with_adapter, "pickle": pickles.write}


def _resolved(fmt: FileFormat) -> FileFormat:
    """The entry with its ``read`` / ``write`` references replaced by the core's reader and writer."""
    for field, table, value in (("read", READERS, fmt.read), ("write", WRITERS, fmt.write)):
        if isinstance(value, str):
            check_choice(f"{fmt.name} format's {field}", value, tuple(table))
            fmt = replace(fmt, **{field: table[value]})
    return fmt


REGISTRY: tuple = CORE_FORMATS + tuple(_resolved(f) for f in FILE_FORMATS)
SUFFIXES: dict = {}  # suffix -> format name; the first entry naming a suffix picks it
for _fmt in REGISTRY:
    for _suffix in _fmt.suffixes:
        SUFFIXES.setdefault(_suffix, _fmt.name)
NAMES: tuple = tuple(dict.fromkeys(f.name for f in REGISTRY))


def listed() -> tuple:
    """The entries in the order messages name them: the frameworks' own first, then the framework-free ones."""
    return tuple(sorted(REGISTRY, key=lambda f: f.framework is None))


def detect(path: Path, what: str) -> FileFormat:
    """The entry whose structure the file has; an error naming the file (``what``) otherwise."""
    with open(path, "rb") as f:
        head = f.read(16)
    problems = []
    for container in CONTAINERS:
        found, problem = container.probe(path, head, what)
        problems += [problem] if problem else []
        if found is None:
            continue
        fmt = next((f for f in REGISTRY if f.container == container.name and f.sniff(head, found)), None)
        if fmt is not None:
            return fmt
        if container.unmatched is not None:
            raise XFreezeError(container.unmatched(what, found, [f for f in listed() if f.container == container.name]))
    if problems:
        raise XFreezeError(f"{what} {problems[0]}")
    *others, last = dict.fromkeys(f.title for f in listed())
    suffix = SUFFIXES.get(path.suffix.lower())
    raise XFreezeError(
        f"{what} is not a {', '.join(others) + ' or ' if others else ''}{last} file"
        + (f" (the suffix says {suffix}, the content does not)" if suffix else "")
    )


def for_saving(name: str | None, path: Path) -> FileFormat:
    """The entry that writes format ``name`` (checked), or the one ``path``'s suffix picks."""
    if name is not None:
        check_choice("format", name, NAMES)
    name = name or SUFFIXES.get(path.suffix.lower())
    if name is None:
        raise XFreezeError(
            f"cannot tell the format of {str(path)!r}: use a suffix among {sorted(SUFFIXES)} or "
            f"format={'|'.join(map(repr, NAMES))}"
        )
    fmt = next((f for f in REGISTRY if f.name == name and f.write is not None), None)
    if fmt is None:
        raise XFreezeError(f"xfreeze reads {name} files but does not write them; save as one of {_writable()}")
    return fmt


def _writable() -> tuple:
    return tuple(dict.fromkeys(f.name for f in REGISTRY if f.write is not None))

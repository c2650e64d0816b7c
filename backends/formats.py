"""Per-framework checkpoint file formats and their sniffers, as data. Importing this module imports no framework.

Each framework describes the files it writes: suffixes, the container (a zip archive or a bare pickle), how to tell
its own files apart from structure (zip member names, a pickled magic number), and how the core reads and writes
them (``reader``: ``"adapter"`` = the adapter's ``load_file``/``save_file``; ``"pickle"`` = the core's restricted
unpickler and plain pickle writer). safetensors and npz are framework-free and live in the core.
Each framework lists its own formats in ``backends/<framework>/formats.py``; this module gathers them
through the registry in ``backends/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import importlib


@dataclass(frozen=True)
class FileFormat:
    name: str  # the format name reported as StateDict.format
    framework: str  # whose tensors / naming the files hold by default
    suffixes: tuple  # suffixes that pick this format when saving
    container: str  # "zip" or "pickle"
    sniff: Callable  # sniff(head: bytes, zip_names: list | None) -> bool, from structure only
    reader: str  # "adapter" (the framework's own safe loader) or "pickle" (xfreeze's restricted one)
    # Paddle's convention: paddle.save writes a bfloat16 tensor as its uint16 bits and reads uint16 back as bfloat16
    uint16_is: str | None = None
    # declared_bytes(path) -> bytes of tensor data the file declares (checked against its size before loading)
    declared_bytes: Callable | None = None
    pickles: int = 1  # consecutive pickles at the start of a "pickle" container (checked opcode by opcode)


def _gather() -> tuple:
    from . import FRAMEWORKS

    return tuple(
        f
        for spec in FRAMEWORKS.values()
        for f in importlib.import_module(spec.formats, package=__package__).FILE_FORMATS
    )


FILE_FORMATS: tuple = _gather()


def by_suffix(suffix: str) -> FileFormat | None:
    return next((f for f in FILE_FORMATS if suffix.lower() in f.suffixes), None)


def by_name(name: str) -> FileFormat | None:
    return next((f for f in FILE_FORMATS if f.name == name), None)


def sniff(container: str, head: bytes, zip_names=None) -> FileFormat | None:
    """The format whose structure ``head`` (and the zip's member names) shows, or None."""
    return next((f for f in FILE_FORMATS if f.container == container and f.sniff(head, zip_names)), None)

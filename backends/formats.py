"""Checkpoint file formats as data: the entry type of xfreeze's format registry, and the frameworks' own entries.
Importing this module imports no framework.

Every format, framework-free or not, is one :class:`FileFormat`: its name and suffixes, the container the core probes
first (a safetensors header, a zip archive, a pickle stream), a ``sniff`` that tells its own files apart from the
probe's findings, and ``read`` / ``write``. The framework-free formats (safetensors, npz) are registered by the core
(``xfreeze/weights/formats.py``). Each framework lists its own in ``backends/<framework>/formats.py`` as pure data: its
``read`` / ``write`` name a reader the core provides, ``"adapter"`` (the adapter's ``load_file`` / ``save_file``) or
``"pickle"`` (the core's restricted unpickler and plain pickle writer), so no framework is imported to describe them.
This module gathers those lists through the registry in ``backends/__init__.py``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Union

from . import FRAMEWORKS

Reader = Union[Callable, str]  # a callable, or "adapter" / "pickle": a reader the core provides


@dataclass(frozen=True)
class FileFormat:
    name: str  # the format name reported as StateDict.format and accepted as save_checkpoint(format=...)
    suffixes: tuple  # suffixes that pick this format when saving
    container: str  # "safetensors", "zip" or "pickle": the structure the core probes (and bounds) before sniffing
    sniff: Callable  # sniff(head: bytes, found) -> bool, from structure only; found = the container probe's findings
    # read(path, size, fmt) -> (data, metadata); or "adapter" / "pickle"
    read: Reader
    # write(state, fmt, framework, metadata) -> a function file -> None, built after every check passed; or
    # "adapter" / "pickle"; None: xfreeze does not write this format (another entry of the same name does)
    write: Reader | None
    framework: str | None = None  # whose tensors / naming the files hold by default; None: framework-free
    label: str = ""  # how messages name it ("Paddle"); default: the name
    missing: str = (
        ""  # a zip format: what an archive that is not this format lacks ("a torch checkpoint (no data.pkl)")
    )
    # Paddle's convention: paddle.save writes a bfloat16 tensor as its uint16 bits and reads uint16 back as bfloat16
    uint16_is: str | None = None
    # declared_bytes(path) -> bytes of tensor data the file declares (checked against its size before loading)
    declared_bytes: Callable | None = None
    pickles: int = 1  # consecutive pickles at the start of a "pickle" container (checked opcode by opcode)

    @property
    def title(self) -> str:
        return self.label or self.name


def _gather() -> tuple:
    return tuple(
        f
        for spec in FRAMEWORKS.values()
        for f in importlib.import_module(spec.formats, package=__package__).FILE_FORMATS
    )


FILE_FORMATS: tuple = _gather()  # every framework's own formats, in registry order

"""Checkpoint paths: a path argument checked without touching the disk (type, NUL, PATH_MAX / NAME_MAX), and how
messages show paths and OS errors. Shared by the files, the folders and the CLI."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..core.errors import XFreezeError


def as_path(path, argument: str = "path") -> Path:
    """``path`` (a str, bytes or ``os.PathLike``) as a :class:`~pathlib.Path`, checked without touching the disk:
    an :class:`XFreezeError` naming ``argument`` for another type, an empty path, a NUL character, or a path or name
    longer than the system allows (PATH_MAX / NAME_MAX)."""
    text = path
    if isinstance(path, os.PathLike):
        try:
            text = os.fspath(path)
        except TypeError:
            text = None
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not isinstance(text, str):
        raise XFreezeError(
            f"{argument} must be a file path (str or os.PathLike), not {type(path).__name__}. "
            f"Received: {argument}={clipped(repr(path))}"
        )
    if not text:
        raise XFreezeError(f"{argument} is empty; name a file. Received: {argument}=''")
    if "\x00" in text:
        raise XFreezeError(f"{argument} contains a NUL character. Received: {argument}={clipped(repr(text))}")
    _check_length(text, argument)
    return Path(text)


def _check_length(text: str, argument: str) -> None:
    folder = _existing_folder(text)
    size, path_max = len(os.fsencode(text)), _limit(folder, "PC_PATH_MAX", 4096)
    if size >= path_max:
        raise XFreezeError(
            f"{argument} is too long: {size:,} bytes, and this system allows at most {path_max - 1:,} (PATH_MAX). "
            f"Received: {argument}={clipped(repr(text))}"
        )
    name_max = _name_max(folder)
    for part in Path(text).parts:
        if len(os.fsencode(part)) > name_max:
            raise XFreezeError(
                f"{argument} holds a name of {len(os.fsencode(part)):,} bytes, and this system allows at most "
                f"{name_max} (NAME_MAX): {clipped(repr(part))}. Received: {argument}={clipped(repr(text))}"
            )


def _existing_folder(text: str) -> str:
    """The nearest folder on the way to ``text`` that exists (for the file system's limits)."""
    folder = os.path.dirname(os.path.abspath(text))
    while folder and not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder or os.sep


def _limit(folder: str, name: str, default: int) -> int:
    try:
        return int(os.pathconf(folder, name))
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no such limit
        return default


def _name_max(folder) -> int:
    return _limit(str(folder), "PC_NAME_MAX", 255)


def clipped(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else f"{text[:70]}...{text[-40:]} ({len(text):,} characters)"


def shown(path) -> str:
    return clipped(repr(str(path)))


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)

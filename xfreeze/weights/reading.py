"""Reading one checkpoint file: the checks on the path, format detection through the registry, the reader's errors
turned into one message naming the file, and whose naming the keys follow. :func:`xfreeze.load_checkpoint` reads a
file through here, and a checkpoint folder each of its shards."""

from __future__ import annotations

from pathlib import Path

from ..backends import ADAPTERS
from ..core.errors import XFreezeError
from . import formats
from .paths import errno_name
from .statedict import StateDict, as_state_dict, guess_framework

# what a safetensors header's {"format": ...} says of the layout: transformers and PaddleFormers' save_to_hf write
# "pt" (torch names and layouts), PaddleNLP and PaddleFormers' Paddle layout "np" ("pd": Paddle tensors)
FORMAT_FRAMEWORKS = {"pt": "torch", "np": "paddle", "pd": "paddle"}


def read_file(path: Path, framework: str | None = None, what: str | None = None) -> StateDict:
    """The checkpoint file at ``path`` (already checked by ``as_path``) as a :class:`StateDict`; ``framework`` forces
    whose naming it follows. Errors name the file as ``what`` (default ``checkpoint '<path>'``)."""
    what = what or f"checkpoint {str(path)!r}"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise XFreezeError(f"{what} does not exist") from None
    except OSError as exc:  # a folder on the way is a file, no permission, a link loop
        raise XFreezeError(f"cannot read {what}: {exc.strerror or exc} ({errno_name(exc)})") from None
    if path.is_dir():
        raise XFreezeError(f"{what} is a directory that holds no checkpoint xfreeze knows")
    size = info.st_size
    if size == 0:
        raise XFreezeError(f"{what} is empty (0 bytes): an interrupted save or download?")
    fmt = formats.detect(path, what)
    kind = fmt.name
    try:
        data, meta = fmt.read(path, size, fmt)
    except XFreezeError as exc:
        raise XFreezeError(str(exc) if str(path) in str(exc) else f"{what}: {exc}") from None
    except (MemoryError, RecursionError) as exc:
        raise XFreezeError(
            f"{what} ({kind} format) declares more than it can hold ({type(exc).__name__}); refused"
        ) from None
    except Exception as exc:  # every reader's own way of saying "truncated" or "corrupt"
        raise XFreezeError(
            f"{what} ({kind} format) is truncated or corrupt: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    state = as_state_dict(data, format=kind, what=what)
    state.framework = decide_framework(state, framework, meta, fmt)
    state.metadata = dict(meta) if isinstance(meta, dict) else {}
    return state


def decide_framework(state: StateDict, framework, meta: dict, fmt) -> str | None:
    """``framework=`` first, then the key names (the file's own structure), then metadata, then the format.
    Metadata that disagrees with the names, or names no framework, is reported in ``notes`` and not used."""
    if framework is not None:
        return framework
    by_names = guess_framework(list(state))
    said = meta.get("framework") if isinstance(meta, dict) else None
    if said and said not in ADAPTERS:
        state.notes.append(("", f"metadata framework={said!r} ignored: not one of {tuple(ADAPTERS)}"))
        said = None
    if said and by_names and said != by_names:
        state.notes.append(
            ("", f"metadata says framework={said!r} but the key names are {by_names}'s; using {by_names}")
        )
    return by_names or said or fmt.framework or state.framework

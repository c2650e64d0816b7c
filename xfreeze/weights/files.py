"""Checkpoint files: torch .pt/.pth/.bin, Paddle .pdparams, .safetensors and .npz, detected from their structure.

Loading and saving walk the format registry (:mod:`xfreeze.weights.formats`: one entry per format, with ``sniff``,
``read`` and ``write``); this module adds what every format shares: the checks on the path, one error family naming
the file, the framework decision and the atomic write.

Guarantees (docs/weights.md states them for users):
  * **Detection follows each format's real structure**, never one format guessed from another's first byte:
    safetensors = an 8-byte little-endian header length, then a JSON header that parses, fits in the file and whose
    offsets cover the data exactly; zip (torch, npz) = a central directory that reads, with member names that decode;
    pickle = a protocol opcode (2-5); then each format of that container sniffs, in registry order.
  * **No code runs**: torch files go through ``torch.load(weights_only=True)``; Paddle pickles through a restricted
    unpickler that admits what ``paddle.save`` writes (numpy arrays by ``_reconstruct``/``_frombuffer``,
    ``_codecs.encode`` with latin1, tuples, dicts, numbers, strings) and nothing else.
  * **Bounded**: what a file declares is bounded by what it holds: an array may not declare more bytes than the file
    has (compressed npz members: 1032x their compressed size, deflate's ceiling); pickles are read from a memory map,
    so a declared length beyond the file's end is "truncated", never an allocation. Containers that refer to
    themselves are refused.
  * **Native values, bit for bit**: torch files give torch tensors; the other formats give numpy arrays where numpy
    holds the dtype, and a framework tensor for bfloat16 / float8 (the file's framework if installed, else any
    installed one). Every format keeps float64/32/16, bfloat16, float8, int, uint8 and bool bits exactly, except npz,
    which refuses bfloat16/float8 with an error naming the tensor (numpy has no such dtype).
  * **Saving is atomic**: a temporary ``.<name>.xfreeze-<pid>-<random>.tmp`` beside the target, fsync, rename. A
    killed save leaves at most that temporary file, which the next save to the same path removes (when process
    <pid> is gone).
    The file gets the mode a plain ``open()`` would give (an existing file keeps its mode; a new one 0o666 & ~umask).
    Saving to a symlink writes through to its target; the link stays. A full disk, a read-only file system or a
    permission error is one ``XFreezeError`` naming the path; the previous file is intact.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from ..backends import ADAPTERS
from ..backends.formats import FileFormat
from ..core.dispatch import adapter_for
from ..core.errors import XFreezeError, check_choice
from ..core.table import escape, plain  # noqa: F401  (re-exported: the CLI uses them)
from . import formats
from .ranks import save_on_rank
from .statedict import (  # StateDict, as_state_dict, describe: re-exported (their earlier home, the CLI's import)
    StateDict,
    as_state_dict,
    check_keys,
    describe,
    guess_framework,
    values_framework,
)


def load_checkpoint(path, *, framework: str | None = None) -> StateDict:
    """Read a checkpoint file safely; the format is detected from the file's structure, not its suffix.

    Args:
        path: a ``.pt``/``.pth``/``.bin`` (torch), ``.pdparams`` (Paddle), ``.safetensors`` or ``.npz`` file.
        framework: whose names the file uses (``"torch"``/``"paddle"``), when neither key names nor format tell.

    Returns:
        StateDict: ``{name: value}``, unwrapped from ``{"state_dict": ...}``-style containers, with ``framework``,
        ``format`` and ``notes`` set. Values are torch tensors for torch files; for the other formats numpy arrays,
        or a framework tensor for bfloat16/float8 (numpy has no such dtype), bit for bit.

    Raises:
        XFreezeError: a missing, empty, truncated, corrupt, self-referencing or oversized-declaring file, an unknown
            format, keys that are not strings, values that are not tensors, or a pickle that asks to run code (the
            code never runs). The message names the file and what was wrong.

    Example:
        >>> import numpy as np, tempfile, os, xfreeze
        >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
        >>> _ = xfreeze.save_checkpoint({"fc.weight": np.ones((2, 3), "float32")}, path)
        >>> xfreeze.load_checkpoint(path)["fc.weight"].shape
        (2, 3)
    """
    if framework is not None:
        check_choice("framework", framework, tuple(ADAPTERS))
    path = Path(path)
    what = f"checkpoint {str(path)!r}"
    if not path.exists():
        raise XFreezeError(f"{what} does not exist")
    if path.is_dir():
        raise XFreezeError(f"{what} is a directory; pass the weights file inside it")
    size = path.stat().st_size
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
    state.framework = _decide_framework(state, framework, meta, fmt)
    state.metadata = dict(meta) if isinstance(meta, dict) else {}
    return state


def save_checkpoint(obj, path, *, format: str | None = None, rank: int | None = None) -> Path:
    """Write a state dict (tensors of either framework or numpy arrays) or a model's weights, atomically.

    Dtypes are kept bit for bit (bfloat16 and float8 included; npz refuses them, naming the tensor). The file gets
    the mode a plain ``open()`` would give; a symlink is written through (its target is replaced, the link stays);
    a killed save leaves only ``.<name>.xfreeze-<pid>-<random>.tmp``, removed by the next save to the same path.

    Args:
        obj: a ``{name: tensor}`` mapping (string keys), or a torch / Paddle model (its ``state_dict()``).
        path: where to write; the suffix picks the format (``.pt``/``.pth``/``.bin``, ``.pdparams``,
            ``.safetensors``, ``.npz``) unless ``format`` is given.
        format: ``"torch"``, ``"paddle"``, ``"safetensors"`` or ``"npz"``.
        rank: under a process group, call on every rank: all gather the full state (FSDP shards too), this rank
            writes, all wait at a barrier.

    Returns:
        Path: the path written (as given, a symlink stays a symlink).

    Raises:
        XFreezeError: an unknown format, non-string keys, non-tensor values, a dtype the format cannot hold, a key
            the format reserves (``__metadata__`` in safetensors), a folder that does not exist, or the disk full /
            read-only / not permitted (the previous file is intact).

    Example:
        >>> import numpy as np, tempfile, os, xfreeze
        >>> path = xfreeze.save_checkpoint({"w": np.zeros(2, "float32")}, os.path.join(tempfile.mkdtemp(), "w.pt"))
        >>> path.name
        'w.pt'
    """
    if rank is not None:
        save_on_rank(obj, rank, lambda state: _save(state, path, format))
        return Path(path)
    return _save(obj, path, format)


def _save(obj, path, format, metadata: dict | None = None) -> Path:
    path = Path(path)
    fmt = formats.for_saving(format, path)
    target = Path(os.path.realpath(path))  # a symlink is written through: its target is what gets replaced
    if not target.parent.is_dir():
        raise XFreezeError(f"folder {str(target.parent)!r} does not exist")
    state = obj if isinstance(obj, dict) else _model_state(obj)
    check_keys(state, f"state dict for {str(path)!r}")
    framework = getattr(state, "framework", None) or values_framework(state)
    write = fmt.write(state, fmt, framework, metadata or {})
    try:
        _atomic_write(target, write)
    except OSError as exc:
        raise XFreezeError(
            f"cannot write {str(path)!r}: {exc.strerror or exc} ({_errno_name(exc)}); any previous file there is intact"
        ) from None
    return path


def detect_format(path) -> FileFormat:
    """The registry entry (:mod:`xfreeze.weights.formats`) whose structure the file has; an error naming the file
    otherwise. ``.name`` is the format's name."""
    return formats.detect(Path(path), f"checkpoint {str(path)!r}")


# --- atomic writes ------------------------------------------------------------------------------------------
def _atomic_write(target: Path, write) -> None:
    _remove_stale_temps(target)
    tmp = target.parent / f".{target.name}.xfreeze-{os.getpid()}-{os.urandom(4).hex()}.tmp"  # threads: distinct
    existing = target.stat().st_mode & 0o7777 if target.exists() else None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            if existing is not None:
                os.fchmod(f.fileno(), existing)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove_stale_temps(target: Path) -> None:
    """Temporary files of earlier saves to ``target`` whose process is gone (killed mid-save)."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.xfreeze-(\d+)-[0-9a-f]{{8}}\.tmp$")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        match = pattern.match(name)
        if match and not _alive(int(match.group(1))):
            (target.parent / name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread's save in progress (our own failed saves remove their file)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


# --- helpers ------------------------------------------------------------------------------------------------
def _decide_framework(state: StateDict, framework, meta: dict, fmt) -> str | None:
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


def _model_state(model) -> dict:
    adapter = adapter_for(model)
    return StateDict(adapter.state_tensors(model), framework=adapter.name)


__all__ = [
    "StateDict",
    "load_checkpoint",
    "save_checkpoint",
    "as_state_dict",
    "describe",
    "detect_format",
    "escape",
    "plain",
]

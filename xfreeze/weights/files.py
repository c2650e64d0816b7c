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
import hashlib
import os
import re
import shutil
from pathlib import Path

from ..backends import ADAPTERS
from ..backends.formats import FileFormat
from ..core.dispatch import adapter_for
from ..core.errors import XFreezeError, check_choice
from ..core.table import escape, human_bytes, plain  # noqa: F401  (escape, plain: re-exported, the CLI uses them)
from . import folders, formats
from .paths import as_path
from .paths import errno_name as _errno_name
from .paths import shown as _shown
from .ranks import save_on_rank
from .reading import read_file
from .statedict import (  # StateDict, as_state_dict, describe: re-exported (their earlier home, the CLI's import)
    StateDict,
    as_state_dict,
    check_keys,
    describe,
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
        XFreezeError: a ``path`` that is not a path (an int, None, a file object) or is too long for the system, a
            missing, empty, truncated, corrupt, self-referencing or oversized-declaring file, an unknown format, keys
            that are not strings, values that are not tensors, or a pickle that asks to run code (the code never
            runs). The message names the file and what was wrong.

    Example:
        >>> import numpy as np, tempfile, os, xfreeze
        >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
        >>> _ = xfreeze.save_checkpoint({"fc.weight": np.ones((2, 3), "float32")}, path)
        >>> xfreeze.load_checkpoint(path)["fc.weight"].shape
        (2, 3)
    """
    if framework is not None:
        check_choice("framework", framework, tuple(ADAPTERS))
    path = as_path(path)
    if path.is_dir():
        return folders.read_folder(path, framework)
    return read_file(path, framework)


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
        XFreezeError: a ``path`` that is not a path or is too long, a directory, an unknown format, non-string
            keys, non-tensor values, a dtype the format cannot hold, a key the format reserves (``__metadata__`` in
            safetensors), a folder that does not exist or is not writable, or the disk full (with the free space) /
            read-only / not permitted. Nothing is left behind and the previous file is intact.

    Example:
        >>> import numpy as np, tempfile, os, xfreeze
        >>> path = xfreeze.save_checkpoint({"w": np.zeros(2, "float32")}, os.path.join(tempfile.mkdtemp(), "w.pt"))
        >>> path.name
        'w.pt'
    """
    if rank is not None:
        path = as_path(path)
        save_on_rank(obj, rank, lambda state: _save(state, path, format))
        return path
    return _save(obj, path, format)


def check_writable(path, *, format: str | None = None) -> Path:
    """Check, before any work, that a checkpoint can be saved at ``path``: a path (not too long) that is not a
    directory, whose suffix (or ``format``) names a format xfreeze writes, in a folder that exists and is writable.
    Imports no framework.

    Args:
        path: where the checkpoint will be written.
        format: ``"torch"``, ``"paddle"``, ``"safetensors"`` or ``"npz"``; default: from the suffix.

    Returns:
        Path: ``path`` as a :class:`~pathlib.Path`.

    Raises:
        XFreezeError: naming ``path`` and what is wrong with it.

    Example:
        >>> import tempfile, os
        >>> check_writable(os.path.join(tempfile.mkdtemp(), "w.pdparams")).suffix
        '.pdparams'
    """
    path = as_path(path)
    _, target = _target(path, format)
    probe = target.parent / _temp_name(target.name, f"{os.getpid()}-{os.urandom(4).hex()}")
    try:  # access() says yes to root on a folder that refuses files (/sys): create one to know
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise XFreezeError(f"cannot write {_shown(path)}: {exc.strerror or exc} ({_errno_name(exc)})") from None
    return path


def _target(path: Path, format) -> tuple:
    """(format entry, real file to replace) for saving to ``path``, after every check that needs no data."""
    shown = _shown(path)
    try:
        target = Path(os.path.realpath(path))  # a symlink is written through: its target is what gets replaced
        is_dir = target.is_dir()
    except OSError as exc:
        raise XFreezeError(f"cannot write {shown}: {exc.strerror or exc} ({_errno_name(exc)})") from None
    if is_dir:
        raise XFreezeError(
            f"cannot write {shown}: it is a directory; name a file inside it, e.g. {_shown(path / 'w.pt')}"
        )
    fmt = formats.for_saving(format, path)
    if not target.parent.is_dir():
        raise XFreezeError(f"cannot write {shown}: folder {_shown(target.parent)} does not exist")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise XFreezeError(
            f"cannot write {shown}: folder {_shown(target.parent)} is not writable (permission or a read-only disk)"
        )
    return fmt, target


def _save(obj, path, format, metadata: dict | None = None) -> Path:
    path = as_path(path)
    fmt, target = _target(path, format)
    state = obj if isinstance(obj, dict) else _model_state(obj)
    check_keys(state, f"state dict for {str(path)!r}")
    framework = getattr(state, "framework", None) or values_framework(state)
    write = fmt.write(state, fmt, framework, metadata or {})
    try:
        _atomic_write(target, write)
    except OSError as exc:
        raise XFreezeError(
            f"cannot write {_shown(path)}: {exc.strerror or exc} ({_errno_name(exc)}){_space_left(target, exc)}; "
            "nothing was left behind and any previous file there is intact"
        ) from None
    return path


def detect_format(path) -> FileFormat:
    """The registry entry (:mod:`xfreeze.weights.formats`) whose structure the file has; an error naming the file
    otherwise. ``.name`` is the format's name."""
    path = as_path(path)
    return formats.detect(path, f"checkpoint {str(path)!r}")


def _space_left(target: Path, exc: OSError) -> str:
    """What the disk has left, for a write that ran out of room."""
    if exc.errno == errno.EFBIG:
        return " (a file size limit, e.g. ulimit -f, stopped it)"
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return ""
    try:
        free = shutil.disk_usage(target.parent).free
    except OSError:
        return ""
    return f"; {human_bytes(free)} ({free:,} bytes) free in {_shown(target.parent)}"


# --- atomic writes ------------------------------------------------------------------------------------------
def _atomic_write(target: Path, write) -> None:
    _remove_stale_temps(target)
    tmp = target.parent / _temp_name(target.name, f"{os.getpid()}-{os.urandom(4).hex()}")  # threads: distinct
    existing = target.stat().st_mode & 0o7777 if target.exists() else None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            if existing is not None:
                os.fchmod(f.fileno(), existing)
            sink = _RecordingFile(f)
            try:
                write(sink)
            except OSError:
                raise
            except Exception as exc:  # torch.save reports a failed write as RuntimeError("unexpected pos ...")
                if sink.error is not None:
                    raise sink.error from exc
                raise
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


class _RecordingFile:
    """The file a format writes to, keeping the first OSError its writes raised (a full disk), so that a writer
    that turns it into its own error (torch's zip writer: ``RuntimeError``) still reports the real cause."""

    def __init__(self, f) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data):
        return self._recorded(self._f.write, data)

    def flush(self):
        return self._recorded(self._f.flush)

    def _recorded(self, call, *args):
        try:
            return call(*args)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def _temp_stem(name: str) -> str:
    """``name``, or for a name near NAME_MAX a shorter unique stand-in, so that the temporary name fits too."""
    if len(name.encode()) <= 200:
        return name
    return name.encode()[:120].decode(errors="ignore") + "~" + hashlib.sha1(name.encode()).hexdigest()[:16]


def _temp_name(name: str, tag: str) -> str:
    return f".{_temp_stem(name)}.xfreeze-{tag}.tmp"


def _remove_stale_temps(target: Path) -> None:
    """Temporary files of earlier saves to ``target`` whose process is gone (killed mid-save)."""
    pattern = re.compile(rf"^\.{re.escape(_temp_stem(target.name))}\.xfreeze-(\d+)-[0-9a-f]{{8}}\.tmp$")
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


# --- helpers ------------------------------------------------------------------------------------------------
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
    "check_writable",
    "as_path",
    "escape",
    "plain",
]

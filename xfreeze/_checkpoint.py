"""Checkpoint files: torch .pt/.pth/.bin, Paddle .pdparams, .safetensors and .npz, detected from content.

Loading never executes code from the file: torch files go through ``torch.load(weights_only=True)``, Paddle's
pickles through a restricted unpickler that admits numpy array reconstruction and plain containers only,
safetensors and npz (``allow_pickle=False``) hold no code. Saving is atomic: a temporary file in the same folder,
fsync, then rename, so a crash mid-save leaves the previous file intact.
"""
from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ._backend import adapter_named, tensor_backend
from ._errors import XFreezeError

FORMATS = {".pt": "torch", ".pth": "torch", ".bin": "torch", ".pdparams": "paddle", ".safetensors": "safetensors",
           ".npz": "npz"}
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "params", "weights")
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"),
}


class StateDict(dict):
    """A ``{name: array}`` mapping that remembers where it came from.

    Attributes:
        framework: ``"torch"``, ``"paddle"`` or None (unknown): whose names and layouts the keys follow.
        format: the file format it was read from (``"torch"``, ``"paddle"``, ``"safetensors"``, ``"npz"``) or None.
        notes: what was done to it on the way (unwrapping, conversion), as ``(key, note)`` pairs.
    """

    def __init__(self, *args, framework=None, format=None, notes=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.framework, self.format, self.notes = framework, format, list(notes or [])


def load_checkpoint(path) -> StateDict:
    """Read a checkpoint file safely; the format is detected from the content, not only the suffix.

    Args:
        path: a ``.pt``/``.pth``/``.bin`` (torch), ``.pdparams`` (Paddle), ``.safetensors`` or ``.npz`` file.

    Returns:
        StateDict: ``{name: tensor or numpy array}`` (torch files give torch tensors, the others numpy arrays),
        unwrapped from ``{"state_dict": ...}``-style containers, with ``framework`` and ``format`` set.

    Raises:
        XFreezeError: a missing, empty, truncated or corrupt file, an unknown format, or a pickle that asks to run
            code (the code never runs). The message names the file and what was wrong.

    Example:
        >>> import numpy as np, tempfile, os, xfreeze
        >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
        >>> _ = xfreeze.save_checkpoint({"fc.weight": np.ones((2, 3), "float32")}, path)
        >>> xfreeze.load_checkpoint(path)["fc.weight"].shape
        (2, 3)
    """
    path = Path(path)
    if not path.exists():
        raise XFreezeError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise XFreezeError(f"checkpoint {str(path)!r} is a directory; pass the weights file inside it")
    if path.stat().st_size == 0:
        raise XFreezeError(f"checkpoint {str(path)!r} is empty (0 bytes): an interrupted save or download?")
    kind = detect_format(path)
    readers = {"torch": _read_torch, "paddle": _read_pickle, "safetensors": _read_safetensors, "npz": _read_npz}
    try:
        data, framework = readers[kind](path)  # framework: what the file says of itself, if anything
    except XFreezeError:
        raise
    except Exception as exc:  # every reader's own way of saying "truncated" or "corrupt"
        raise XFreezeError(f"checkpoint {str(path)!r} ({kind} format) is truncated or corrupt: "
                           f"{type(exc).__name__}: {exc}") from None
    state = as_state_dict(data, framework=framework, format=kind, what=f"checkpoint {str(path)!r}")
    state.framework = state.framework or {"torch": "torch", "paddle": "paddle"}.get(kind)  # names first, then format
    return state


def save_checkpoint(obj, path, *, format: str | None = None) -> Path:
    """Write a state dict (tensors of either framework or numpy arrays) or a model's weights, atomically.

    Args:
        obj: a ``{name: tensor}`` mapping, or a torch / Paddle model (its ``state_dict()``).
        path: where to write; the suffix picks the format (``.pt``/``.pth``/``.bin``, ``.pdparams``,
            ``.safetensors``, ``.npz``) unless ``format`` is given.
        format: ``"torch"``, ``"paddle"``, ``"safetensors"`` or ``"npz"``.

    Returns:
        Path: the written file. A crash mid-save leaves any previous file at ``path`` intact.

    Raises:
        XFreezeError: an unknown format, non-tensor values, or a folder that does not exist.
    """
    path = Path(path)
    kind = format or FORMATS.get(path.suffix.lower())
    if kind not in ("torch", "paddle", "safetensors", "npz"):
        raise XFreezeError(f"cannot tell the format of {str(path)!r}: use a suffix among {sorted(FORMATS)} or "
                           f"format='torch'|'paddle'|'safetensors'|'npz'")
    if not path.parent.is_dir():
        raise XFreezeError(f"folder {str(path.parent)!r} does not exist")
    state = obj if isinstance(obj, dict) else _model_state(obj)
    framework = getattr(state, "framework", None) or _framework_of(state)
    arrays = {k: to_numpy(v, k) for k, v in state.items()}
    writers = {"torch": _write_torch, "paddle": _write_pickle, "safetensors": _write_safetensors, "npz": _write_npz}
    _atomic_write(path, lambda f: writers[kind](arrays, f, framework))
    return path


def detect_format(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(path).namelist()
        except zipfile.BadZipFile:
            raise XFreezeError(f"checkpoint {str(path)!r} is truncated or corrupt: an incomplete zip archive "
                               f"(torch .pt or .npz)") from None
        return "npz" if names and all(n.endswith(".npy") for n in names) else "torch"
    if head[:1] == b"\x80":  # a pickle: Paddle .pdparams, or a torch file in the legacy format
        return "torch" if _is_legacy_torch(head) else "paddle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    suffix = FORMATS.get(path.suffix.lower())
    raise XFreezeError(f"checkpoint {str(path)!r} is not a torch, Paddle, safetensors or npz file"
                       + (f" (the suffix says {suffix}, the content does not)" if suffix else ""))


def as_state_dict(data, *, framework=None, format=None, what="the state dict") -> StateDict:
    """Unwrap ``{"state_dict": {...}, "epoch": 3}``-style containers and check that every value is a tensor."""
    notes = []
    while isinstance(data, dict) and not _all_tensors(data):
        inner = [k for k in WRAPPER_KEYS if isinstance(data.get(k), dict)]
        if not inner:
            break
        notes.append((inner[0], f"unwrapped {what}[{inner[0]!r}]"))
        data = data[inner[0]]
    if not isinstance(data, dict):
        raise XFreezeError(f"{what} holds a {type(data).__name__}, not a mapping of names to tensors")
    data = {k: v for k, v in data.items() if k != "StructuredToParameterName@@"}  # Paddle's own bookkeeping
    bad = [k for k, v in data.items() if not _is_tensor(v)]
    if bad:
        shown = ", ".join(f"{k!r} ({type(data[k]).__name__})" for k in bad[:5])
        raise XFreezeError(f"{what} has values that are not tensors: {shown}"
                           f"{' ...' if len(bad) > 5 else ''}. Pass the weights mapping itself (e.g. ckpt['model'])")
    return StateDict(data, framework=framework or _framework_of(data), format=format, notes=notes)


def to_numpy(value, key="") -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    backend = tensor_backend(value)
    if backend is None:
        raise XFreezeError(f"value of {key!r} is a {type(value).__name__}, not a tensor or numpy array")
    return adapter_named(backend).to_numpy(value)


def _contiguous(array: np.ndarray) -> np.ndarray:
    return np.require(array, requirements="C")  # unlike np.ascontiguousarray, keeps 0-d arrays 0-d


def _is_tensor(value) -> bool:
    return isinstance(value, np.ndarray) or tensor_backend(value) is not None


def _all_tensors(data: dict) -> bool:
    return bool(data) and all(_is_tensor(v) for v in data.values())


def _framework_of(state) -> str | None:
    """Whose naming a mapping follows: names only one framework uses, then the tensors' type."""
    keys = list(state)
    if any(k.endswith(("._mean", "._variance")) for k in keys) or any(".self_attn.q_proj." in k for k in keys):
        return "paddle"
    if any(k.endswith((".running_mean", ".num_batches_tracked")) for k in keys) or \
            any(".attention.self.query." in k for k in keys):
        return "torch"
    kinds = {tensor_backend(v) for v in state.values()} - {None}
    return kinds.pop() if len(kinds) == 1 else None


def _model_state(model) -> dict:
    from ._backend import adapter_for
    adapter = adapter_for(model)
    return StateDict(adapter.state_arrays(model), framework=adapter.name)


def _is_legacy_torch(head: bytes) -> bool:
    # torch's legacy format starts by pickling a magic number: 0x1950a86a20f9469cfc6c as a LONG1 (\x8a\n)
    return head[2:4] == b"\x8a\n" and head[4:14] == (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise XFreezeError(f"refused to load {module}.{name}: the file asks to run code, and only numpy arrays and "
                           "plain containers are admitted. If you trust the file, load it with paddle.load yourself")


def _read_pickle(path: Path):
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f).load(), None
        except XFreezeError as exc:
            raise XFreezeError(f"checkpoint {str(path)!r}: {exc}") from None


def _read_torch(path: Path):
    adapter = adapter_named("torch")
    return adapter.load_file(path), None


def _read_safetensors(path: Path):
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata() or {}
        return {k: f.get_tensor(k) for k in f.keys()}, metadata.get("framework") or None


def _read_npz(path: Path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}, None


def _write_torch(arrays, f, framework):
    adapter_named("torch").save_file(arrays, f)


def _write_pickle(arrays, f, framework):
    pickle.dump({k: _contiguous(v) for k, v in arrays.items()}, f, protocol=4)  # what paddle.load reads


def _write_safetensors(arrays, f, framework):
    from safetensors.numpy import save
    f.write(save({k: _contiguous(v) for k, v in arrays.items()},
                 metadata={"framework": framework or "", "writer": "xfreeze"}))


def _write_npz(arrays, f, framework):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    f.write(buffer.getvalue())


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def describe(state: StateDict) -> dict:
    """Keys, shapes, dtypes and total bytes of a state dict (for ``xfreeze inspect``)."""
    arrays = {k: to_numpy(v, k) for k, v in state.items()}
    return {"framework": state.framework, "format": state.format, "keys": len(arrays),
            "bytes": int(sum(a.nbytes for a in arrays.values())),
            "tensors": [(k, tuple(a.shape), str(a.dtype)) for k, a in arrays.items()]}



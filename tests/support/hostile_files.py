"""Generate the hostile / broken checkpoint corpus into a folder (no checked-in binaries).

``python tests/hostile_files.py DIR`` writes every file; tests call :func:`generate` with a tmp dir. Each entry is
``name -> (file bytes, regex the XFreezeError message must match)``; ``BOMBS`` names those that declare far more
memory than the file holds (run under a memory cap by the tests).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
import zipfile

import numpy as np

GiB = 2**30


class _Reduce:
    """Pickles as ``func(*args)`` under func's own module and name (the unpickler sees only that global)."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _pickle(obj, protocol=4) -> bytes:
    return pickle.dumps(obj, protocol=protocol)


def _self_referencing() -> bytes:
    d = {}
    d["state_dict"] = d
    return _pickle(d)


def _self_referencing_list() -> bytes:
    items = []
    items.append(items)
    return _pickle({"model": {"w": items}})


def _reconstruct_bomb() -> bytes:
    from numpy.core.multiarray import _reconstruct

    return _pickle({"w": _Reduce(_reconstruct, (np.ndarray, (8 * GiB,), b"b"))}, protocol=2)


def _torch_legacy_bomb() -> bytes:
    # a legacy (pre-1.6) torch file whose storage declares 2**30 floats; built by hand, no torch needed
    storage = _Reduce(_persistent, ("storage", "Float", "0", "cpu", 2**30))
    buffer = io.BytesIO()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj.args if isinstance(obj, _Reduce) and obj.func is _persistent else None

    for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, {"w": storage}, ["0"]):
        Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue() + struct.pack("<q", 2) + b"\0" * 8


def _persistent():
    pass


def _ndarray_call_bomb() -> bytes:
    return _pickle({"w": _Reduce(np.ndarray, ((8 * GiB,), "b"))}, protocol=2)


def _frombuffer_bomb() -> bytes:
    from numpy.core.numeric import _frombuffer

    return _pickle({"w": _Reduce(_frombuffer, (b"\0" * 8, np.dtype("float32"), (2 * GiB,), "C"))}, protocol=4)


def _declared_bytes_bomb() -> bytes:
    # BINBYTES8 declaring 1 TiB in a 30-byte file
    return b"\x80\x04" + b"}\x94(\x8c\x01w\x94" + b"\x8e" + struct.pack("<Q", 2**40) + b"abc"


def _codecs_other() -> bytes:
    import _codecs

    return _pickle({"w": _Reduce(_codecs.encode, ("x", "rot13"))}, protocol=2)


def _runs_code() -> bytes:
    return _pickle({"w": np.ones(2), "x": _Reduce(os.system, ("echo pwned",))})


def _npy(shape, dtype="<f4", data=b"\0" * 8) -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def _zip(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _npz_bomb() -> bytes:
    return _zip({"w.npy": _npy((GiB,))})


def _npz_objects() -> bytes:
    return _zip({"w.npy": _npy((1,), dtype="|O", data=_pickle([1]))})


def _undecodable_zip_names() -> bytes:
    data = _zip({"\u00e9.npy": _npy((2,))})
    return data.replace("\u00e9".encode(), b"\xff\xfe")  # the UTF-8 flag stays set; the name no longer decodes


def _truncated_zip() -> bytes:
    data = _zip({"a.npy": _npy((2,)), "b.npy": _npy((2,))})
    return data[: len(data) - 30]


def _zip_size_bomb() -> bytes:
    # a stored member whose central directory entry claims 4 GiB uncompressed
    data = bytearray(_zip({"archive/data.pkl": b"\x80\x02}q\x00.", "archive/data/0": b"\0" * 8}))
    central = data.rfind(b"PK\x01\x02")  # the last central directory entry: archive/data/0
    data[central + 24 : central + 28] = struct.pack("<I", 2**32 - 1)
    return bytes(data)


def _torch_zip_without_data() -> bytes:
    return _zip({"archive/version": b"3\n"})


def _safetensors(header, data=b"", raw_header=None) -> bytes:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


CORPUS = {
    "memo_bomb.pdparams": (
        lambda: b"\x80\x02}r" + struct.pack("<I", 2**31) + b".",
        r"memo index 2,147,483,648 is beyond",
    ),
    "zip_size_bomb.pt": (_zip_size_bomb, r"zip member 'archive/data/0' declares 4,294,967,295 bytes"),
    "torch_legacy_bomb.pt": (_torch_legacy_bomb, r"declares 1,073,741,824 bytes of tensor data in a file of"),
    "ndarray_call_bomb.pdparams": (_ndarray_call_bomb, r"calls numpy.ndarray directly"),
    "self_reference.pdparams": (_self_referencing, r"refer to themselves"),
    "self_reference_list.pdparams": (_self_referencing_list, r"not tensors: 'w' \(list\)"),
    "reconstruct_bomb.pdparams": (_reconstruct_bomb, r"declares shape \(8589934592,\).*refused"),
    "frombuffer_bomb.pdparams": (_frombuffer_bomb, r"declares shape \(2147483648,\).*refused"),
    "declared_bytes.pdparams": (_declared_bytes_bomb, r"declares more bytes than the file holds"),
    "codecs_rot13.pdparams": (_codecs_other, r"refused: _codecs.encode with encoding 'rot13'"),
    "runs_code.pdparams": (_runs_code, r"refused to load posix.system|refused to load os.system"),
    "int_keys.pdparams": (
        lambda: _pickle({1: np.ones(2), "b": np.ones(1)}),
        r"keys that are not non-empty strings: 1 \(int\)",
    ),
    "npz_bomb.npz": (_npz_bomb, r"declares 4,294,967,296 bytes of data but holds .*refused"),
    "npz_objects.npz": (_npz_objects, r"holds Python objects"),
    "undecodable_names.npz": (_undecodable_zip_names, r"member names do not decode"),
    "truncated.npz": (_truncated_zip, r"truncated or corrupt: an incomplete zip"),
    "zip_not_torch.pt": (_torch_zip_without_data, r"neither a torch checkpoint"),
    "st_header_too_long.safetensors": (
        lambda: struct.pack("<Q", 10**6) + b'{"a": 1}',
        r"header declares 1,000,000 bytes, more than the file",
    ),
    "st_not_json.safetensors": (lambda: _safetensors(None, raw_header=b"{not json!"), r"not valid JSON"),
    "st_offsets_beyond.safetensors": (
        lambda: _safetensors({"w": {"dtype": "F32", "shape": [2**30], "data_offsets": [0, 2**32]}}, b"\0" * 8),
        r"offsets beyond the data",
    ),
    "st_shape_mismatch.safetensors": (
        lambda: _safetensors({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
        r"does not fill offsets",
    ),
    "st_unknown_dtype.safetensors": (
        lambda: _safetensors({"w": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\0" * 16),
        r"lacks a known dtype",
    ),
    "st_gap.safetensors": (
        lambda: _safetensors({"w": {"dtype": "U8", "shape": [1], "data_offsets": [4, 5]}}, b"\0" * 5),
        r"overlaps or leaves gaps",
    ),
    "st_list_header.safetensors": (
        lambda: _safetensors(None, raw_header=b"{}" + b" " * 0)[:8] + b"[]",
        r"not a torch, Paddle",
    ),
    "random.bin": (lambda: bytes(range(7, 250)) * 3, r"not a torch, Paddle, safetensors or npz file"),
}
# files that declare far more memory than they hold
BOMBS = (
    "memo_bomb.pdparams",
    "zip_size_bomb.pt",
    "torch_legacy_bomb.pt",
    "ndarray_call_bomb.pdparams",
    "reconstruct_bomb.pdparams",
    "frombuffer_bomb.pdparams",
    "declared_bytes.pdparams",
    "npz_bomb.npz",
    "st_offsets_beyond.safetensors",
    "self_reference.pdparams",
)


def generate(folder) -> dict:
    """Write the corpus into ``folder``; ``{path: message regex}``."""
    out = {}
    for name, (build, pattern) in CORPUS.items():
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(build())
        out[path] = pattern
    return out


if __name__ == "__main__":
    for path in generate(sys.argv[1] if len(sys.argv) > 1 else "."):
        print(path)


# --- hostile delta files (issue 18): a valid delta, rewritten -------------------------------------------------------
_ST_CODES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "int64": "I64",
    "int32": "I32",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "complex64": "C64",
}


def rewrite_safetensors(src, dst, *, tensors=None, drop=(), metadata=None) -> None:
    """Copy the safetensors file ``src`` to ``dst`` with ``tensors`` (numpy arrays) replaced or added, the keys in
    ``drop`` removed, and ``metadata`` fields replaced (a value of None removes the field). No xfreeze code runs, so
    the result is whatever a hand-edited file can be."""
    with open(src, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8 : 8 + n]), data[8 + n :]
    meta = header.pop("__metadata__", {})
    entries = {
        k: (v["dtype"], v["shape"], body[v["data_offsets"][0] : v["data_offsets"][1]]) for k, v in header.items()
    }
    for key in drop:
        del entries[key]
    for key, array in (tensors or {}).items():
        array = np.ascontiguousarray(array)
        entries[key] = (
            _ST_CODES[array.dtype.name],
            list(array.shape),
            array.astype(array.dtype.newbyteorder("<")).tobytes(),
        )
    for key, value in (metadata or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    out, chunks, offset = {"__metadata__": meta}, [], 0
    for key, (code, shape, raw) in entries.items():
        out[key] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    with open(dst, "wb") as f:
        f.write(_safetensors(out, b"".join(chunks)))

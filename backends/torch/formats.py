"""torch's checkpoint files: the zip archive of ``torch.save`` and the legacy (pre-1.6) pickle stream. Data only:
importing this module imports no framework."""

from __future__ import annotations

import pickle

from ..formats import FileFormat

# torch's legacy (pre-1.6) format starts by pickling a magic number 0x1950a86a20f9469cfc6c as a LONG1 (\x8a\n)
_TORCH_LEGACY_MAGIC = b"\x8a\n" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _torch_zip(head: bytes, names: list) -> bool:
    return bool(names) and any(n == "data.pkl" or n.endswith("/data.pkl") for n in names)


def _torch_legacy(head: bytes, protocol) -> bool:
    return head[2:14] == _TORCH_LEGACY_MAGIC


_STORAGE_BYTES = {
    "Double": 8,
    "Float": 4,
    "Half": 2,
    "BFloat16": 2,
    "Long": 8,
    "Int": 4,
    "Short": 2,
    "Char": 1,
    "Byte": 1,
    "Bool": 1,
    "ComplexFloat": 8,
    "ComplexDouble": 16,
}


def _torch_legacy_declared_bytes(path) -> int:
    """Bytes of storage a legacy torch file declares. torch allocates each declared storage before reading it, so
    the core refuses a file declaring more than it holds. The pickles are read with inert stand-ins for every
    global (nothing is imported or called), only to collect the persistent ids ("storage", type, key, device, numel).
    """

    class Inert(dict):  # takes items, appends and state like whatever the real object was, and does nothing
        def __init__(self, name=""):
            super().__init__()
            self.name = name

        def __call__(self, *args, **kwargs):
            return Inert()

        def __setstate__(self, state):
            pass

        def append(self, item):
            pass

        def extend(self, items):
            pass

    declared = {}

    class Scan(pickle.Unpickler):
        def find_class(self, module, name):
            return Inert(name)

        def persistent_load(self, pid):
            if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[4], int):
                kind = getattr(pid[1], "name", "").replace("Storage", "")
                declared[str(pid[2])] = max(pid[4], 0) * _STORAGE_BYTES.get(kind, 1)
            return Inert()

    with open(path, "rb") as f:
        for _ in range(4):  # magic number, protocol version, system info, then the object with its storages
            Scan(f).load()
    return sum(declared.values())


FILE_FORMATS: tuple = (
    FileFormat(
        "torch",
        (".pt", ".pth", ".bin"),
        "zip",
        _torch_zip,
        read="adapter",
        write="adapter",
        framework="torch",
        missing="a torch checkpoint (no data.pkl)",
    ),
    FileFormat(
        "torch",
        (".pt", ".pth", ".bin"),
        "pickle",
        _torch_legacy,
        read="adapter",
        write=None,  # torch.save writes the zip archive
        framework="torch",
        declared_bytes=_torch_legacy_declared_bytes,
        pickles=4,
    ),
)

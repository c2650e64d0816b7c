"""Paddle's checkpoint files: ``paddle.save`` writes a bare pickle (read by the core's restricted unpickler). Data only:
importing this module imports no framework."""

from __future__ import annotations

from ..formats import FileFormat
from ..torch.formats import _torch_legacy


def _paddle_pickle(head: bytes, names) -> bool:
    return names is None and not _torch_legacy(head, names)


FILE_FORMATS: tuple = (
    FileFormat("paddle", "paddle", (".pdparams",), "pickle", _paddle_pickle, "pickle", uint16_is="bfloat16"),
)

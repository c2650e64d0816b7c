"""Paddle's checkpoint files: ``paddle.save`` writes a bare pickle (read by the core's restricted unpickler). Data only:
importing this module imports no framework."""

from __future__ import annotations

from ..formats import FileFormat
from ..torch.formats import _torch_legacy


def _paddle_pickle(head: bytes, protocol) -> bool:
    return not _torch_legacy(head, protocol)


FILE_FORMATS: tuple = (
    FileFormat(
        "paddle",
        (".pdparams",),
        "pickle",
        _paddle_pickle,
        read="pickle",
        write="pickle",
        framework="paddle",
        label="Paddle",
        uint16_is="bfloat16",
    ),
)

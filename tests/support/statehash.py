"""state_hash(model): one digest of everything a failing call must leave alone, in either framework.

Covers every parameter and buffer (name, dtype, shape, bits), every trainability flag (requires_grad /
stop_gradient), every module's training flag and every forward (pre-)hook registered on it. Reuse it as
``before = state_hash(m); <failing call>; assert state_hash(m) == before``.
"""

from __future__ import annotations

import hashlib

from xfreeze.core.tensors import to_raw


def state_hash(model) -> str:
    digest = hashlib.sha256()
    modules = model.named_modules() if hasattr(model, "named_modules") else model.named_sublayers(include_self=True)
    for path, module in modules:
        digest.update(f"module {path} training={module.training}".encode())
        for attr in ("_forward_pre_hooks", "_forward_post_hooks", "_forward_hooks", "_backward_hooks"):
            hooks = getattr(module, attr, None) or {}
            digest.update(f"{attr}={[(k, getattr(h, '__qualname__', repr(h))) for k, h in hooks.items()]}".encode())
    params = model.named_parameters()
    for name, param in params:
        flag = param.requires_grad if hasattr(param, "requires_grad") else not param.stop_gradient
        _tensor(digest, f"param {name} trainable={flag}", param)
    for name, buffer in model.named_buffers():
        if buffer is not None:
            _tensor(digest, f"buffer {name}", buffer)
    return digest.hexdigest()


def _tensor(digest, label: str, value) -> None:
    raw = to_raw(value, label)
    digest.update(f"{label} {raw.dtype} {raw.shape}".encode())
    digest.update(raw.bits.tobytes())

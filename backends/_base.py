"""What the torch and Paddle adapters share: both keep forward pre-hooks in ``_forward_pre_hooks``."""
from __future__ import annotations


def keep_eval(module, args):
    """Forward pre-hook of a locked norm layer: it runs as in eval mode whatever ``model.train()`` said."""
    module.training = False


class Adapter:
    """Base of every adapter. Subclasses override one small method per real framework difference."""

    name = ""

    def lock_norm(self, module) -> None:
        if not self.is_norm_locked(module):
            module.register_forward_pre_hook(keep_eval)
        module.training = False  # visible at once, not only from the next forward

    def unlock_norm(self, module, training: bool) -> None:
        hooks = module._forward_pre_hooks
        for key in [k for k, hook in hooks.items() if hook is keep_eval]:
            del hooks[key]
        module.training = training

    def is_norm_locked(self, module) -> bool:
        return any(hook is keep_eval for hook in module._forward_pre_hooks.values())

    def named_statistics(self, model):
        """Every norm layer's running statistics under torch's names (``bn1.running_mean``), in model order."""
        return [(f"{path}.{name}" if path else name, t) for path, m in self.named_modules(model)
                for name, t in self.norm_statistics(m)]

    def sync_grads(self, module) -> None:
        """Called after the trainability of ``module``'s own parameters changed (most frameworks: nothing)."""

    def class_names(self, module) -> list[str]:
        return [cls.__name__ for cls in type(module).__mro__]

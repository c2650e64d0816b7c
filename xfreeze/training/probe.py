"""ProbeSweep: several heads, each with its own learning rate and decay, trained in one pass over a FeatureCache.

A linear-probe sweep usually reruns the frozen backbone once per setting. Over a :class:`~xfreeze.FeatureCache`
each step reads the batch's features once and hands them to every head; the heads' losses are summed into one
backward pass (each head's gradient is exactly its own loss's: the heads share no parameter) and each head has its
own optimizer.
"""

from __future__ import annotations

import copy

from ..core.errors import XFreezeError
from .cache import FeatureCache
from .optim import optimizer as build_optimizer


class ProbeSweep:
    """Copies of a model's head, each trained with its own optimizer settings on the same cached features.

    Args:
        cache: a filled (or filling) :class:`~xfreeze.FeatureCache`; every head starts as a copy of its head.
        configs: one dict of optimizer options per head, each with ``lr`` (and optionally ``weight_decay``,
            ``momentum``, ... as :func:`xfreeze.optimizer` takes them).
        optimizer: ``"sgd"``, ``"adam"``, ``"adamw"`` or an optimizer class, for every head.
        **options: options shared by every head (a config's own value wins).

    Raises:
        XFreezeError: not a FeatureCache, no configs, a config without a positive ``lr``, an option
            :func:`xfreeze.optimizer` refuses (before any head is built).

    Example:
        >>> import torch, xfreeze
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> _ = xfreeze.freeze(model, "*", "!2")
        >>> cache = xfreeze.FeatureCache(model, head="2", size=6)
        >>> sweep = xfreeze.ProbeSweep(cache, [{"lr": 0.1}, {"lr": 0.01, "weight_decay": 1e-4}], optimizer="sgd")
        >>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> losses = sweep.step(range(6), y, torch.nn.functional.cross_entropy, inputs=x)
        >>> len(losses), len(sweep.heads)
        (2, 2)
    """

    def __init__(self, cache: FeatureCache, configs, *, optimizer="sgd", **options):
        if not isinstance(cache, FeatureCache):
            raise XFreezeError(f"ProbeSweep needs an xfreeze.FeatureCache. Received: {type(cache).__name__}")
        configs = list(configs) if isinstance(configs, (list, tuple)) else configs
        if not isinstance(configs, list) or not configs or not all(isinstance(c, dict) for c in configs):
            raise XFreezeError(f"configs must be a non-empty list of dicts of optimizer options. Received: {configs!r}")
        for i, config in enumerate(configs):
            lr = config.get("lr")
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
                raise XFreezeError(f"configs[{i}] needs a learning rate lr > 0. Received: lr={lr!r}")
        self.cache, self.adapter = cache, cache.adapter
        self.configs = [{**options, **c} for c in configs]
        self.heads = [copy.deepcopy(cache.head_module) for _ in self.configs]
        self.optimizers = [
            build_optimizer(head, optimizer, backend=self.adapter.name, **config)
            for head, config in zip(self.heads, self.configs)
        ]

    def step(self, indices, targets, loss, *, inputs=None) -> list:
        """One training step of every head on the batch's cached features.

        Args:
            indices: the batch's sample indices.
            targets: what ``loss`` compares each head's output with.
            loss: ``loss(output, targets) -> scalar tensor`` (e.g. ``torch.nn.functional.cross_entropy``).
            inputs: the batch's model inputs, needed only for samples not filled yet.

        Returns:
            list: each head's loss, detached (call ``float()`` to log it).

        Raises:
            XFreezeError: the cache refuses the batch (stale, an index outside it, not filled without inputs), or
                it was dropped (the prefix trains again: a sweep needs a frozen one).
        """
        features = self.cache.features(inputs, indices)
        if self.cache.dropped:
            raise XFreezeError(
                f"ProbeSweep: the cache was dropped ({self.cache.dropped}); a sweep needs a frozen prefix"
            )
        losses = [loss(head(features), targets) for head in self.heads]
        total = losses[0]
        for value in losses[1:]:
            total = total + value
        total.backward()
        for opt in self.optimizers:
            opt.step()
            self.adapter.zero_grads(opt)
        return [value.detach() for value in losses]

"""The training layer: optimizer groups with absolute rates, staged unfreeze, the EMA, the optimizer check and the
DDP rewrap at stage boundaries. Imports :mod:`xfreeze.core` and :mod:`xfreeze.model`."""

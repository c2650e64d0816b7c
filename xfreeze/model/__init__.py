"""The model layer: one cached view of a model, selection by pattern, freeze/unfreeze with norm locks, heads,
summaries, layer ids and the distributed freeze guard. Imports only :mod:`xfreeze.core` and the framework-free
kind rules of :mod:`xfreeze.backends.kinds`."""

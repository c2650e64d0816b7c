"""The weights layer: state dicts, checkpoint files and their formats, conversion between frameworks, loading what
matches, and delta checkpoints. Imports :mod:`xfreeze.core` and :mod:`xfreeze.model`."""

"""Foundations every layer uses: errors, the framework dispatch, native tensors and tables. Imports no framework
and nothing else of xfreeze."""

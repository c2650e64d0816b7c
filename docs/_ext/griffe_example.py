"""Griffe extension: read a Google-style ``Example:`` section as ``Examples:``.

The project's docstrings title their runnable example ``Example:`` (Napoleon's Google style accepts both spellings);
griffe knows only ``Examples:`` and would render the doctest as Markdown (``>>>`` as nested quotes).
"""

from __future__ import annotations

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)


class ExampleSection(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)

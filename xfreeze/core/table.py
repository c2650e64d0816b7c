"""Plain-text tables through rich, so reports print the same in a terminal, a log file or a notebook."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape(text) -> str:
    """``text`` safe to print in a rich table or a terminal: control characters (ANSI escapes, bidi overrides) as
    ``\\x1b``-style escapes, and rich markup (``[bold]``, ``[/x]``) escaped so it prints literally."""
    from rich.markup import escape as markup_escape

    out = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
    return markup_escape(out)


def plain(text) -> str:
    """``text`` safe for a plain terminal line (no rich markup involved): control characters escaped only."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def render(title: str, columns: list[str], rows: list[list], footer: Sequence[str] = (), width: int = 120) -> str:
    # cells and titles are data (checkpoint keys, paths), never markup or terminal escapes
    table = Table(title=escape(title), title_justify="left", show_lines=False)
    for i, column in enumerate(columns):
        table.add_column(
            column,
            justify="left" if i == 0 or column in ("type", "norm", "state", "examples") else "right",
            no_wrap=i == 0,
            overflow="fold",
        )
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, legacy_windows=False, soft_wrap=False)
    console.print(table)
    for line in footer:
        console.print(plain(line), highlight=False, markup=False)
    return out.getvalue().rstrip()


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@dataclass(frozen=True)
class Counts:
    """Trainable and frozen parameters of a model: tensors, elements and bytes."""

    trainable: int = 0
    frozen: int = 0
    trainable_bytes: int = 0
    frozen_bytes: int = 0
    trainable_tensors: int = 0
    frozen_tensors: int = 0

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    def lines(self) -> list[str]:
        return [
            f"trainable: {self.trainable:,} parameters in {self.trainable_tensors} tensors "
            f"({human_bytes(self.trainable_bytes)})",
            f"frozen:    {self.frozen:,} parameters in {self.frozen_tensors} tensors "
            f"({human_bytes(self.frozen_bytes)})",
            f"total:     {self.total:,} parameters",
        ]


def counts(view, trainable=None) -> Counts:
    """Trainable / frozen totals of a model view (``trainable``: a live mask, read when not given)."""
    mask = view.trainable() if trainable is None else trainable
    numels, nbytes = view.numels, view.nbytes
    return Counts(
        int(numels[mask].sum()),
        int(numels[~mask].sum()),
        int(nbytes[mask].sum()),
        int(nbytes[~mask].sum()),
        int(mask.sum()),
        int((~mask).sum()),
    )

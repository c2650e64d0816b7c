"""Plain-text tables through rich, so reports print the same in a terminal, a log file or a notebook."""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from rich.text import Text


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


LEFT = ("type", "norm", "state", "examples")  # besides the first: columns of words, not numbers
BREAKS = re.compile(r"(?<=[./_\-\s,;:=])")  # a long name or path may break after these, never inside a word


def terminal_width(default: int = 120) -> int:
    """The width to render at: ``COLUMNS`` or the terminal's, else ``default`` (a log file, a pipe)."""
    return max(shutil.get_terminal_size((default, 24)).columns, 40)


def render(
    title: str, columns: list[str], rows: list[list], footer: Sequence[str] = (), width: int | None = None
) -> str:
    """A plain-text table (cells are data: never markup, control characters escaped) at most ``width`` wide
    (default: :func:`terminal_width`) when it can be: headers wrap between words, names and paths after a ``.``,
    ``/``, ``_`` or ``-``, numbers never. A table whose numbers alone are wider is printed whole, not cut."""
    width = terminal_width() if width is None else width
    cells = [[plain(cell) for cell in row] for row in rows]
    widths = _column_widths(columns, cells, width)
    table = Table(title=Text(plain(title)), title_justify="left", show_lines=False)
    for i, column in enumerate(columns):
        left = i == 0 or column in LEFT
        table.add_column(
            Text(plain(column)), justify="left" if left else "right", width=widths[i], no_wrap=False, overflow="fold"
        )
    for row in cells:
        table.add_row(*(Text(_wrap(cell, widths[i]) if widths[i] else cell) for i, cell in enumerate(row)))
    needed = sum(w or 0 for w in widths) + 3 * len(columns) + 1
    out = io.StringIO()
    console = Console(
        file=out, width=max(width, needed), color_system=None, legacy_windows=False, soft_wrap=False, highlight=False
    )
    console.print(table)
    for line in footer:  # whole lines: a terminal wraps them, nothing cuts them
        console.print(Text(plain(line)), soft_wrap=True)
    return "\n".join(line.rstrip() for line in out.getvalue().rstrip().splitlines())


def _column_widths(columns: list[str], cells: list[list[str]], width: int) -> list:
    """Per column: None (its natural width, when the table fits) or the width to wrap its cells at."""
    natural = [max([len(columns[i])] + [len(row[i]) for row in cells]) for i in range(len(columns))]
    room = width - 3 * len(columns) - 1
    if sum(natural) <= room:
        return [None] * len(columns)
    floors = []
    for i, column in enumerate(columns):
        word = max((len(w) for w in column.split()), default=1)  # a header wraps between words only
        left = i == 0 or column in LEFT
        longest = max((len(row[i]) for row in cells), default=0)
        floors.append(max(word, min(natural[i], 12)) if left else max(word, longest))
    widths = list(floors)
    spare = room - sum(floors)
    wanted = [i for i in range(len(columns)) if natural[i] > widths[i]]
    while spare > 0 and wanted:  # share what is left among the columns that would wrap
        share = max(spare // len(wanted), 1)
        for i in list(wanted):
            give = min(share, natural[i] - widths[i], spare)
            widths[i] += give
            spare -= give
            if widths[i] >= natural[i]:
                wanted.remove(i)
            if spare <= 0:
                break
    return widths


def _wrap(text: str, width: int) -> str:
    """``text`` in lines of at most ``width``, broken after separators (``layer4.2.`` / ``downsample.0``); a piece
    longer than ``width`` with no separator is the only thing cut."""
    if len(text) <= width or width < 1:
        return text
    lines, line = [], ""
    for piece in BREAKS.split(text):
        while len(piece) > width:  # no separator to break at: cut (a single word wider than the column)
            if line:
                lines.append(line)
                line = ""
            lines.append(piece[:width])
            piece = piece[width:]
        if len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    lines.append(line)
    return "\n".join(part.rstrip() for part in lines if part)


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

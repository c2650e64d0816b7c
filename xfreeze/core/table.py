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
    title: str,
    columns: list[str],
    rows: list[list],
    footer: Sequence[str] = (),
    width: int | None = None,
    *,
    elide: int = 0,
) -> str:
    """A plain-text table (cells are data: never markup, control characters escaped) at most ``width`` wide
    (default: :func:`terminal_width`) when it can be: headers wrap between words, names and paths after a ``.``,
    ``/``, ``_`` or ``-``, numbers never. A table whose numbers alone are wider is printed whole, not cut.
    ``elide``: one line per row instead: a long path of the first column loses middle segments
    (:func:`elide_path`, its last ``elide`` names kept), other words end in ``…``."""
    width = terminal_width() if width is None else width
    cells = [[plain(cell) for cell in row] for row in rows]
    widths = (_elided_widths if elide else _column_widths)(columns, cells, width)
    if elide:
        names = _distinct([row[0] for row in cells], widths[0], elide)
        cells = [[name] + [_shorten(c, w, 0) for c, w in zip(row[1:], widths[1:])] for name, row in zip(names, cells)]
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


ELLIPSIS = "…"
GROUP = re.compile(r" \(x\d+\)$")  # a folded run of blocks: "layer3.1-5 (x5)"
WORD_MIN = 16  # a word column (type, norm) shown this wide at least, when its words are longer
FIRST_MIN = 24  # a table that drops columns keeps its first (names, paths) at least this wide


def elide_path(path: str, width: int, tail: int = 1) -> str:
    """``path`` in at most ``width`` characters, on one line: whole dotted segments give way to ``…`` from the
    middle (``layer4.….conv2``). Kept first: the last ``tail`` names (when they fit), then numbered blocks nearest
    to them (``layer.3`` stays together), then the first name, then the rest from the right. A folded run's
    `` (x5)`` is always kept.

    Example:
        >>> elide_path("encoder.layers.encoder_layer_0.self_attention.out_proj", 30)
        '….encoder_layer_0.….out_proj'
    """
    if len(path) <= width:
        return path
    found = GROUP.search(path)
    count = found.group() if found else ""
    stem = path[: len(path) - len(count)]
    room = width - len(count)
    if room < 4:
        return path[: max(width - 1, 0)] + ELLIPSIS
    units = _units(stem)
    last = len(units) - 1
    kept = set(range(max(last - tail + 1, 0), last + 1))
    kept = kept if len(_join(units, kept)) <= room else {last}
    if len(_join(units, kept)) > room:  # the last name alone is too long: its end, cut
        return ELLIPSIS + stem[len(stem) - max(room - 1, 0) :] + count
    numbered = [i for i in range(min(kept) - 1, -1, -1) if any(c.isdigit() for c in units[i])]
    for n, i in enumerate(dict.fromkeys(numbered + [0] + list(range(last - 1, 0, -1)))):
        if len(_join(units, kept | {i})) <= room:
            kept.add(i)
        elif n == 0 and numbered:  # the numbered block nearest the last name does not fit whole: its end, after a "…"
            units, kept = _cut_unit(units, kept, i, room)
    return _join(units, kept) + count


def _units(path: str) -> list[str]:
    """The dotted segments of ``path``, a number joined to the name before it (``layer.3``, ``downsample.0``)."""
    units: list[str] = []
    for segment in path.split("."):
        if units and segment.replace("-", "").isdigit():
            units[-1] += "." + segment
        else:
            units.append(segment)
    return units


def _cut_unit(units: list[str], kept: set, i: int, room: int) -> tuple[list[str], set]:
    """``units`` with unit ``i`` cut to its longest end that fits ``room`` and still shows a whole number."""
    for k in range(len(units[i]) - 1, 0, -1):
        end = units[i][-k:]
        cut = units[:i] + [ELLIPSIS + end] + units[i + 1 :]
        whole = not (units[i][-k - 1].isdigit() and end[0].isdigit())  # never half a number: "…1" of "31"
        if whole and any(c.isdigit() for c in end) and len(_join(cut, kept | {i})) <= room:
            return cut, kept | {i}
    return units, kept


def _join(units: list[str], kept: set) -> str:
    """The kept units in order, each run of left-out ones as one ``…``."""
    out: list[str] = []
    for i, unit in enumerate(units):
        if i in kept:
            if unit.startswith(ELLIPSIS) and out and out[-1] == ELLIPSIS:  # a cut unit's own "…" stands for both
                out.pop()
            out.append(unit)
        elif not out or out[-1] != ELLIPSIS:
            out.append(ELLIPSIS)
    return ".".join(out)


def _distinct(paths: list[str], width: int | None, tail: int) -> list[str]:
    """``paths`` elided to ``width``; two that would read the same keep more of their last names, when they fit."""
    short = [_shorten(p, width, tail) for p in paths]
    for more in range(1, 4):
        seen: dict = {}
        for p, s in zip(paths, short):
            seen.setdefault(s, set()).add(p)
        clash = {s for s, originals in seen.items() if len(originals) > 1}
        if not clash:
            break
        short = [_shorten(p, width, tail + more) if s in clash else s for p, s in zip(paths, short)]
    return short


def _shorten(text: str, width: int | None, tail: int) -> str:
    """A cell in at most ``width`` characters: a path (``tail``: names kept) elided in its middle, words cut at the
    end."""
    if width is None or len(text) <= width:
        return text
    return elide_path(text, width, tail) if tail else text[: max(width - 1, 0)] + ELLIPSIS


def _natural(columns: list[str], cells: list[list[str]]) -> list[int]:
    return [max([len(columns[i])] + [len(row[i]) for row in cells]) for i in range(len(columns))]


def _floors(columns: list[str], cells: list[list[str]]) -> list[int]:
    """Per column, the least width that cuts no number and no header word (the first column: 0)."""
    floors = [0]
    for i, column in enumerate(columns[1:], 1):
        word = max((len(w) for w in column.split()), default=1)
        longest = max((len(row[i]) for row in cells), default=0)
        natural = max(len(column), longest)
        floors.append(max(word, min(natural, WORD_MIN)) if column in LEFT else max(word, longest))
    return floors


def _elided_widths(columns: list[str], cells: list[list[str]], width: int) -> list:
    """Per column: None (natural width, the table fits) or its width, cells elided to fit: the first column takes
    the room the others leave, then word columns and wrapped headers get the rest."""
    natural = _natural(columns, cells)
    room = width - 3 * len(columns) - 1
    if sum(natural) <= room:
        return [None] * len(columns)
    widths = _floors(columns, cells)
    widths[0] = max(min(natural[0], room - sum(widths)), min(natural[0], 8))
    spare = room - sum(widths)
    for i in sorted(range(1, len(columns)), key=lambda i: columns[i] not in LEFT):  # words first, then headers
        give = max(min(natural[i] - widths[i], spare), 0)
        widths[i] += give
        spare -= give
    return widths


def fit_columns(
    columns: list[str], rows: list[list], width: int, optional: Sequence[str] = (), first_min: int = FIRST_MIN
) -> list[int]:
    """The indices of the columns to show ``width`` wide: every one when the table fits with its first column
    whole or at least ``first_min`` wide (with :func:`render`'s ``elide``), else the ``optional`` columns are left
    out, in their order, until it does (all of them when it never does)."""
    cells = [[plain(cell) for cell in row] for row in rows]
    floors, natural = _floors(columns, cells), _natural(columns, cells)
    shown = list(range(len(columns)))
    for name in [None, *optional]:
        if name is not None:
            shown.remove(columns.index(name))
        need = sum(floors[i] for i in shown) + 3 * len(shown) + 1 + min(natural[0], first_min)
        if need <= width:
            break
    return shown


def needed_width(columns: list[str], rows: list[list]) -> int:
    """The width at which the table prints whole: every cell and header on one line."""
    return sum(_natural(columns, [[plain(cell) for cell in row] for row in rows])) + 3 * len(columns) + 1


def fold(line: str, width: int, indent: int = 0) -> list[str]:
    """A footer ``line`` in lines of at most ``width`` (when its words allow): broken after a ``;`` where it can,
    else between words; continuation lines indented by ``indent`` spaces."""
    pieces = line.split("; ")
    out = [""]
    for n, piece in enumerate(pieces):
        piece += ";" * (n < len(pieces) - 1)
        for token in [piece] if indent + len(piece) <= width else piece.split(" "):
            if out[-1].strip() and len(out[-1]) + 1 + len(token) > width:
                out.append(" " * indent + token)
            else:
                out[-1] += (" " if out[-1].strip() else "") + token
    return out


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

"""summary: a Keras-style table of what trains, per module, with the norm layers' state.

Built from the model view in one pass (per-module sums are vectorized), so a 100k-tensor model summarizes in well
under a second. When the table would be long, repeated blocks with identical rows collapse into one
(``blocks.0-9999 (x10000)``); ``Summary.rows`` always keeps every module, and the totals are exact.
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field, replace

import numpy as np

from .adapters import lora_mask
from .params import param_table
from ..core.table import Counts, render
from .slices import effective_counts, effective_numels
from .view import view_of

MAX_ROWS = 60  # longer tables collapse repeated blocks


@dataclass(frozen=True)
class ModuleRow:
    """One module that owns parameters or norm statistics directly.

    ``parameters`` counts each tensor once: a tied (shared) weight is counted in the row of its first owner, and
    ``tied`` names it in the rows of the others.
    """

    name: str
    type: str
    parameters: int
    trainable: int
    norm: str  # "locked" | "train" | "eval" for norm layers with running statistics, "" otherwise
    kind: str = ""  # the framework-neutral kind xfreeze inferred: norm / linear / conv / embedding
    tied: tuple = ()  # names of parameters this module shares with an earlier one
    on_this_rank: int | None = None  # under FSDP: the parameters this rank holds (``parameters`` counts the whole)
    adapter: int = 0  # of ``parameters``, those in adapter weights (LoRA ``lora_A`` / ``lora_B``: ``type:adapter``)

    @property
    def frozen(self) -> int:
        return self.parameters - self.trainable


@dataclass
class Summary:
    """What :func:`summary` shows, as data: ``rows`` per module and the whole model's ``counts``."""

    model: str
    rows: list[ModuleRow] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    max_rows: int = MAX_ROWS
    params: object = None  # with summary(..., optimizer=opt): the per-parameter group / lr / decay table (issue 12)
    rank_note: str = ""  # under FSDP: what this rank holds of the whole
    adapter_note: str = ""  # a model with adapters: how many adapter weights, and how many train

    def __str__(self) -> str:
        rows = self.rows if len(self.rows) <= self.max_rows else collapse(self.rows)
        sharded = any(r.on_this_rank is not None for r in rows)
        adapters = bool(self.adapter_note)
        columns = ["module", "type", "kind", "parameters", "trainable", "norm"] + (["on this rank"] if sharded else [])
        columns += ["adapter"] if adapters else []
        table = [
            [r.name or "(root)", r.type, r.kind, f"{r.parameters:,}", f"{r.trainable:,}", r.norm]
            + ([f"{r.on_this_rank:,}" if r.on_this_rank is not None else ""] if sharded else [])
            + ([f"{r.adapter:,}" if r.adapter else ""] if adapters else [])
            for r in rows
        ]
        notes = [f"tied: {r.name} shares {', '.join(r.tied)}" for r in self.rows if r.tied][:5]
        shown = [] if rows is self.rows else [f"{len(self.rows)} modules, repeated blocks collapsed"]
        footer = shown + notes + self.counts.lines() + [n for n in (self.rank_note, self.adapter_note) if n]
        return render(f"xfreeze.summary: {self.model}", columns, table, footer) + (
            f"\n{self.params}" if self.params else ""
        )

    __repr__ = __str__


def summary(model, *, print_table: bool = True, optimizer=None, backend: str | None = None) -> Summary:
    """Show what will train: per module its type, kind, parameters, trainable parameters and norm state (and, for a
    PEFT or PaddleFormers LoRA model, the parameters in adapter weights).

    Args:
        model: a ``torch.nn.Module`` or ``paddle.nn.Layer`` (wrappers such as DDP or ``torch.compile`` are seen
            through: names are the inner model's).
        print_table: print the table (the returned object prints the same table).
        optimizer: also show, per parameter, its optimizer group, absolute learning rate and weight decay
            (``Summary.params``, an :class:`xfreeze.ParamTable`), e.g. to audit layer decay.
        backend: force ``"torch"`` or ``"paddle"``.

    Returns:
        Summary: ``rows`` (one :class:`ModuleRow` per module owning parameters or statistics, with ``adapter``: its
        parameters in adapter weights) and ``counts``.

    Raises:
        XFreezeError: ``model`` is not a model of a supported framework.

    Example:
        >>> import torch, xfreeze
        >>> s = xfreeze.summary(torch.nn.Linear(3, 2), print_table=False)
        >>> s.counts.trainable
        8
    """
    view = view_of(model, backend)
    live = view.trainable()
    size = len(view.paths)
    numels = effective_numels(view)  # a split tensor once: its trainable rows, and the rest frozen (issue 21)
    total = (
        np.bincount(view.owner_array, weights=numels, minlength=size).astype(np.int64)
        if view.names
        else np.zeros(size, dtype=np.int64)
    )
    trained = (
        np.bincount(view.owner_array[live], weights=numels[live], minlength=size).astype(np.int64)
        if view.names
        else total
    )
    tied_at: dict[int, list] = {}
    for first, others in view.tied.items():
        for name in others:
            tied_at.setdefault(view.module_index.get(name.rpartition(".")[0], 0), []).append(f"{name} = {first}")
    owners = set(view.owner) | view.stat_modules | set(tied_at)
    rows = [_row(view, mi, int(total[mi]), int(trained[mi]), tuple(tied_at.get(mi, ()))) for mi in sorted(owners)]
    result = Summary(view.label, rows, effective_counts(view, live))
    _adapter_column(view, live, result)
    if view.sharded:  # FSDP: the table counts whole tensors; this rank holds a part
        local = np.bincount(view.owner_array, weights=view.local_numels, minlength=size).astype(np.int64)
        result.rows = [replace(r, on_this_rank=int(local[view.module_index[r.name]])) for r in rows]
        result.rank_note = (
            f"sharded ({view.adapter.sharding(view.model)}): this rank holds "
            f"{int(view.local_numels.sum()):,} of {int(view.numels.sum()):,} parameters"
        )
    if optimizer is not None:
        result.params = param_table(model, optimizer, backend=backend)
    if print_table:
        print(result)
    return result


def _row(view, mi: int, total: int, trained: int, tied: tuple) -> ModuleRow:
    adapter, module = view.adapter, view.modules[mi]
    norm = ""
    if mi in view.stat_modules:
        norm = "locked" if adapter.is_norm_locked(module) else ("train" if adapter.module_training(module) else "eval")
    return ModuleRow(view.paths[mi], type(module).__name__, total, trained, norm, view.kinds[mi] or "", tied)


def _adapter_column(view, live: np.ndarray, result: Summary) -> None:
    """Per row, the parameters in adapter weights; a footer line with the adapter totals (models with adapters)."""
    mask = lora_mask(view)
    if not mask.any():
        return
    per_module = np.bincount(view.owner_array[mask], weights=view.numels[mask], minlength=len(view.paths))
    result.rows = [replace(r, adapter=int(per_module[view.module_index[r.name]])) for r in result.rows]
    total, trained = int(view.numels[mask].sum()), int(view.numels[mask & live].sum())
    result.adapter_note = (
        f"adapter weights (type:adapter): {total:,} parameters in {int(mask.sum())} tensors, {trained:,} trainable"
    )


def collapse(rows: list[ModuleRow]) -> list[ModuleRow]:
    """Rows with runs of identical numbered blocks (``blocks.3``, ``blocks.4``, ...) folded into one row each."""
    return [row for row, _ in collapse_groups(rows)]


def collapse_groups(rows: list[ModuleRow]) -> list[tuple[ModuleRow, list[ModuleRow]]]:
    """``(shown row, the rows it stands for)`` pairs: runs of identical numbered blocks fold into one row, so that
    callers adding their own columns (the command line's bytes) can sum them over the folded rows."""
    out: list = []
    i = 0
    while i < len(rows):
        block = _block_of(rows[i].name)
        if block is None:
            out.append((rows[i], [rows[i]]))
            i += 1
            continue
        prefix, number = block
        run, j, signature = [], i, None
        while j < len(rows):
            end, members = _block_rows(rows, j, prefix)
            if end == j:
                break
            sig = tuple(
                (r.name.partition(f"{prefix}{_block_of(r.name)[1]}")[2], r.type, r.parameters, r.trainable, r.norm)
                for r in members
            )
            if signature is not None and sig != signature:
                break
            signature = sig
            run.append((_block_of(rows[j].name)[1], members))
            j = end
        if len(run) < 2:
            out.extend((r, [r]) for r in (rows[i : max(j, i + 1)] if run else [rows[i]]))
            i = max(j, i + 1)
            continue
        members = [r for _, m in run for r in m]
        norms = sorted({r.norm for r in members if r.norm})
        shown = ModuleRow(
            f"{prefix}{run[0][0]}-{run[-1][0]} (x{len(run)})",
            f"{len(run[0][1])} modules each",
            sum(r.parameters for r in members),
            sum(r.trainable for r in members),
            "/".join(norms),
            "",
            adapter=sum(r.adapter for r in members),
        )
        out.append((shown, members))
        i = j
    return out


def _block_of(name: str):
    """(``"blocks."``, 7) for ``blocks.7.attn.qkv``, (``"encoder.layers.encoder_layer_"``, 7) for torchvision's
    ``encoder.layers.encoder_layer_7.mlp``: the outermost numbered segment (a number, or a name ending in ``_<n>``;
    no leading zeros, so the name reads back from the number), else None."""
    parts = name.split(".")
    for k, part in enumerate(parts):
        found = _NUMBERED.fullmatch(part)
        if found:
            return ".".join(parts[:k]) + ("." if k else "") + found.group(1), int(found.group(2))
    return None


_NUMBERED = re.compile(r"(|.*_)(0|[1-9][0-9]*)")  # "7", or "encoder_layer_7"


def _block_rows(rows: list, start: int, prefix: str):
    """The rows of the block that ``rows[start]`` belongs to (a contiguous run: rows are in pre-order)."""
    block = _block_of(rows[start].name)
    if block is None or block[0] != prefix:
        return start, []
    head = f"{prefix}{block[1]}"
    end = start
    while end < len(rows) and (rows[end].name == head or rows[end].name.startswith(head + ".")):
        end += 1
    return end, rows[start:end]

"""The ``xfreeze`` command line: plan what trains, inspect a checkpoint, convert between frameworks.

Errors are one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import sys

from .backends import FRAMEWORKS
from .core.dispatch import adapter_for, adapter_named, installed
from .core.errors import XFreezeError
from .core.table import fit_columns, fold, human_bytes, needed_width, plain, render, terminal_width
from .model.freeze import freeze
from .model.head import replace_head
from .model.params import param_table
from .model.summary import MAX_ROWS, collapse_groups
from .model.summary import summary as summarize
from .model.view import view_of
from .training.optim import optimizer
from .weights.convert import check_fit, convert, convert_archs
from .weights.files import check_writable, describe, load_checkpoint, save_checkpoint
from .weights.folderconvert import convert_folder
from .weights.folders import describe_folder, is_folder, open_folder
from .weights.paths import as_path

OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2}  # state tensors per trainable parameter (SGD: momentum)
PARAMS_OPTIONS = {"lr": "--lr", "weight_decay": "--weight-decay", "layer_decay": "--layer-decay"}  # need --params


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        args.run(args)
    except XFreezeError as exc:
        return _fail(str(exc))
    except BrokenPipeError:  # output piped into `head`
        return 0
    except OSError as exc:  # disk full, read-only file system, permission: one line, never a traceback
        code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        where = f" {exc.filename!r}" if exc.filename else ""
        return _fail(f"cannot access{where}: {exc.strerror or exc} ({code})")
    except (ImportError, MemoryError) as exc:
        return _fail(f"{type(exc).__name__}: {exc}")
    return 0


def _fail(message: str) -> int:
    print(f"xfreeze: error: {plain(' '.join(message.split()))}", file=sys.stderr)
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xfreeze", description="Plan, inspect and convert fine-tuning setups in PyTorch and PaddlePaddle."
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    plan = sub.add_parser(
        "plan",
        help="show what would train, with exact bytes, before any training",
        description="Build a named model and print, per module, what would train and the exact "
        "bytes of parameters, gradients and optimizer state, frozen vs trainable. The table fits the terminal "
        "(COLUMNS; 170 columns in a pipe), one line per module: long module paths lose middle names "
        "(layer4.….conv2); where that is not enough, it leaves out, in turn, the optimizer state bytes "
        "(1 or 2 x trainable bytes), type and frozen bytes ((params - trainable) x bytes per element) columns "
        "and says so under the table. The totals under the table always show every figure.",
    )
    plan.add_argument(
        "model",
        help="torchvision / paddle.vision name (resnet50), a timm name when timm is "
        "installed, or module:callable returning a model",
    )
    plan.add_argument(
        "--freeze",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="patterns to freeze, e.g. '*' '!layer4' '!fc' (see docs/guide/selecting.md)",
    )
    plan.add_argument(
        "--norm",
        choices=["freeze", "train"],
        default="freeze",
        help="norm layers inside the frozen region: locked (freeze) or trainable (train)",
    )
    plan.add_argument("--head", type=int, metavar="N", help="replace the classification head with N classes")
    plan.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZER_STATES),
        default="sgd",
        help="optimizer whose state to count: sgd (with momentum), adam, adamw (default sgd)",
    )
    plan.add_argument(
        "--backend",
        choices=list(FRAMEWORKS),
        help=f"framework to build the model in (default: the first installed of {', '.join(FRAMEWORKS)})",
    )
    # issue 12: the per-parameter audit of optimizer groups, absolute learning rates and weight decay
    plan.add_argument(
        "--params",
        action="store_true",
        help="also print, per parameter, the optimizer group, absolute learning rate and weight decay",
    )
    plan.add_argument("--lr", type=float, help="base learning rate for --params (default 1e-3)")
    plan.add_argument("--weight-decay", type=float, help="weight decay for --params (default 0)")
    plan.add_argument("--layer-decay", type=float, help="layer-wise learning-rate decay for --params, in (0, 1]")
    plan.add_argument(
        "--all",
        action="store_true",
        help=f"show every module (over {MAX_ROWS} rows, repeated blocks are collapsed into one row each)",
    )
    plan.set_defaults(run=_plan)

    inspect = sub.add_parser(
        "inspect",
        help="format, framework, keys, shapes, dtypes and size of a checkpoint",
        description="Read a checkpoint safely (no code runs) and describe it.",
    )
    inspect.add_argument(
        "checkpoint",
        help=".pt/.pth/.bin, .pdparams, .safetensors or .npz file, or a save_pretrained folder (sharded too)",
    )
    inspect.add_argument("--limit", type=int, default=40, help="show at most this many keys (default 40; 0: all)")
    inspect.set_defaults(run=_inspect)

    conversion = sub.add_parser(
        "convert",
        help="convert a checkpoint between torch and Paddle",
        description="Convert a checkpoint's names and layouts to the other framework and print what was done.",
    )
    conversion.add_argument("input", help="checkpoint file or save_pretrained folder to read")
    conversion.add_argument(
        "output",
        help="file to write, its suffix picks the format (.pdparams, .pt, .safetensors, .npz); for a folder input, "
        "a new folder (Paddle: model_state.pdparams for PaddleFormers/PaddleNLP; torch: model.safetensors for "
        "transformers), shards and config.json mapped",
    )
    conversion.add_argument("--to", required=True, choices=list(FRAMEWORKS), help="target framework")
    conversion.add_argument(
        "--arch",
        help="what the checkpoint is: a model name of the target framework (resnet50; torchvision / timm, "
        "paddle.vision), module:callable, or a name map (resnet, llama, ernie); a model decides the layouts and "
        "a checkpoint that does not fit it is refused. Python: convert(..., arch=) takes the same names",
    )
    conversion.add_argument(
        "--allow-partial",
        action="store_true",
        help="write the conversion even when the checkpoint does not fit --arch's model",
    )
    conversion.set_defaults(run=_convert)
    return parser


def build_model(name: str, backend: str | None):
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise XFreezeError(f"cannot load {name!r}: {exc}") from None
        return factory()
    backend = backend or _default_backend()
    adapter = adapter_named(backend)
    model = adapter.build_named_model(name)
    if model is None:
        raise XFreezeError(
            f"unknown model {name!r} for {backend}: not {adapter.model_zoo}"
            f"{_did_you_mean(name, adapter.model_names())} Or pass module:callable"
        )
    return model


def _default_backend() -> str:
    """The first framework of the registry that is installed."""
    found = next((name for name in FRAMEWORKS if installed(name)), None)
    if found is None:
        raise XFreezeError(
            "no framework is installed to build the model in: "
            + "; ".join(f"{name}: {spec.install}" for name, spec in FRAMEWORKS.items())
        )
    return found


def _did_you_mean(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(dict.fromkeys(names)), n=3, cutoff=0.6)  # timm repeats torchvision
    return f". Did you mean {' or '.join(map(repr, close))}?" if close else "."


def _plan(args) -> None:
    given = [flag for option, flag in PARAMS_OPTIONS.items() if getattr(args, option) is not None]
    if given and not args.params:
        raise XFreezeError(
            f"{' and '.join(given)} {'sets a rate' if len(given) == 1 else 'set rates'} that only --params prints; "
            f"add --params (or drop {' and '.join(given)})"
        )
    model = build_model(args.model, args.backend)
    adapter = adapter_for(model)
    if args.head is not None:
        replace_head(model, args.head)
    if args.freeze:
        freeze(model, *args.freeze, norm=args.norm)
    summary = summarize(model, print_table=False)
    states = OPTIMIZER_STATES[args.optimizer]
    view = view_of(model, adapter.name)
    groups = collapse_groups(summary.rows) if len(summary.rows) > MAX_ROWS and not args.all else None
    rows, totals = [], [0, 0, 0]
    for shown, members in groups or [(r, [r]) for r in summary.rows]:
        sizes = [_element_size(view, r.name) for r in members]
        frozen_bytes = sum(r.frozen * size for r, size in zip(members, sizes))
        trainable_bytes = sum(r.trainable * size for r, size in zip(members, sizes))
        rows.append(
            [
                shown.name or "(root)",
                shown.type,
                f"{shown.parameters:,}",
                f"{shown.trainable:,}",
                f"{frozen_bytes:,}",
                f"{trainable_bytes:,}",
                f"{trainable_bytes * states:,}",
                shown.norm,
            ]
        )
        for i, value in enumerate((frozen_bytes, trainable_bytes, trainable_bytes * states)):
            totals[i] += value
    frozen, trainable, state = totals
    footer = [f"{len(summary.rows)} modules, repeated blocks collapsed (--all shows every one)"] if groups else []
    footer += [
        f"{summary.model}: {summary.counts.trainable:,} of {summary.counts.total:,} parameters train",
        f"bytes: frozen parameters {frozen:,} ({human_bytes(frozen)}); trainable parameters {trainable:,}; "
        f"gradients {trainable:,}; {args.optimizer} state {state:,}; "
        f"training total {2 * trainable + state:,} ({human_bytes(2 * trainable + state)})",
    ]
    columns = ["module", "type", "params", "trainable", "frozen bytes", "trainable = grad bytes"]
    columns += [f"{args.optimizer} state bytes", "norm"]
    width = terminal_width(170)
    print(_fitted(f"xfreeze plan: {args.model} ({adapter.name})", columns, rows, footer, width, states))
    if args.params:
        lr = 1e-3 if args.lr is None else args.lr
        decay = 0.0 if args.weight_decay is None else args.weight_decay
        opt = optimizer(model, args.optimizer, lr=lr, weight_decay=decay, layer_decay=args.layer_decay)
        print(param_table(model, opt).render(width))


def _fitted(title: str, columns: list, rows: list, footer: list, width: int, states: int) -> str:
    """The plan's table at most ``width`` wide, one line per module: module paths elided in their middle and, when
    that is not enough, the columns that other figures give left out in turn (the footer says which, and how)."""
    state, why = (
        columns[6],
        {
            columns[6]: f"{columns[6]} (= {states} x trainable bytes)",
            "type": "type",
            "frozen bytes": "frozen bytes (= (params - trainable) x bytes per element)",
        },
    )
    shown = fit_columns(columns, rows, width, optional=[state, "type", "frozen bytes"])
    left_out = [why[c] for i, c in enumerate(columns) if i not in shown]
    if left_out:
        footer = footer + [
            f"not shown at {width} columns: {'; '.join(left_out)}; "
            f"COLUMNS={needed_width(columns, rows)} shows every column"
        ]
    lines = [line for text in footer for line in fold(text, width, 7 if text.startswith("bytes: ") else 2)]
    return render(title, [columns[i] for i in shown], [[r[i] for i in shown] for r in rows], lines, width, elide=1)


def _element_size(view, path: str) -> int:
    """Bytes per element of the module's first own parameter (0 when it owns none)."""
    own = view.direct(view.module_index[path])
    return int(view.nbytes[own[0]] // max(int(view.numels[own[0]]), 1)) if own else 0


def _inspect(args) -> None:
    path = as_path(args.checkpoint)
    # a folder: its safetensors headers describe it without reading tensor data
    info = describe_folder(open_folder(path)) if is_folder(path) else describe(load_checkpoint(path))
    shown = info["tensors"] if args.limit == 0 else info["tensors"][: args.limit]
    # key names and metadata are data, never markup or terminal escapes: render() escapes every cell and line
    rows = [[k, "x".join(map(str, shape)) or "scalar", dtype] for k, shape, dtype in shown]
    footer = [
        f"format: {info['format']}; framework: {info['framework'] or 'unknown'}; {info['keys']} keys; "
        f"{info['bytes']:,} bytes ({human_bytes(info['bytes'])})"
    ]
    if "shards" in info:
        footer.append(f"folder: {info['shards']} shard{'s' * (info['shards'] != 1)}, read through {info['entry']}")
    if len(shown) < info["keys"]:
        footer.append(f"... {info['keys'] - len(shown)} more keys (--limit 0 shows all)")
    footer += [f"note: {note}" for key, note in info["notes"] if not key and not note.startswith("read through")]
    print(render(f"xfreeze inspect: {args.checkpoint}", ["key", "shape", "dtype"], rows, footer))


def _convert(args) -> None:
    if is_folder(args.input):
        return _convert_folder(args)
    check_writable(args.output)  # before reading or importing a framework: a directory, no folder, not writable
    state = load_checkpoint(args.input)
    if state.framework == args.to:
        raise XFreezeError(f"{args.input} already holds {args.to} names; nothing to convert")
    if args.arch and ":" in args.arch:  # module:callable: the same checks as a zoo name, on the model it returns
        model = build_model(args.arch, args.to)
        out = convert(state, to=args.to, model=model)
        check_fit(out, model, args.arch, allow_partial=args.allow_partial)
    else:  # a zoo name or a name map, spelled as convert(arch=) spells it
        out = convert(state, to=args.to, arch=args.arch, allow_partial=args.allow_partial)
    save_checkpoint(out, args.output)
    _print_conversion(args, out.notes, len(out), getattr(out, "unplaced", []))


def _convert_folder(args) -> None:
    """A checkpoint folder into a new folder of the other framework (config.json mapped), shard by shard."""
    model = build_model(args.arch, args.to) if args.arch and ":" in args.arch else None
    if args.arch and model is None and args.arch not in convert_archs():
        raise XFreezeError(
            f"for a checkpoint folder, --arch takes a name map of {convert_archs()} or module:callable; "
            f"received --arch {args.arch!r}"
        )
    out = convert_folder(args.input, args.output, to=args.to, arch=None if model else args.arch, model=model)
    _print_conversion(args, out["notes"], out["keys"], out["unplaced"], f"{len(out['files'])} weight files")


def _print_conversion(args, notes: list, keys: int, unplaced: list, written: str = "") -> None:
    counts: dict = {}
    for _, note in notes:
        kind = _note_kind(note)
        counts[kind] = counts.get(kind, 0) + 1
    rows = [[kind, n] for kind, n in sorted(counts.items())]
    print(
        render(
            f"xfreeze convert: {args.input} -> {args.output} ({args.to})",
            ["what was done", "keys"],
            rows,
            [f"{keys} keys written{' in ' + written if written else ''}; unplaced: {len(unplaced)}"],
        )
    )


NOTE_KINDS = ("renamed", "transposed", "dropped", "adjusted", "not adjusted", "not placed", "padding row", "shape")


def _note_kind(note: str) -> str:
    """The kind of a conversion note ("renamed to x" -> "renamed"; "shape [2] differs ..." -> "shape differs")."""
    kind = next((k for k in NOTE_KINDS if note.startswith(k)), None)
    if kind == "shape":
        return "shape differs from --arch"
    return kind or note.split(":")[0].split(" (")[0]


if __name__ == "__main__":
    sys.exit(main())

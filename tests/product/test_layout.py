"""The floor plan holds: each subpackage of xfreeze imports only the layers below it, no module imports itself back
through another (module-level and function-level imports both count), and nothing inside the package imports the
``xfreeze`` facade."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# lower number = lower layer; a module may import its own layer and the ones below
LAYERS = {"core": 0, "backends": 1, "model": 2, "training": 3, "weights": 3, "integrations": 4, "cli": 4}
# training and weights are siblings: neither imports the other
SIBLINGS = {("training", "weights"), ("weights", "training")}


def _modules() -> dict:
    found = {}
    for base, prefix in ((ROOT / "xfreeze", "xfreeze"), (ROOT / "backends", "xfreeze.backends")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join([prefix, *parts[:-1]] if is_package else [prefix, *parts])
            found[name] = (path, is_package)
    return found


def _imports(name: str, path: Path, is_package: bool, known: dict) -> set:
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [f"{target}.{a.name}" for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        out |= {c for c in candidates if c in known}
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if module == "xfreeze.backends":  # the registry: data only, read by the core's dispatch
        return "core"
    if parts[1:2] == ["backends"]:
        return "backends"
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _graph() -> dict:
    known = _modules()
    return {name: _imports(name, path, pkg, known) for name, (path, pkg) in known.items()}


def test_no_module_imports_a_layer_above_it_or_the_facade():
    offenders = []
    for module, targets in _graph().items():
        layer = _layer(module)
        if module == "xfreeze":
            continue
        for target in targets:
            if target == "xfreeze":
                offenders.append(f"{module} imports the xfreeze facade")
                continue
            other = _layer(target)
            if layer is None or other is None:
                continue
            if LAYERS[other] > LAYERS[layer] or (layer, other) in SIBLINGS:
                offenders.append(f"{module} ({layer}) imports {target} ({other})")
    assert not offenders, "\n".join(sorted(offenders))


def test_the_import_graph_has_no_circle():
    graph = _graph()
    # a package's __init__ importing its own children is not a circle of modules
    edges = {m: {t for t in ts if not m.startswith(t + ".") and not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict = {}
    cycles = []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_layers_are_packages_and_no_module_is_too_long():
    for layer in ("core", "model", "training", "weights", "integrations"):
        assert (ROOT / "xfreeze" / layer / "__init__.py").exists(), layer
    for framework in ("torch", "paddle"):
        assert (ROOT / "backends" / framework / "adapter.py").exists(), framework
    too_long = {
        str(p.relative_to(ROOT)): n
        for base in ("xfreeze", "backends")
        for p in (ROOT / base).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert not too_long, too_long

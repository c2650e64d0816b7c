"""The adapter contract: every registered adapter implements the ABC of backends/contract.py, and behaves the same.

Adding a framework = one folder under backends/ plus one entry in backends/__init__.py (FRAMEWORKS), and this file
passing for it (it runs once per entry; a framework that cannot be imported fails, it is not skipped).
"""

import ast
from pathlib import Path

import numpy as np
import pytest

from xfreeze import XFreezeError
from xfreeze.core import tensors as _tensors
from xfreeze.core.dispatch import adapter_named
from xfreeze.model.view import view_of
from xfreeze.backends import FRAMEWORKS
from xfreeze.backends.contract import Adapter, Registries, abstract_methods
from xfreeze.backends.naming import Naming, naming
from harness import Spec, kit

ROOT = Path(__file__).resolve().parents[2]
CNN = Spec("cnn", (4, 3))
MOST_ABSTRACT = 30  # the goal: a third framework writes well under half of the 63 methods required before
FILES = {"__init__.py", "adapter.py", "model.py", "tensors.py", "optim.py", "distributed.py", "names.py", "formats.py"}
FILES |= {"rows.py"}  # split parameters (issue 21)


@pytest.fixture(params=sorted(FRAMEWORKS))
def name(request):
    return request.param


def test_every_adapter_implements_the_abstract_contract(name):
    adapter = adapter_named(name)
    assert isinstance(adapter, Adapter) and adapter.name == name
    assert not type(adapter).__abstractmethods__, f"{name} adapter lacks {sorted(type(adapter).__abstractmethods__)}"
    assert adapter.DTYPES and {"float32", "float16", "bfloat16", "int64", "bool"} <= set(adapter.DTYPES)
    assert all(isinstance(k, str) and isinstance(v, tuple) for k, v in adapter.KINDS)


def test_each_framework_folder_has_the_same_files(name):
    folder = ROOT / "backends" / FRAMEWORKS[name].package.strip(".")
    assert {p.name for p in folder.glob("*.py")} == FILES


def test_the_contract_is_short():
    required = abstract_methods()
    assert len(required) <= MOST_ABSTRACT, f"{len(required)} abstract methods: {required}"
    with pytest.raises(TypeError, match="abstract"):
        Adapter()  # type: ignore[abstract]


def test_the_contract_documents_every_method():
    public = [m for m in dir(Adapter) if not m.startswith("_") and callable(getattr(Adapter, m))]
    assert len(public) > 40 and not [m for m in public if not getattr(Adapter, m).__doc__]
    documented = (ROOT / "docs" / "contract.md").read_text()
    assert not [m for m in abstract_methods() if f"`{m}(" not in documented], "docs/contract.md lists each one"


def _adapter_attributes() -> dict:
    """``{attribute: [where]}`` for every attribute the core reads on an adapter: on names holding one
    (``adapter.x``, ``self.adapter.x``, ``view.adapter.x``) and on calls returning one (``adapter_named(n).x``)."""

    def holds_adapter(node) -> bool:
        if isinstance(node, ast.Name):
            return "adapter" in node.id
        if isinstance(node, ast.Attribute):
            return "adapter" in node.attr
        if isinstance(node, ast.Call):
            return holds_adapter(node.func)
        return False

    found: dict = {}
    for path in (ROOT / "xfreeze").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and holds_adapter(node.value):
                found.setdefault(node.attr, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_adapter_attribute_the_core_uses_is_declared():
    used = _adapter_attributes()
    assert {"state_tensors", "load_file", "save_file", "world_size", "walk"} <= set(used)  # the scan sees them
    undeclared = {attr: where for attr, where in used.items() if not hasattr(Adapter, attr)}
    assert not undeclared, f"the core uses adapter attributes the contract does not declare: {undeclared}"


def _stub(self, *args, **kwargs):
    return None


# a framework that writes only the abstract methods (their bodies do not matter here)
_Minimal = type("_Minimal", (Adapter,), {"name": "minimal", **{m: _stub for m in abstract_methods()}})


def test_a_framework_that_writes_only_the_abstract_methods_gets_single_process_defaults():
    adapter = _Minimal()
    assert (adapter.world_size(), adapter.rank(), adapter.sharding(object())) == (1, 0, None)
    assert adapter.all_reduce_max([3, 1]) == [3, 1] and adapter.all_gather_object("x") == ["x"]
    assert adapter.syncing_wrappers(object()) == [] and adapter.sharded_sizes(object()) == {}
    assert adapter.rebuild_wrapper(None, "inner", lambda m: f"wrapped {m}", []) == "wrapped inner"
    assert adapter.barrier() is None and not adapter.tolerates_missing_gradients(object())
    assert adapter.model_names() == [] and adapter.build_named_model("resnet18") is None
    assert not adapter.is_scheduler(object()) and "adopt_scheduler" in adapter.adopt_scheduler(None, None)
    with pytest.raises(NotImplementedError, match=r"_Minimal.add_param_group is not implemented.*StagedUnfreeze"):
        adapter.add_param_group(None, {})
    with pytest.raises(NotImplementedError, match=r"_Minimal.load_file is not implemented"):
        adapter.load_file("model.bin")


def test_registries_are_the_live_dicts(name):
    adapter, model = adapter_named(name), kit(name).build(CNN)
    bn = view_of(model).modules[view_of(model).module_index["1"]]
    registries = adapter.registries(bn)
    assert isinstance(registries, Registries)
    assert {"weight", "bias"} <= set(registries.parameters) and not registries.children
    assert {n for _, n, _ in adapter.module_tensors(bn)[1]} <= set(registries.statistics)
    adapter.lock_norm(bn)
    assert len(registries.hooks) == 1
    adapter.unlock_norm(bn, training=True)
    assert not registries.hooks


def test_each_framework_describes_its_naming_once(name):
    described = naming(name)
    assert isinstance(described, Naming) and described.framework == name
    assert described.linear_layout in ("out_in", "in_out") and described.padding_row in ("stored", "zero_output")
    assert set(described.stat_names) <= {"running_mean", "running_var"}


def test_walk_names_modules_parameters_and_statistics_alike(name):
    model = kit(name).build(CNN)
    walk = adapter_named(name).walk(model)
    assert [p for p, _ in walk.modules][:3] == ["", "0", "1"]
    names = [f"{walk.modules[mi][0]}.{local}" for mi, local, _ in walk.params]
    assert names == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "3.weight",
        "3.bias",
        "4.weight",
        "4.bias",
        "8.weight",
        "8.bias",
    ]
    assert [f"{walk.modules[mi][0]}.{local}" for mi, local, _, _ in walk.stats] == [
        "1.running_mean",
        "1.running_var",
        "4.running_mean",
        "4.running_var",
    ]
    assert walk.token == adapter_named(name).structure_token(model) and walk.wrappers == []


def test_the_walk_reads_every_registration_once(name):
    """The walk (each adapter reads its registries directly: the view build's inner loop) against the framework's
    own ``named_parameters``, on a model with a buffer that is not a statistic, a None registration and a module
    registered twice."""
    adapter, model = adapter_named(name), kit(name).build(CNN)
    model[1].register_buffer("extra", kit(name).tensor(np.ones(2, dtype=np.float32)))
    adapter.registries(model[3]).parameters["unset"] = None
    model.shared = model[0]  # registered twice: walked once, under its first path
    walk = adapter.walk(model)
    stat_keys = [f"{walk.modules[mi][0]}.{native}" for mi, _, _, native in walk.stats]
    names = [f"{walk.modules[mi][0]}.{local}" for mi, local, _ in walk.params]
    native = [n for n, _ in model.named_parameters()]  # Paddle lists its BatchNorm statistics among them
    assert names == [n for n in native if n not in stat_keys] and "shared.weight" not in names
    assert [walk.modules[mi][0] for mi, *_ in walk.stats] == ["1", "1", "4", "4"]
    assert walk.token == adapter.structure_token(model)
    assert id(model[1].extra) in walk.token and [p for p, _ in walk.modules].count("shared") == 0
    first = [(local, t) for mi, local, t in walk.params if walk.modules[mi][0] == "0"]
    assert first == adapter.module_tensors(model[0])[0] and adapter.module_tensors(model[1])[1]


def test_trainability_flags_and_plans(name):
    adapter, model = adapter_named(name), kit(name).build(CNN)
    view = view_of(model)
    adapter.apply_trainable(view.params[:2], False)
    assert adapter.trainable_flags(view.params)[:3] == [False, False, True]
    assert view.trainable().tolist()[:3] == [False, False, True]
    adapter.apply_trainable(view.params[:2], True)
    assert all(adapter.trainable_flags(view.params))


@pytest.mark.parametrize(
    "dtype",
    [
        "float32",
        "float64",
        "float16",
        "bfloat16",
        "float8_e4m3fn",
        "float8_e5m2",
        "int64",
        "int32",
        "int8",
        "uint8",
        "bool",
    ],
)
def test_dtype_table_moves_exact_bits(name, dtype):
    adapter = adapter_named(name)
    assert dtype in adapter.DTYPES, f"{name} lacks {dtype}"
    carrier = np.dtype(_tensors.BIT_CARRIERS.get(dtype, dtype))
    rng = np.random.default_rng(0)
    if dtype == "bool":
        array = rng.integers(0, 2, (3, 4)).astype(bool)
    else:
        array = (
            np.frombuffer(rng.integers(0, 256, 12 * carrier.itemsize, dtype=np.uint8).tobytes(), dtype=carrier)
            .reshape(3, 4)
            .copy()
        )
        if carrier.kind == "f":
            array[~np.isfinite(array)] = 0
    tensor = adapter.from_raw(_tensors.Raw(array, dtype))
    assert adapter.tensor_dtype(tensor) == dtype and tuple(tensor.shape) == (3, 4)
    back = adapter.to_raw(tensor)
    assert back.dtype == dtype and back.bits.tobytes() == array.tobytes()
    assert adapter.numel(tensor) == 12 and adapter.nbytes(tensor) == array.nbytes


def test_tensor_operations(name):
    adapter = adapter_named(name)
    t = adapter.from_raw(_tensors.Raw(np.arange(6, dtype="float32").reshape(2, 3), "float32"))
    assert adapter.to_raw(adapter.transpose(t)).bits.tolist() == [[0, 3], [1, 4], [2, 5]]
    assert adapter.row_nonzero(t, 1) and not adapter.row_nonzero(adapter.zero_row(t, 1), 1)
    assert adapter.to_raw(t).bits[1].tolist() == [3, 4, 5]  # zero_row copied
    assert adapter.tensor_dtype(adapter.cast(t, "bfloat16")) == "bfloat16"
    clone = adapter.clone(t)
    adapter.copy_into([clone], [adapter.zero_row(t, 0)])
    assert adapter.to_raw(clone).bits[0].tolist() == [0, 0, 0] and adapter.to_raw(t).bits[0].tolist() == [0, 1, 2]


def test_ema_update_is_a_lerp_that_keeps_equal_values(name):
    adapter = adapter_named(name)
    a = adapter.from_raw(_tensors.Raw(np.full(4, 0.1, "float32"), "float32"))
    same = adapter.clone(a)
    b = adapter.from_raw(_tensors.Raw(np.full(4, 1.1, "float32"), "float32"))
    adapter.ema_update([a, same], [b, adapter.clone(same)], 0.25)
    assert np.allclose(adapter.to_raw(a).bits, 0.35) and adapter.to_raw(same).bits.tolist() == [np.float32(0.1)] * 4


def test_state_and_load_tensors(name):
    adapter, model = adapter_named(name), kit(name).build(CNN)
    state = adapter.state_tensors(model)
    key = "8.weight"
    zeros = adapter.zero_row(adapter.zero_row(state[key], 0), 1)
    adapter.load_tensors([state[key]], [zeros])
    assert not adapter.row_nonzero(adapter.state_tensors(model)[key], 0)


def test_norm_lock_and_module_kinds(name):
    adapter, model = adapter_named(name), kit(name).build(CNN)
    view = view_of(model)
    assert [view.kinds[view.module_index[p]] for p in ("0", "1", "8")] == ["conv", "norm", "linear"]
    bn = view.modules[view.module_index["1"]]
    adapter.lock_norm(bn)
    assert adapter.is_norm_locked(bn) and not adapter.module_training(bn)
    adapter.unlock_norm(bn, training=True)
    assert not adapter.is_norm_locked(bn) and adapter.module_training(bn)


def test_new_linear_follows_the_old_one(name):
    adapter, model = adapter_named(name), kit(name).build(CNN, "float64")
    old = view_of(model).modules[view_of(model).module_index["8"]]
    new = adapter.new_linear(old, 7, "zeros")
    assert adapter.linear_features(new) == (3, 7, True)
    assert adapter.tensor_dtype(new.weight) == "float64"


def test_a_dtype_the_target_cannot_hold_is_named():
    import torch

    value = torch.zeros(2, 3).to(torch.float8_e4m3fnuz)  # a torch fp8 variant Paddle 3.3 lacks
    with pytest.raises(XFreezeError, match=r"tensor 'w' has dtype float8_e4m3fnuz, which paddle cannot hold"):
        _tensors.to_backend(value, "paddle", "w")


def test_optimizer_contract(name):
    from xfreeze import optimizer

    adapter, model = adapter_named(name), kit(name).build(CNN)
    opt = optimizer(model, "sgd", lr=0.5, momentum=0.5, weight_decay=0.25)
    assert adapter.is_optimizer(opt) and not adapter.is_optimizer(model) and not adapter.is_scheduler(opt)
    rows = adapter.group_rows(opt)
    assert sorted((lr, wd) for _, lr, wd in rows) == [(0.5, 0.0), (0.5, 0.25)]
    assert sum(len(ids) for ids, _, _ in rows) == len(view_of(model).params)
    assert not any(adapter.has_optimizer_state(opt, p) for p in view_of(model).params)
    assert adapter.optimizer_state_problem(opt, model, adapter.optimizer_state(opt, model)) is None


def test_head_label_count_follows(name):
    adapter, model = adapter_named(name), kit(name).build(CNN)
    model.num_classes = 3
    adapter.update_label_count(model, 7)
    assert model.num_classes == 7


def test_conv_classifier_heads(name):
    adapter, model = adapter_named(name), kit(name).build(CNN, "float64")
    view = view_of(model)
    conv3x3 = view.modules[view.module_index["0"]]
    assert adapter.conv_head_features(conv3x3) is None  # a 3x3 convolution is no conv classifier
    one = adapter.new_conv_head(_conv1x1(name), 7, "zeros")
    assert adapter.conv_head_features(one) == (4, 7) and adapter.tensor_dtype(one.weight) == "float32"


def _conv1x1(name):
    if name == "torch":
        import torch

        return torch.nn.Conv2d(4, 3, 1)
    import paddle

    return paddle.nn.Conv2D(4, 3, 1)

"""The adapter contract: every adapter implements every method of backends/_base.Adapter, and behaves the same.

Adding a framework = one adapter module + one Naming + one entry in xfreeze.backends.ADAPTERS, and this file
passing for it (it runs once per entry of ADAPTERS; a framework that cannot be imported fails, it is not skipped).
"""

import inspect

import numpy as np
import pytest

from xfreeze import XFreezeError
from xfreeze.core import tensors as _tensors
from xfreeze.core.dispatch import adapter_named
from xfreeze.model.view import view_of
from xfreeze.backends import ADAPTERS
from xfreeze.backends.contract import Adapter
from xfreeze.backends.naming import Naming, naming
from harness import Spec, kit

CNN = Spec("cnn", (4, 3))


@pytest.fixture(params=sorted(ADAPTERS))
def name(request):
    return request.param


def test_every_contract_method_is_implemented(name):
    adapter = adapter_named(name)
    assert isinstance(adapter, Adapter) and adapter.name == name
    required = [m for m, f in vars(Adapter).items() if callable(f) and "_todo(self" in inspect.getsource(f)]
    missing = [m for m in required if getattr(type(adapter), m) is getattr(Adapter, m)]
    assert not missing, f"{name} adapter lacks {missing}"
    assert len(required) > 25


def test_the_contract_documents_every_method():
    public = [m for m, f in vars(Adapter).items() if callable(f) and not m.startswith("_")]
    assert len(public) > 40 and not [m for m in public if not getattr(Adapter, m).__doc__]


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

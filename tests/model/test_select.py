"""xfreeze.select: the selector language, the same in both frameworks."""

import pytest

import xfreeze
from xfreeze import XFreezeError
from harness import Spec

CNN = Spec("cnn", (4, 3))  # 0 conv, 1 bn, 3 conv, 4 bn, 8 linear
MLP = Spec("mlp", (4, 5, 3))  # 0, 2, 4 linear


def names(fw, spec=CNN):
    return fw.build(spec)


def test_glob_on_dotted_names(fw):
    m = names(fw)
    assert xfreeze.select(m, "*.bias") == ["0.bias", "1.bias", "3.bias", "4.bias", "8.bias"]
    assert xfreeze.select(m, "[03].*") == ["0.weight", "0.bias", "3.weight", "3.bias"]


def test_module_name_selects_everything_under_it(fw):
    m = names(fw)
    assert xfreeze.select(m, "1") == ["1.weight", "1.bias"]
    assert xfreeze.select(m, "1") == xfreeze.select(m, "1.*")


def test_names_are_the_same_in_both_frameworks_and_exclude_bn_statistics(fw):
    selected = xfreeze.select(names(fw), "*")
    assert selected == [
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
    assert not [n for n in selected if "mean" in n or "var" in n]


def test_regex_is_a_full_match_of_name_or_module(fw):
    m = names(fw)
    assert xfreeze.select(m, r"re:[0-4]\.weight") == ["0.weight", "1.weight", "3.weight", "4.weight"]
    assert xfreeze.select(m, "re:8") == ["8.weight", "8.bias"]


def test_neutral_kinds_are_identical_across_frameworks(fw):
    m = names(fw)
    assert xfreeze.select(m, "type:norm") == ["1.weight", "1.bias", "4.weight", "4.bias"]
    assert xfreeze.select(m, "type:conv") == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert xfreeze.select(m, "type:linear") == ["8.weight", "8.bias"]
    emb = fw.nn.Embedding(5, 3)
    assert xfreeze.select(emb, "type:embedding") == ["weight"]


def test_type_by_class_name_includes_subclasses(fw):
    m = names(fw)
    norm_class = type(m[1]).__name__  # BatchNorm2d (torch) / BatchNorm2D (paddle)
    assert xfreeze.select(m, f"type:{norm_class}") == ["1.weight", "1.bias", "4.weight", "4.bias"]
    base = type(m[1]).__mro__[1].__name__  # _BatchNorm / _BatchNormBase
    assert xfreeze.select(m, f"type:{base}") == ["1.weight", "1.bias", "4.weight", "4.bias"]
    assert xfreeze.select(m, "type:Sequential") == xfreeze.select(m, "*")


def test_negation_removes_from_what_came_before(fw):
    m = names(fw)
    assert xfreeze.select(m, "*", "!8.*") == xfreeze.select(m, "[0-4].*")
    assert xfreeze.select(m, "*", "!type:norm", "1.bias") == [
        "0.weight",
        "0.bias",
        "1.bias",
        "3.weight",
        "3.bias",
        "8.weight",
        "8.bias",
    ]
    assert xfreeze.select(m, "!8") == xfreeze.select(m, "*", "!8"), "a leading negation starts from everything"


def test_result_is_in_model_order_without_duplicates(fw):
    m = names(fw)
    assert xfreeze.select(m, "8.*", "0.*", "*.bias") == [
        "0.weight",
        "0.bias",
        "1.bias",
        "3.bias",
        "4.bias",
        "8.weight",
        "8.bias",
    ]


def test_lists_of_patterns_are_accepted(fw):
    m = names(fw)
    assert xfreeze.select(m, ["*", "!8"]) == xfreeze.select(m, "*", "!8")


@pytest.mark.parametrize(
    "patterns, message",
    [
        ((), "No patterns given"),
        (("",), "Empty pattern"),
        (("!",), "Empty pattern"),
        (("re:",), "Empty pattern"),
        (("re:[0-9",), "Invalid regular expression in pattern 're:\\[0-9'"),
        ((3,), "Patterns must be strings; received int 3"),
        (("*", "!nothing.*"), "Pattern '!nothing.\\*' matched no parameters"),
    ],
)
def test_bad_patterns_are_clear_errors(fw, patterns, message):
    with pytest.raises(XFreezeError, match=message):
        xfreeze.select(names(fw), *patterns)


def test_typo_suggests_the_closest_real_names(fw):
    model = fw.zoo.resnet18()
    with pytest.raises(
        XFreezeError,
        match=r"Pattern 'layr4.\*' matched no parameters of ResNet \((torch|paddle)\)\. "
        r"Did you mean 'layer4.\*'",
    ):
        xfreeze.select(model, "layr4.*")
    with pytest.raises(XFreezeError, match="Did you mean 'type:norm'"):
        xfreeze.select(model, "type:nrom")


def test_error_when_model_has_no_parameters(fw):
    with pytest.raises(XFreezeError, match="The model has no parameters"):
        xfreeze.select(fw.nn.ReLU(), "*")

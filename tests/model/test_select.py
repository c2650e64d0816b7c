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


# --- patterns are user input: bounded matching, clear refusals (issue 18) -------------------------------------------
def named_linear(fw, name: str):
    """A model with one Linear under ``name``."""
    model = fw.Module()
    setattr(model, name, fw.linear(2, 2))
    return model


def test_a_catastrophic_regex_returns_promptly(fw):
    """re:(a+)+$ backtracks exponentially in Python's re (~30 s on this name); RE2 matches in linear time."""
    model = named_linear(fw, "a" * 27 + "b")
    with pytest.raises(XFreezeError, match=r"Pattern 're:\(a\+\)\+\$' matched no parameters"):
        xfreeze.select(model, "re:(a+)+$")
    assert xfreeze.select(model, "re:(a+)+b") == ["a" * 27 + "b.weight", "a" * 27 + "b.bias"]


def test_re_patterns_keep_their_meaning_on_re2(fw):
    m = names(fw)
    assert xfreeze.select(m, r"re:[03]\.(weight|bias)") == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert xfreeze.select(m, r"re:(?i)8\.WEIGHT") == ["8.weight"]
    assert xfreeze.select(m, r"re:\d") == xfreeze.select(m, "*")  # a module path matches: all under it
    assert xfreeze.select(m, r"re:.*bias", r"!re:[14]\..*") == ["0.bias", "3.bias", "8.bias"]


@pytest.mark.parametrize(
    "pattern, message",
    [
        (r"re:(0)\1", r"Invalid regular expression in pattern 're:\(0\)\\\\1'.*backreferences"),
        (r"re:(?=0)0", "invalid perl operator.*lookaround"),
        (r"re:(?<=0)\.weight", "lookaround"),
        (r"re:0\Z", r"invalid escape sequence.*write \\z"),
        ("re:" + "(" * 10_000 + "0" + ")" * 10_000, "nests groups 10000 deep"),
        ("re:0{5000}", "Invalid regular expression"),
    ],
)
def test_regex_that_re2_cannot_bound_is_refused_and_nothing_changes(fw, pattern, message):
    from statehash import state_hash

    model = names(fw)
    before = state_hash(model)
    with pytest.raises(XFreezeError, match=message):
        xfreeze.freeze(model, "*", pattern)
    assert state_hash(model) == before


@pytest.mark.parametrize(
    "patterns, message",
    [
        ((3,), "received int 3 in patterns"),
        ((None,), "received NoneType None in patterns"),
        (({"8": 1},), r"received dict \{'8': 1\} in patterns \(a dict: pass its keys"),
        (({"8"},), r"received set \{.8.\} in patterns \(a set has no order"),
        ((b"8",), r"received bytes b'8' in patterns \(bytes: decode"),
        ((["*", 3.5],), "received float 3.5 in patterns"),
        ((["*", ["!8", object]],), "received type .* in patterns"),
    ],
)
def test_pattern_lists_of_other_types_name_the_argument_and_change_nothing(fw, patterns, message):
    from statehash import state_hash

    model = names(fw)
    before = state_hash(model)
    for call in (xfreeze.freeze, xfreeze.unfreeze, xfreeze.select):
        with pytest.raises(XFreezeError, match=f"Patterns must be strings; {message}"):
            call(model, *patterns)
    assert state_hash(model) == before


def test_nested_and_self_containing_pattern_lists_are_errors_not_recursion(fw):
    from statehash import state_hash

    model = names(fw)
    before = state_hash(model)
    deep: list = ["*"]
    for _ in range(100_000):
        deep = [deep]
    loop: list = ["*"]
    loop.append(loop)
    for patterns in (deep, loop):
        with pytest.raises(XFreezeError, match="nested more than 32 deep"):
            xfreeze.freeze(model, patterns)
    assert state_hash(model) == before
    assert xfreeze.select(model, [["*"], ("!8",)]) == xfreeze.select(model, "*", "!8")


@pytest.mark.parametrize("value", [5, None, {"8": 1}, 2.0])
def test_compile_patterns_names_the_callers_argument(value):
    from xfreeze.model.select import compile_patterns

    with pytest.raises(XFreezeError, match=f"Patterns must be strings; received {type(value).__name__} .* as skip"):
        compile_patterns(value, argument="skip")
    assert [p.text for p in compile_patterns("fc", argument="skip")] == ["fc"]

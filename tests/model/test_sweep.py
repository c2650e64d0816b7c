"""The architecture sweep of issue 11: replace_head, freeze, one AdamW step over all parameters, frozen bitwise.

The default tier runs a representative subset (one case per kind of head); ``-m sweep`` runs every torchvision and
paddle.vision classifier, the transformers / PaddleNLP families and the timm two-headed models (slow).
"""

import pytest

import sweep_models as S

DEFAULT = [
    S.torchvision_case("resnet18"),
    S.torchvision_case("squeezenet1_1"),
    S.paddle_vision_case("resnet18"),
    S.paddle_vision_case("shufflenet_v2_x0_25"),
    S.paddle_vision_case("densenet121"),
    S.hf_case("llama"),
    S.hf_case("gpt2"),
    S.hf_case("bart"),
    S.hf_case("deit-teacher"),
    S.paddlenlp_case("ernie"),
    S.paddlenlp_case("gpt"),
    S.paddlenlp_case("llama"),  # a head kept as it is (keep:lm_head): the branch a sweep-only case lost once
    S.timm_case("deit_tiny_distilled_patch16_224"),
]
_default_ids = {c.id for c in DEFAULT}
FULL = [
    c
    for c in (
        [S.torchvision_case(n) for n in S.torchvision_names()]
        + [S.paddle_vision_case(n) for n in S.paddle_vision_names()]
        + [S.hf_case(f) for f in S.HF_FAMILIES]
        + [S.paddlenlp_case(f) for f in S.PADDLENLP_FAMILIES]
        + [S.timm_case(n) for n in S.TIMM_MODELS]
    )
    if c.id not in _default_ids
]
TWO_HEADED = {
    "transformers-deit-teacher",
    "transformers-levit-teacher",
    "timm-deit_tiny_distilled_patch16_224",
    "timm-pit_ti_distilled_224",
    "timm-levit_128s",
    "timm-efficientformer_l1",
    "timm-repvit_m1",
    "timm-volo_d1_224",
    "timm-crossvit_tiny_240",
    "torchvision-googlenet",
    "torchvision-inception_v3",
    "paddle.vision-googlenet",
}


def _check(case):
    seen = S.run_case(case)
    assert seen["heads"], case.id
    assert seen["changed_frozen"] == [], f"{case.id}: frozen tensors changed: {seen['changed_frozen'][:5]}"
    assert seen["moved_heads"], f"{case.id}: the new head did not train"
    if case.id in TWO_HEADED:
        assert len(seen["heads"]) >= 2 and seen["warned"], (case.id, seen["heads"])


@pytest.mark.classic_stack("paddlenlp")  # the paddlenlp-* cases
@pytest.mark.parametrize("case", DEFAULT, ids=lambda c: c.id)
def test_sweep_representative(case):
    _check(case)


@pytest.mark.slow
@pytest.mark.sweep
@pytest.mark.parametrize("case", FULL, ids=lambda c: c.id)
def test_sweep_full(case):
    _check(case)

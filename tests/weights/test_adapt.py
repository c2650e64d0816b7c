"""Shape-adapting loads (issue 18, item 1): position grids and tables, the first conv's input channels, embeddings and
output layers with more rows. Oracles: timm's own functions (torch) and the torch result (Paddle: bit for bit)."""

import numpy as np
import pytest

import xfreeze
from harness import Spec, kit, tiny_text_config
from xfreeze.core.dispatch import adapter_for
from xfreeze.core.tensors import to_raw

# |xfreeze - timm| <= POS_TOLERANCE * max |source| (docs/weights.md): timm's float32 kernel rounds, xfreeze's float64
POS_TOLERANCE = 5e-6


def native_state(model) -> dict:
    return adapter_for(model).state_tensors(model)


def value(fw, model, key: str) -> np.ndarray:
    """A model's tensor in the canonical (torch) layout, as numpy."""
    return fw.state(model)[key]


def pos_model(fw, tokens: int, dim: int = 8, prefix=None, grid=None):
    """A minimal model with a timm-style ``pos_embed`` [1, tokens, dim] and a Linear, in either framework."""

    class PosModel(fw.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = fw.new_parameter(self, (1, tokens, dim))
            self.proj = fw.linear(dim, dim)
            if prefix is not None:
                self.num_prefix_tokens = prefix

    return PosModel()


def pos_source(tokens: int, dim: int = 8, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "pos_embed": rng.normal(0, 1, (1, tokens, dim)).astype(np.float32),
        "proj.weight": rng.normal(0, 1, (dim, dim)).astype(np.float32),
        "proj.bias": rng.normal(0, 1, (dim,)).astype(np.float32),
    }


# --- position grids: timm's resample_abs_pos_embed ------------------------------------------------------------------


@pytest.mark.parametrize(
    "img, new_img, patch, extra",
    [
        (32, 48, 8, {}),  # 4x4 -> 6x6, class token
        (224, 384, 16, {}),  # 14x14 -> 24x24: the 224 -> 384
        (48, 32, 8, {}),  # shrinking
        (32, 48, 8, {"reg_tokens": 4}),  # class + 4 register tokens
        (32, 56, 8, {"class_token": False, "global_pool": "avg"}),  # no prefix
        (32, 48, 8, {"no_embed_class": True}),  # prefix tokens outside pos_embed
    ],
)
def test_timm_vit_pos_embed_matches_timm_resample(img, new_img, patch, extra):
    import torch
    from timm.layers import resample_abs_pos_embed
    from timm.models.vision_transformer import VisionTransformer

    options = dict(patch_size=patch, embed_dim=8, depth=1, num_heads=2, num_classes=5, **extra)
    source = VisionTransformer(img_size=img, **options)
    with torch.no_grad():
        source.pos_embed.normal_(0, 1)
    model = VisionTransformer(img_size=new_img, **options)
    report = xfreeze.load_matched(model, source.state_dict())
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    side = new_img // patch
    want = resample_abs_pos_embed(source.pos_embed.detach(), [side, side], num_prefix_tokens=prefix).numpy()
    got = model.pos_embed.detach().numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= POS_TOLERANCE * np.abs(source.pos_embed.detach().numpy()).max()
    assert np.array_equal(got[:, :prefix], source.pos_embed.detach().numpy()[:, :prefix])  # prefix kept as is
    assert list(report.adapted) == ["pos_embed"] and not report.mismatched
    assert report.adapted["pos_embed"][2].startswith(f"position grid {img // patch}x{img // patch} -> {side}x{side}")
    assert "pos_embed" not in report.loaded and "adapted" in str(report)


def test_nhwc_pos_embed_matches_timm():
    import torch
    from timm.layers import resample_abs_pos_embed_nhwc

    model = pos_model(kit("torch"), 1)
    model.pos_embed = torch.nn.Parameter(torch.zeros(1, 6, 5, 8))  # [1, H, W, D], as timm's SAM-style ViTs keep it
    source = {k: torch.from_numpy(v) for k, v in pos_source(1).items()}
    source["pos_embed"] = torch.randn(1, 4, 3, 8, generator=torch.Generator().manual_seed(0))
    report = xfreeze.load_matched(model, source)
    want = resample_abs_pos_embed_nhwc(source["pos_embed"], [6, 5]).numpy()
    assert report.adapted["pos_embed"][2].startswith("position grid 4x3 -> 6x5")
    assert np.abs(model.pos_embed.detach().numpy() - want).max() <= POS_TOLERANCE * float(
        source["pos_embed"].abs().max()
    )


def test_bfloat16_tables_adapt_the_same_in_both_frameworks(fw):
    """numpy has no bfloat16: the table is widened to float32, adapted, and rounded back, the same in both."""
    bits = {}
    for name in ("torch", fw.name):
        other = kit(name)
        model = other.cast(pos_model(other, 1 + 36), "bfloat16")
        to_bf16 = adapter_for(model).cast
        source = {k: to_bf16(other.tensor(v), "bfloat16") for k, v in pos_source(1 + 16).items()}
        report = xfreeze.load_matched(model, source)
        assert list(report.adapted) == ["pos_embed"] and not report.cast
        bits[name] = to_raw(native_state(model)["pos_embed"])
    assert bits[fw.name].dtype == "bfloat16" and np.array_equal(bits[fw.name].bits, bits["torch"].bits)


@pytest.mark.parametrize("prefix", [None, 1])
def test_pos_embed_is_the_same_in_both_frameworks(fw, prefix):
    """The same numpy code adapts for both: Paddle's value is torch's, bit for bit, and close to timm's."""
    import torch
    from timm.layers import resample_abs_pos_embed

    source = pos_source(1 + 16)
    results = {}
    for name in ("torch", fw.name):
        other = kit(name)
        model = pos_model(other, 1 + 36, prefix=prefix)
        report = xfreeze.load_matched(model, {k: other.tensor(v) for k, v in source.items()})
        assert list(report.adapted) == ["pos_embed"], str(report)
        results[name] = value(other, model, "pos_embed")
    assert np.array_equal(results[fw.name], results["torch"])
    want = resample_abs_pos_embed(torch.from_numpy(source["pos_embed"]), [6, 6], num_prefix_tokens=1).numpy()
    assert np.abs(results[fw.name] - want).max() <= POS_TOLERANCE * np.abs(source["pos_embed"]).max()


def test_pos_embed_prefix_comes_from_the_model(fw):
    """num_prefix_tokens=5 (class + 4 registers): 5 + 4x4 -> 5 + 6x6, where no other count fits the model."""
    source = pos_source(5 + 16)
    model = pos_model(fw, 5 + 36, prefix=5)
    report = xfreeze.load_matched(model, {k: fw.tensor(v) for k, v in source.items()})
    assert report.adapted["pos_embed"][2].endswith("5 prefix tokens kept")
    assert np.array_equal(value(fw, model, "pos_embed")[:, :5], source["pos_embed"][:, :5])


@pytest.mark.parametrize(
    "tokens, new_tokens, prefix",
    [(1 + 16, 1 + 30, None), (1 + 16, 1 + 36, 2)],  # no square grid; the model's prefix does not fit the grids
)
def test_pos_embed_that_does_not_fit_a_grid_stays_a_mismatch(fw, tokens, new_tokens, prefix):
    model = pos_model(fw, new_tokens, prefix=prefix)
    before = value(fw, model, "pos_embed")
    with pytest.warns(UserWarning, match=r"did not fill 1 keys .*pos_embed.*\nHINT"):
        report = xfreeze.load_matched(model, {k: fw.tensor(v) for k, v in pos_source(tokens).items()})
    assert "pos_embed" in report.mismatched and not report.adapted
    assert np.array_equal(value(fw, model, "pos_embed"), before)


def test_adapt_false_keeps_the_mismatch(fw):
    model = pos_model(fw, 1 + 36)
    before = value(fw, model, "pos_embed")
    with pytest.warns(UserWarning, match="did not fill 1 keys"):
        report = xfreeze.load_matched(model, {k: fw.tensor(v) for k, v in pos_source(1 + 16).items()}, adapt=False)
    assert report.mismatched == {"pos_embed": ((1, 37, 8), (1, 17, 8))} and not report.adapted
    assert np.array_equal(value(fw, model, "pos_embed"), before)
    with pytest.raises(xfreeze.XFreezeError, match="adapt must be True or False. Received: adapt='no'"):
        xfreeze.load_matched(model, pos_source(1 + 16), adapt="no")


# --- 1-D position tables -------------------------------------------------------------------------------------------


def text_model(fw, positions: int, vocab: int = 10, dim: int = 4, padding_idx=None):
    """BERT-style embeddings: word_embeddings, position_embeddings, and an LM output layer ``lm_head``."""

    class TinyLM(fw.Module):
        def __init__(self):
            super().__init__()
            self.word_embeddings = fw.nn.Embedding(vocab, dim)
            self.position_embeddings = fw.nn.Embedding(positions, dim, padding_idx=padding_idx)
            self.lm_head = fw.linear(dim, vocab)

    return TinyLM()


def text_source(fw, positions: int, vocab: int = 10, seed: int = 1, padding_idx=None) -> tuple:
    source = text_model(fw, positions, vocab, padding_idx=padding_idx)
    rng = np.random.default_rng(seed)
    fw.load(source, {k: rng.normal(0, 1, v.shape).astype(np.float32) for k, v in fw.state(source).items()})
    return source, fw.state(source)


def test_longer_position_table_is_stretched_linearly(fw):
    import torch

    source, canonical = text_source(fw, 8)
    model = text_model(fw, 16)
    report = xfreeze.load_matched(model, native_state(source))
    table = canonical["position_embeddings.weight"]  # [8, 4]
    want = torch.nn.functional.interpolate(torch.from_numpy(table.T[None]), size=16, mode="linear").numpy()[0].T
    assert np.abs(value(fw, model, "position_embeddings.weight") - want).max() <= 1e-6
    assert report.adapted["position_embeddings.weight"][2] == "position table 8 -> 16 rows: stretched linearly"


def test_padding_rows_of_a_position_table_are_kept(fw):
    """RoBERTa-style: positions start after padding_idx; rows 0..padding_idx stay, the rest is stretched."""
    import torch

    source, canonical = text_source(fw, 2 + 6, padding_idx=1)
    model = text_model(fw, 2 + 12, padding_idx=1)
    report = xfreeze.load_matched(model, native_state(source))
    table, got = canonical["position_embeddings.weight"], value(fw, model, "position_embeddings.weight")
    want = torch.nn.functional.interpolate(torch.from_numpy(table[2:].T[None]), size=12, mode="linear").numpy()[0].T
    assert np.array_equal(got[:2], table[:2]) and np.abs(got[2:] - want).max() <= 1e-6
    assert report.adapted["position_embeddings.weight"][2].endswith("2 padding rows kept")


def test_shorter_position_table_keeps_its_first_rows(fw):
    source, canonical = text_source(fw, 16)
    model = text_model(fw, 8)
    report = xfreeze.load_matched(model, native_state(source))
    assert np.array_equal(value(fw, model, "position_embeddings.weight"), canonical["position_embeddings.weight"][:8])
    assert "the first rows kept" in report.adapted["position_embeddings.weight"][2]


# --- embeddings and output layers with more rows --------------------------------------------------------------------


def test_grown_vocabulary_gets_mean_rows_in_embedding_and_output_layer(fw):
    """10 -> 12 tokens: the Embedding's rows, the lm_head's outputs (Paddle: its weight's columns) and its bias."""
    source, canonical = text_source(fw, 8, vocab=10)
    model = text_model(fw, 8, vocab=12)
    report = xfreeze.load_matched(model, native_state(source))
    assert set(report.adapted) == {"word_embeddings.weight", "lm_head.weight", "lm_head.bias"}
    assert report.adapted["lm_head.weight"][1:] == (
        fw.linear_weight_shape(4, 10),
        "10 -> 12 rows: 2 new rows, the mean of the old ones",
    )
    for key in report.adapted:
        old, new = canonical[key], value(fw, model, key)
        assert np.array_equal(new[:10], old)
        assert np.allclose(new[10:], old.mean(axis=0, dtype=np.float64), rtol=0, atol=1e-7)
    assert not report.mismatched


def test_fewer_rows_and_classifier_heads_are_never_adapted(fw):
    source, _ = text_source(fw, 8, vocab=12)
    model = text_model(fw, 8, vocab=10)
    report = xfreeze.load_matched(model, native_state(source), allow_partial=True)  # no source row is dropped
    assert set(report.mismatched) == {"word_embeddings.weight", "lm_head.weight", "lm_head.bias"}
    classifier, bigger = fw.build(Spec("cnn", (4,))), fw.build(Spec("cnn", (4,), classes=5))  # a class head
    report = xfreeze.load_matched(bigger, native_state(classifier))
    assert set(report.mismatched) == {"5.weight", "5.bias"} and not report.adapted


def test_adapted_keys_count_as_placed(fw):
    """Every key adapted, none loaded as is: the load is whole, not partial."""
    source, _ = text_source(fw, 8, vocab=10)
    model = text_model(fw, 16, vocab=12)
    report = xfreeze.load_matched(model, native_state(source))
    assert report.loaded == [] and len(report.adapted) == 4


def test_tied_output_layer_matches_transformers_mean_resizing():
    """A tied BERT MLM head (get_output_embeddings, decoder bias tied to predictions.bias): transformers'
    resize_token_embeddings(mean_resizing=True) adds a tiny random term (1e-9 of the covariance): close, not equal."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    source = BertForMaskedLM(tiny_text_config(BertConfig))  # 40 tokens
    reference = BertForMaskedLM(tiny_text_config(BertConfig))
    reference.load_state_dict(source.state_dict())
    reference.resize_token_embeddings(44, mean_resizing=True)
    config = tiny_text_config(BertConfig)
    config.vocab_size = 44
    model = BertForMaskedLM(config)
    report = xfreeze.load_matched(model, source.state_dict())
    assert {"bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"} <= set(report.adapted)
    got, want = model.state_dict(), reference.state_dict()
    for key in ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight", "cls.predictions.bias"):
        assert torch.equal(got[key][:40], want[key][:40]), key
        assert torch.allclose(got[key][40:], want[key][40:], rtol=0, atol=1e-3), key
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


# --- the first convolution's input channels: timm's adapt_input_conv ------------------------------------------------


def conv_model(fw, in_chans: int, second_in: int = 4):
    return fw.nn.Sequential(fw.conv2d(in_chans, 4, 3), fw.nn.ReLU(), fw.conv2d(second_in, 6, 3))


@pytest.mark.parametrize("have, want", [(1, 3), (3, 4), (3, 1), (3, 2)])
def test_first_conv_input_channels_match_timm(fw, have, want):
    import torch
    from timm.models._manipulate import adapt_input_conv

    source = conv_model(fw, have)
    fw.load(
        source,
        {k: np.random.default_rng(2).normal(0, 1, v.shape).astype(np.float32) for k, v in fw.state(source).items()},
    )
    model = conv_model(fw, want)
    report = xfreeze.load_matched(model, native_state(source))
    oracle = adapt_input_conv(want, torch.from_numpy(fw.state(source)["0.weight"]), base_chans=have).numpy()
    assert np.array_equal(value(fw, model, "0.weight"), oracle)  # same float32 operations as timm
    assert list(report.adapted) == ["0.weight"] and "timm adapt_input_conv" in report.adapted["0.weight"][2]


def test_only_the_first_conv_is_adapted(fw):
    source = conv_model(fw, 3, second_in=4)
    model = conv_model(fw, 3, second_in=5)
    with pytest.warns(UserWarning, match="did not fill 1 keys .*2.weight"):
        report = xfreeze.load_matched(model, native_state(source))
    assert list(report.mismatched) == ["2.weight"] and not report.adapted

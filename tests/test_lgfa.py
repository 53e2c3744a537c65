"""LanguageGuidedFeatureAggregation: per-stage fusion (Eq. 3-7), attention deficit compensation (Eq. 8-13)."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from crobim_d2 import add_crobim_config
from crobim_d2.modeling.lgfa import LanguageGuidedFeatureAggregation, attention_deficit_map, self_attention

CHANNELS = [8, 16, 32, 64]


def inputs(n: int = 2, sizes=(32, 16, 8, 4), tokens: int = 12, valid: int = 7):
    feats = [torch.randn(n, c, s, s) for c, s in zip(CHANNELS, sizes)]
    lang = torch.randn(n, tokens, 24)
    mask = torch.zeros(n, tokens, dtype=torch.long)
    mask[:, :valid] = 1
    return feats, lang, mask


def build(**kwargs) -> LanguageGuidedFeatureAggregation:
    torch.manual_seed(0)
    args = {"in_channels": CHANNELS, "text_dim": 24, "num_heads": 4, "topk": 3, "adc_dim": 16}
    return LanguageGuidedFeatureAggregation(**{**args, **kwargs})


@pytest.mark.parametrize("adc_stages", [[], [3], [2, 3], [1, 2, 3], [0, 1, 2, 3]])
def test_every_adc_ablation_keeps_shapes_and_trains_every_parameter(adc_stages):
    lgfa = build(adc_stages=adc_stages)
    assert (lgfa.adc is None) == (not adc_stages)
    feats, lang, mask = inputs()
    out = lgfa(feats, lang, mask)
    assert [o.shape for o in out] == [f.shape for f in feats]
    sum(o.square().sum() for o in out).backward()
    assert [n for n, p in lgfa.named_parameters() if p.grad is None] == []


def test_adc_changes_exactly_topk_regions_of_the_compensated_stages():
    feats, lang, mask = inputs(n=1)
    without = build(adc_stages=[])(feats, lang, mask)
    lgfa = build(adc_stages=[0, 3], topk=3)
    with_adc = lgfa(feats, lang, mask)
    assert torch.equal(with_adc[1], without[1]) and torch.equal(with_adc[2], without[2])
    changed4 = (with_adc[3] != without[3]).any(1)[0]  # (4, 4) stage-4 grid
    assert changed4.sum() == 3  # K regions of Eq. 10
    changed1 = (with_adc[0] != without[0]).any(1)[0].view(4, 8, 4, 8).any(3).any(1)  # 8x8 patches per region
    assert torch.equal(changed1, changed4)


def test_padded_words_do_not_change_the_output():
    lgfa = build()
    feats, lang, mask = inputs()
    out = lgfa(feats, lang, mask)
    lang2 = lang.clone()
    lang2[:, 7:] = torch.randn_like(lang2[:, 7:])
    for a, b in zip(out, lgfa(feats, lang2, mask)):
        assert torch.allclose(a, b, atol=1e-6)
    lang2[:, 0] += 1.0  # a real word does matter
    assert not torch.allclose(out[0], lgfa(feats, lang2, mask)[0], atol=1e-4)


def test_attention_deficit_map_sums_differences_of_adjacent_stages():
    a1 = torch.zeros(1, 2, 4, 4)
    a2 = torch.zeros(1, 2, 2, 2)
    a2[0, 0, 1, 1] = 1.0
    a3 = torch.zeros(1, 2, 2, 2)
    deficit = attention_deficit_map([a1, a2, a3], (2, 2))
    expected = torch.zeros(1, 2, 2)
    expected[0, 1, 1] = 2.0  # |S'_1 - S'_2| + |S'_2 - S'_3|
    assert torch.equal(deficit, expected)


def test_sizes_that_are_not_multiples_of_stage_four():
    lgfa = build()
    feats, lang, mask = inputs(n=1, sizes=(33, 17, 9, 5))
    out = lgfa(feats, lang, mask)
    assert [o.shape for o in out] == [f.shape for f in feats]


def test_bf16_autocast_runs():
    lgfa = build()
    feats, lang, mask = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lgfa(feats, lang, mask)
    assert [o.shape for o in out] == [f.shape for f in feats]
    assert all(torch.isfinite(o).all() for o in out)


def test_from_config_maps_stage_names_and_validates():
    cfg = get_cfg()
    add_crobim_config(cfg)
    shapes = {f"res{i + 2}": ShapeSpec(channels=c, stride=2 ** (i + 2)) for i, c in enumerate(CHANNELS)}
    cfg.MODEL.CROBIM.LGFA_NUM_HEADS = 4
    cfg.MODEL.CROBIM.HIDDEN_DIM = 32
    cfg.MODEL.CROBIM.ADC_STAGES = ["res5", "res4"]
    lgfa = LanguageGuidedFeatureAggregation(cfg, shapes, 24)
    assert lgfa.adc.stages == [2, 3] and lgfa.adc.topk == cfg.MODEL.CROBIM.ADC_TOPK
    cfg.MODEL.CROBIM.ADC_STAGES = []
    assert LanguageGuidedFeatureAggregation(cfg, shapes, 24).adc is None
    cfg.MODEL.CROBIM.ADC_STAGES = ["p3"]
    with pytest.raises(ValueError, match="ADC_STAGES"):
        LanguageGuidedFeatureAggregation(cfg, shapes, 24)


def test_folded_fusion_equals_the_equations_as_written():
    fusion = build(adc_stages=[]).fusions[1]
    feats, lang, mask = inputs()
    v = feats[1]
    n, c, h, w = v.shape
    x = v.flatten(2).transpose(1, 2)
    q = fusion.query(x).view(n, h * w, 4, c // 4).transpose(1, 2)  # Eq. 3
    k = fusion.key(lang).view(n, -1, 4, c // 4).transpose(1, 2)  # Eq. 4
    val = fusion.value(lang).view(n, -1, 4, c // 4).transpose(1, 2)
    scores = (q @ k.transpose(2, 3)) / (c // 4) ** 0.5  # Eq. 5
    probs = scores.masked_fill(~mask.bool()[:, None, None], float("-inf")).softmax(-1)
    att = (probs @ val).transpose(1, 2).reshape(n, h * w, c)
    expected = fusion.reweight(torch.nn.functional.gelu(fusion.gate(att))) * x  # Eq. 6-7
    fused, attn_map = fusion(v, lang, mask)
    assert torch.allclose(fused, expected.transpose(1, 2).reshape(n, c, h, w), atol=1e-5)
    assert torch.allclose(attn_map, probs.mean(1).transpose(1, 2).reshape(n, -1, h, w), atol=1e-6)


def test_adc_self_attention_equals_multihead_attention():
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(3, 21, 32)
    want = attn(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(self_attention(attn, x), want, rtol=1e-5, atol=1e-6)

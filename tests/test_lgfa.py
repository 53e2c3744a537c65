"""LanguageGuidedFeatureAggregation: per-stage fusion (Eq. 3-7), attention deficit compensation (Eq. 8-13)."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

from crobim_d2 import add_crobim_config
from crobim_d2.modeling.lgfa import (
    ChannelCompensation,
    LanguageGuidedFeatureAggregation,
    SequenceCompensation,
    add_to_regions,
    attention_deficit_map,
    gather_regions,
)

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


@pytest.mark.parametrize("fusion", ["sequence", "channel"])
@pytest.mark.parametrize("adc_stages", [[], [3], [2, 3], [1, 2, 3], [0, 1, 2, 3]])
def test_every_adc_ablation_keeps_shapes_and_trains_every_parameter(adc_stages, fusion):
    lgfa = build(adc_stages=adc_stages, adc_fusion=fusion)
    assert (lgfa.adc is None) == (not adc_stages)
    feats, lang, mask = inputs()
    out = lgfa(feats, lang, mask)
    assert [o.shape for o in out] == [f.shape for f in feats]
    sum(o.square().sum() for o in out).backward()
    assert [n for n, p in lgfa.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("fusion", ["sequence", "channel"])
def test_adc_changes_exactly_topk_regions_of_the_compensated_stages(fusion):
    feats, lang, mask = inputs(n=1)
    without = build(adc_stages=[])(feats, lang, mask)
    lgfa = build(adc_stages=[0, 3], topk=3, adc_fusion=fusion)
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


@pytest.mark.parametrize("fusion", ["sequence", "channel"])
def test_sizes_that_are_not_multiples_of_stage_four(fusion):
    lgfa = build(adc_fusion=fusion)
    feats, lang, mask = inputs(n=1, sizes=(33, 17, 9, 5))
    out = lgfa(feats, lang, mask)
    assert [o.shape for o in out] == [f.shape for f in feats]


@pytest.mark.parametrize("fusion", ["sequence", "channel"])
def test_bf16_autocast_runs(fusion):
    lgfa = build(adc_fusion=fusion)
    feats, lang, mask = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lgfa(feats, lang, mask)
    assert [o.shape for o in out] == [f.shape for f in feats]
    assert all(torch.isfinite(o).all() for o in out)


def test_from_config_maps_stage_names_and_validates():
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.MODEL.CROBIM.LGFA_NUM_HEADS = 4
    cfg.MODEL.CROBIM.HIDDEN_DIM = 32
    cfg.MODEL.CROBIM.ADC_STAGES = ["res5", "res4"]
    lgfa = LanguageGuidedFeatureAggregation(cfg, CHANNELS, 24)
    assert isinstance(lgfa.adc, SequenceCompensation)
    assert lgfa.adc.stages == [2, 3] and lgfa.adc.topk == cfg.MODEL.CROBIM.ADC_TOPK
    cfg.MODEL.CROBIM.ADC_FUSION = "channel"
    lgfa = LanguageGuidedFeatureAggregation(cfg, CHANNELS, 24)
    assert isinstance(lgfa.adc, ChannelCompensation)
    assert lgfa.adc.grid_size == cfg.MODEL.CROBIM.ADC_GRID_SIZE == 8
    cfg.MODEL.CROBIM.ADC_GRID_SIZE = 0
    with pytest.raises(ValueError, match="ADC_GRID_SIZE"):
        LanguageGuidedFeatureAggregation(cfg, CHANNELS, 24)
    cfg.MODEL.CROBIM.ADC_GRID_SIZE = 8
    cfg.MODEL.CROBIM.ADC_FUSION = "tokens"
    with pytest.raises(ValueError, match="ADC_FUSION.*sequence"):
        LanguageGuidedFeatureAggregation(cfg, CHANNELS, 24)
    cfg.MODEL.CROBIM.ADC_FUSION = "sequence"
    cfg.MODEL.CROBIM.ADC_STAGES = []
    assert LanguageGuidedFeatureAggregation(cfg, CHANNELS, 24).adc is None
    cfg.MODEL.CROBIM.ADC_STAGES = ["p3"]
    with pytest.raises(ValueError, match="ADC_STAGES"):
        LanguageGuidedFeatureAggregation(cfg, CHANNELS, 24)


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


@pytest.mark.parametrize("fusion", ["sequence", "channel"])
def test_every_stage_takes_part_in_the_attention_when_one_is_written_back(fusion):
    """Table VI: ADC_STAGES = [res5] refines V_4's regions from all four stages (not from V_4 alone)."""
    torch.manual_seed(0)
    cls = SequenceCompensation if fusion == "sequence" else ChannelCompensation
    extra = {} if fusion == "sequence" else {"grid_size": 4}
    adc = cls(CHANNELS, [3], 3, 16, 4, **extra)
    assert len(adc.proj_in) == 4 and len(adc.proj_out) == 1
    feats, _, _ = inputs()
    deficit = torch.rand(2, 4, 4)
    out = adc(feats, deficit)
    assert all(torch.equal(o, f) for o, f in zip(out[:3], feats[:3]))
    changed = list(feats)
    changed[0] = torch.randn_like(feats[0])
    assert not torch.allclose(adc(changed, deficit)[3], out[3], atol=1e-5)


def resample_plain(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One patch (C, h, w) -> (C, *size): bilinear when both sides grow, area average when both shrink."""
    h, w = x.shape[-2:]
    if size[0] >= h and size[1] >= w:
        return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    assert size[0] <= h and size[1] <= w
    return F.adaptive_avg_pool2d(x[None], size)[0]


def attention_plain(attn, x: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention of one sequence x (L, D) with ``attn``'s projections."""
    m = attn.num_heads
    length, d = x.shape
    q, k, v = (p(x).view(length, m, -1).transpose(0, 1) for p in (attn.q, attn.k, attn.v))
    weights = (q @ k.transpose(1, 2) / (d // m) ** 0.5).softmax(-1)
    return F.linear((weights @ v).transpose(0, 1).reshape(length, d), attn.out.weight, attn.out.bias)


def channel_adc_plain(adc: ChannelCompensation, features: list, deficit: torch.Tensor) -> list:
    """Eq. 10-13 as written, one image and one region at a time."""
    n, h4, w4 = deficit.shape
    g, dim = adc.grid_size, adc.dim
    out = [f.clone() for f in features]
    for b in range(n):
        grids = []
        for v in features:
            rh, rw = max(1, round(v.shape[2] / h4)), max(1, round(v.shape[3] / w4))
            vb = v[b]
            if vb.shape[1:] != (rh * h4, rw * w4):  # I of a stage that is not a multiple of the stage-4 grid
                vb = F.interpolate(vb[None], size=(rh * h4, rw * w4), mode="bilinear", align_corners=False)[0]
            grids.append((vb, rh, rw))
        changes = {i: torch.zeros_like(grids[i][0]) for i in adc.stages}
        for r in deficit[b].flatten().topk(min(adc.topk, h4 * w4)).indices.tolist():
            y, x = divmod(r, w4)
            patches, columns = [], []
            for (vb, rh, rw), proj in zip(grids, adc.proj_in):
                patch = vb[:, y * rh:(y + 1) * rh, x * rw:(x + 1) * rw]
                patches.append(patch)
                tokens = resample_plain(patch, (g, g)).reshape(patch.shape[0], g * g).t()  # I
                columns.append(F.linear(tokens, proj.weight, proj.bias))  # Proj->
            cat = torch.cat(columns, dim=1)  # Concat over channels
            normed = F.layer_norm(cat, (cat.shape[1],), adc.norm.weight, adc.norm.bias)
            refined = cat + attention_plain(adc.attn, normed)  # Eq. 12
            for j, i in enumerate(adc.stages):
                _, rh, rw = grids[i]
                part = refined[:, i * dim:(i + 1) * dim]  # Split
                new = F.linear(part, adc.proj_out[j].weight, adc.proj_out[j].bias)  # Proj<-
                new = resample_plain(new.t().reshape(-1, g, g), (rh, rw))  # I'
                changes[i][:, y * rh:(y + 1) * rh, x * rw:(x + 1) * rw] = new - patches[i]
        for i, change in changes.items():
            if change.shape[1:] != features[i].shape[2:]:  # back to the stage's own size
                size = features[i].shape[2:]
                change = F.interpolate(change[None], size=size, mode="bilinear", align_corners=False)[0]
            out[i][b] = features[i][b] + change
    return out


@pytest.mark.parametrize("sizes", [(32, 16, 8, 4), (33, 17, 9, 5)], ids=["multiples", "not-multiples"])
@pytest.mark.parametrize("grid_size", [8, 3])
@pytest.mark.parametrize("stages", [[0, 1, 2, 3], [1, 3]])
def test_channel_adc_equals_a_per_region_reference(sizes, grid_size, stages):
    torch.manual_seed(0)
    adc = ChannelCompensation(CHANNELS, stages, 5, 16, 4, grid_size).double()
    feats = [torch.randn(2, c, s, s, dtype=torch.double) for c, s in zip(CHANNELS, sizes)]
    deficit = torch.rand(2, sizes[3], sizes[3], dtype=torch.double)
    want = channel_adc_plain(adc, feats, deficit)
    for got, ref in zip(adc(feats, deficit), want):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def region_patch(v: torch.Tensor, b: int, cell: int, w4: int, rh: int, rw: int) -> torch.Tensor:
    i, j = divmod(cell, w4)
    return v[b, :, i * rh : (i + 1) * rh, j * rw : (j + 1) * rw]  # (C, r_h, r_w)


@pytest.mark.parametrize("rh,rw", [(4, 4), (2, 2), (1, 1), (2, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_regions_are_read_and_written_in_place_of_their_patches(rh, rw, channels_last):
    """gather_regions / add_to_regions index the K patches directly: equal to slicing each region out."""
    torch.manual_seed(0)
    h4, w4, c = 3, 5, 6
    v = torch.randn(2, c, rh * h4, rw * w4, dtype=torch.float64)
    if channels_last:
        v = v.to(memory_format=torch.channels_last)
    regions = torch.stack([torch.randperm(h4 * w4)[:4] for _ in range(2)])
    delta = torch.randn(2, 4, rh * rw, c, dtype=torch.float64)
    patches = gather_regions(v, regions, rh, rw)
    out = add_to_regions(v, delta, regions, h4, w4, rh, rw)
    expected = v.clone()
    for b in range(2):
        for k, cell in enumerate(regions[b].tolist()):
            patch = region_patch(v, b, cell, w4, rh, rw)
            assert torch.equal(patches[b, k], patch.flatten(1).t())  # (r_h*r_w, C), row-major in the patch
            region_patch(expected, b, cell, w4, rh, rw).add_(delta[b, k].t().view(c, rh, rw))
    assert torch.equal(out, expected)
    assert torch.equal(v, expected) is False  # the input is left as it was


def test_add_to_regions_off_the_grid_resamples_the_change():
    """A stage that is not a multiple of the stage-4 grid gets its change resampled: zero outside regions."""
    torch.manual_seed(0)
    v = torch.randn(1, 3, 7, 11, dtype=torch.float64)
    regions = torch.tensor([[0, 4]])
    delta = torch.randn(1, 2, 4, 3, dtype=torch.float64)
    full = torch.zeros(1, 3, 6, 10, dtype=torch.float64)  # the 3 x 5 grid of 2 x 2 patches
    for k, cell in enumerate(regions[0].tolist()):
        region_patch(full, 0, cell, 5, 2, 2).copy_(delta[0, k].t().view(3, 2, 2))
    expected = v + F.interpolate(full, size=(7, 11), mode="bilinear", align_corners=False)
    assert torch.allclose(add_to_regions(v, delta, regions, 3, 5, 2, 2), expected, rtol=0, atol=1e-12)

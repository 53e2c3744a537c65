"""ContextAwarePromptModulation: pooled multi-scale context read by learnable prompts (Eq. 1-2, Table V)."""

import pytest
import torch
from detectron2.config import get_cfg

from crobim_d2 import add_crobim_config
from crobim_d2.modeling.capm import ContextAwarePromptModulation, pool_context

CHANNELS = [8, 16, 32, 64]


def features(n: int = 2, sizes=(32, 16, 8, 4)) -> list[torch.Tensor]:
    return [torch.randn(n, c, s, s) for c, s in zip(CHANNELS, sizes)]


def test_paper_settings_give_four_prompts_of_text_width():
    torch.manual_seed(0)
    capm = ContextAwarePromptModulation(in_channels=CHANNELS, text_dim=48, num_heads=4)
    assert capm.prompts.shape == (4, 48)  # N_p = 4
    assert capm.context_embed.shape == (4, 48)  # V_e: 4 s^2 tokens with s = 1
    assert capm(features()).shape == (2, 4, 48)


@pytest.mark.parametrize("pool_type", ["adaptive_avg", "avg", "max"])
@pytest.mark.parametrize("scales", [[0, 1, 2], [0, 1, 3], [1, 2, 3], [0, 1, 2, 3]])
def test_every_ablation_builds_runs_and_trains_every_parameter(pool_type, scales):
    torch.manual_seed(0)
    capm = ContextAwarePromptModulation(
        in_channels=CHANNELS, text_dim=32, num_heads=4, pool_type=pool_type, scales=scales, pool_size=2
    )
    out = capm(features())
    assert out.shape == (2, 4, 32) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert [n for n, p in capm.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_output_depends_on_each_pooled_scale_only():
    torch.manual_seed(0)
    capm = ContextAwarePromptModulation(in_channels=CHANNELS, text_dim=32, num_heads=4, scales=[1, 3])
    feats = features()
    out = capm(feats)
    changed = list(feats)
    changed[0] = torch.randn_like(feats[0])  # scale 0 is not pooled
    assert torch.allclose(capm(changed), out)
    changed[3] = torch.randn_like(feats[3])
    assert not torch.allclose(capm(changed), out, atol=1e-4)


def test_pool_types_differ_at_the_papers_s1():
    """Table V(b) at s = 1: adaptive average = one global mean per scale (4 tokens); fixed-kernel average /
    max pooling with the kernel that pools V_4 to 1x1 = 8x8, 4x4, 2x2, 1x1 cells (85 tokens)."""
    feats = features(n=1)
    coarsest = (4, 4)
    x = feats[0]  # 32x32 -> 8x8 windows of 4x4
    assert torch.allclose(pool_context(x, 1, "adaptive_avg", coarsest), x.mean((2, 3), keepdim=True))
    windows = x.view(1, 8, 8, 4, 8, 4)
    assert torch.allclose(pool_context(x, 1, "avg", coarsest), windows.mean((3, 5)))
    assert torch.equal(pool_context(x, 1, "max", coarsest), windows.amax((3, 5)))
    assert [pool_context(f, 1, "avg", coarsest).shape[-1] for f in feats] == [8, 4, 2, 1]
    lengths = []
    capm = {}
    for pool_type in ("adaptive_avg", "avg", "max"):
        torch.manual_seed(0)
        capm[pool_type] = ContextAwarePromptModulation(
            in_channels=CHANNELS, text_dim=32, num_heads=4, pool_type=pool_type
        )
        hook = capm[pool_type].cross_attn.register_forward_hook(lambda m, a, o: lengths.append(a[1].shape[1]))
        capm[pool_type](feats)
        hook.remove()
    assert lengths == [4, 85, 85]  # V_e tokens
    outs = {k: m(feats) for k, m in capm.items()}
    assert not torch.allclose(outs["adaptive_avg"], outs["avg"], atol=1e-4)
    assert not torch.allclose(outs["adaptive_avg"], outs["max"], atol=1e-4)
    assert not torch.allclose(outs["avg"], outs["max"], atol=1e-4)


def test_fixed_kernel_pooling_needs_a_coarsest_map_of_at_least_s():
    capm = ContextAwarePromptModulation(
        in_channels=CHANNELS, text_dim=32, num_heads=4, pool_type="max", pool_size=5
    )
    with pytest.raises(ValueError, match="CAPM_POOL_SIZE"):
        capm(features())


def test_bf16_autocast_runs():
    capm = ContextAwarePromptModulation(in_channels=CHANNELS, text_dim=32, num_heads=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = capm(features())
    assert out.shape == (2, 4, 32) and torch.isfinite(out).all()


def test_from_config_maps_feature_names_and_validates():
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.MODEL.CROBIM.CAPM_SCALES = ["res5", "res3"]
    capm = ContextAwarePromptModulation(cfg, CHANNELS, 64)
    assert capm.scales == [1, 3] and len(capm.context_proj) == 2
    assert capm.prompts.shape == (cfg.MODEL.CROBIM.NUM_PROMPTS, 64)
    cfg.MODEL.CROBIM.CAPM_SCALES = ["res6"]
    with pytest.raises(ValueError, match="CAPM_SCALES"):
        ContextAwarePromptModulation(cfg, CHANNELS, 64)
    cfg.MODEL.CROBIM.CAPM_SCALES = ["res2"]
    cfg.MODEL.CROBIM.CAPM_POOL_TYPE = "median"
    with pytest.raises(ValueError, match="CAPM_POOL_TYPE.*adaptive_avg"):
        ContextAwarePromptModulation(cfg, CHANNELS, 64)

"""D2SwinTransformer and D2ConvNeXt: shapes, output_shape(), window handling, registry builds."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

from crobim_d2 import add_crobim_config
from crobim_d2.modeling.backbone import D2ConvNeXt, D2SwinTransformer


def tiny_swin(img_size: int, **kw) -> D2SwinTransformer:
    return D2SwinTransformer(
        img_size=img_size, embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), drop_path_rate=0.0, **kw
    )


def tiny_convnext(**kw) -> D2ConvNeXt:
    return D2ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), drop_path_rate=0.0, **kw)


def check_outputs(backbone, img_size: int) -> None:
    outs = backbone(torch.randn(2, 3, img_size, img_size))
    specs = backbone.output_shape()
    assert list(outs) == list(specs) == ["res2", "res3", "res4", "res5"]
    for name, x in outs.items():
        s = specs[name].stride
        assert x.shape == (2, specs[name].channels, img_size // s, img_size // s), name
    assert [specs[n].stride for n in specs] == [4, 8, 16, 32]


@pytest.mark.parametrize("img_size", [64, 128, 192, 480])
def test_swin_shapes_any_window_fit(img_size):
    # 480 gives sides 120/60/30/15 with window 12 (padded); small images shrink the window to the side.
    backbone = tiny_swin(img_size)
    check_outputs(backbone, img_size)
    assert [backbone.output_shape()[n].channels for n in ("res2", "res5")] == [16, 128]


def test_swin_window_padding_keeps_window_12_at_480():
    backbone = tiny_swin(480)
    last = backbone.swin.layers[3].blocks[0]
    assert tuple(last.window_size) == (12, 12)  # 15x15 stage is padded to 24x24, not shrunk


def test_swin_rejects_bad_sizes():
    with pytest.raises(ValueError, match="INPUT.IMAGE_SIZE"):
        tiny_swin(100)
    backbone = tiny_swin(64)
    with pytest.raises(ValueError, match="INPUT.IMAGE_SIZE"):
        backbone(torch.randn(1, 3, 96, 96))


@pytest.mark.parametrize("img_size", [64, 96])
def test_convnext_shapes(img_size):
    check_outputs(tiny_convnext(), img_size)


@pytest.mark.parametrize("make", [lambda **kw: tiny_swin(64, **kw), tiny_convnext])
def test_subset_of_stages_has_no_unused_parameters(make):
    backbone = make(out_features=["res2", "res3"])
    outs = backbone(torch.randn(1, 3, 64, 64))
    assert list(outs) == ["res2", "res3"]
    sum(x.sum() for x in outs.values()).backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_state_dict_uses_timm_keys_under_prefix():
    keys = tiny_swin(64).state_dict().keys()
    assert "swin.patch_embed.proj.weight" in keys and "norm3.weight" in keys
    assert not any(k.startswith(("swin.norm.", "swin.head.")) for k in keys)
    keys = tiny_convnext().state_dict().keys()
    assert "convnext.stem.0.weight" in keys and "convnext.stages.3.downsample.1.weight" in keys
    assert not any(k.startswith("convnext.head.") for k in keys)


@pytest.mark.parametrize("name", ["D2SwinTransformer", "D2ConvNeXt"])
def test_build_from_config(name):
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.MODEL.BACKBONE.NAME = name
    cfg.INPUT.IMAGE_SIZE = 64
    cfg.MODEL.SWIN.EMBED_DIM = 16
    cfg.MODEL.SWIN.DEPTHS = [1, 1, 1, 1]
    cfg.MODEL.SWIN.NUM_HEADS = [1, 1, 2, 2]
    cfg.MODEL.CONVNEXT.DEPTHS = [1, 1, 1, 1]
    cfg.MODEL.CONVNEXT.DIMS = [8, 16, 32, 64]
    backbone = build_backbone(cfg, ShapeSpec(channels=3))
    check_outputs(backbone, 64)

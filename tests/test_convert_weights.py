"""The checkpoint converters map official Swin / ConvNeXt and SMLFR key layouts onto D2SwinTransformer /
D2ConvNeXt."""
import importlib.util
import os

import pytest
import torch

pytest.importorskip("detectron2")

from crobim_d2.modeling.backbone import D2ConvNeXt, D2SwinTransformer

TOOLS = os.path.join(os.path.dirname(__file__), "..", "projects", "CroBIM", "tools")


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rand(*shape):
    return torch.randn(*shape)


def fabricate_official_swin(embed_dim=16, depths=(1, 2, 1, 1), heads=(1, 2, 2, 4), window=7, classes=10):
    """Official Swin layout: merging at the END of stage i, manual buffers, final norm and head."""
    sd = {
        "patch_embed.proj.weight": _rand(embed_dim, 3, 4, 4),
        "patch_embed.proj.bias": _rand(embed_dim),
        "patch_embed.norm.weight": _rand(embed_dim),
        "patch_embed.norm.bias": _rand(embed_dim),
    }
    for i, (depth, h) in enumerate(zip(depths, heads)):
        c = embed_dim * 2**i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            sd.update({
                p + "norm1.weight": _rand(c), p + "norm1.bias": _rand(c),
                p + "attn.relative_position_bias_table": _rand((2 * window - 1) ** 2, h),
                p + "attn.relative_position_index": torch.zeros(window**2, window**2, dtype=torch.long),
                p + "attn.qkv.weight": _rand(3 * c, c), p + "attn.qkv.bias": _rand(3 * c),
                p + "attn.proj.weight": _rand(c, c), p + "attn.proj.bias": _rand(c),
                p + "norm2.weight": _rand(c), p + "norm2.bias": _rand(c),
                p + "mlp.fc1.weight": _rand(4 * c, c), p + "mlp.fc1.bias": _rand(4 * c),
                p + "mlp.fc2.weight": _rand(c, 4 * c), p + "mlp.fc2.bias": _rand(c),
            })
            if j % 2 == 1:
                sd[p + "attn_mask"] = torch.zeros(4, window**2, window**2)
        if i < 3:
            sd[f"layers.{i}.downsample.reduction.weight"] = _rand(2 * c, 4 * c)
            sd[f"layers.{i}.downsample.norm.weight"] = _rand(4 * c)
            sd[f"layers.{i}.downsample.norm.bias"] = _rand(4 * c)
    c = embed_dim * 8
    sd.update({"norm.weight": _rand(c), "norm.bias": _rand(c), "head.weight": _rand(classes, c),
               "head.bias": _rand(classes)})
    return sd


def fabricate_official_convnext(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), classes=10):
    """Official ConvNeXt layout: downsample_layers.{i}, stages.{i}.{j}.dwconv/norm/pwconv1/pwconv2/gamma."""
    sd = {
        "downsample_layers.0.0.weight": _rand(dims[0], 3, 4, 4), "downsample_layers.0.0.bias": _rand(dims[0]),
        "downsample_layers.0.1.weight": _rand(dims[0]), "downsample_layers.0.1.bias": _rand(dims[0]),
    }
    for i in range(1, 4):
        sd.update({
            f"downsample_layers.{i}.0.weight": _rand(dims[i - 1]),
            f"downsample_layers.{i}.0.bias": _rand(dims[i - 1]),
            f"downsample_layers.{i}.1.weight": _rand(dims[i], dims[i - 1], 2, 2),
            f"downsample_layers.{i}.1.bias": _rand(dims[i]),
        })
    for i, (depth, c) in enumerate(zip(depths, dims)):
        for j in range(depth):
            p = f"stages.{i}.{j}."
            sd.update({
                p + "dwconv.weight": _rand(c, 1, 7, 7), p + "dwconv.bias": _rand(c),
                p + "norm.weight": _rand(c), p + "norm.bias": _rand(c),
                p + "pwconv1.weight": _rand(4 * c, c), p + "pwconv1.bias": _rand(4 * c),
                p + "pwconv2.weight": _rand(c, 4 * c), p + "pwconv2.bias": _rand(c),
                p + "gamma": _rand(c),
            })
    sd.update({"norm.weight": _rand(dims[3]), "norm.bias": _rand(dims[3]),
               "head.weight": _rand(classes, dims[3]), "head.bias": _rand(classes)})
    return sd


def _load(backbone, path):
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["matching_heuristics"] is False
    state = {k[len("backbone."):]: v for k, v in ckpt["model"].items()}
    assert all(k.startswith("backbone.") for k in ckpt["model"])
    return backbone.load_state_dict(state, strict=False)


def test_convert_swin(tmp_path):
    official = fabricate_official_swin()
    torch.save({"model": official}, tmp_path / "swin.pth")
    opts = ["INPUT.IMAGE_SIZE", "224", "MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.DEPTHS", "[1, 2, 1, 1]",
            "MODEL.SWIN.NUM_HEADS", "[1, 2, 2, 4]", "MODEL.SWIN.WINDOW_SIZE", "7"]
    report = _tool("convert_swin").main([str(tmp_path / "swin.pth"), str(tmp_path / "out.pth"), "--opts", *opts])
    assert report["unused"] == ["head.fc.bias", "head.fc.weight", "norm.bias", "norm.weight"]
    assert report["missing"] == [f"norm{i}.{p}" for i in range(4) for p in ("bias", "weight")]

    backbone = D2SwinTransformer(img_size=224, embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4),
                                 window_size=7)
    result = _load(backbone, tmp_path / "out.pth")
    assert sorted(result.missing_keys) == report["missing"] and not result.unexpected_keys
    sd = backbone.state_dict()
    # Official merging at the end of stage 0 is timm's merging at the start of stage 1.
    assert torch.equal(sd["swin.layers.1.downsample.reduction.weight"], official["layers.0.downsample.reduction.weight"])
    assert torch.equal(sd["swin.layers.3.downsample.norm.bias"], official["layers.2.downsample.norm.bias"])
    assert torch.equal(
        sd["swin.layers.2.blocks.0.attn.relative_position_bias_table"],
        official["layers.2.blocks.0.attn.relative_position_bias_table"],
    )
    assert torch.equal(sd["swin.patch_embed.proj.weight"], official["patch_embed.proj.weight"])
    assert backbone(torch.zeros(1, 3, 224, 224))["res5"].shape == (1, 128, 7, 7)


def convert_tiny_convnext(tool: str, saved: dict, unused: list[str], tmp_path) -> dict:
    """Run ``tool`` on ``saved`` for a tiny D2ConvNeXt; check its report and the loaded keys; the state dict."""
    torch.save(saved, tmp_path / "in.pth")
    opts = ["MODEL.CONVNEXT.DEPTHS", "[1, 1, 2, 1]", "MODEL.CONVNEXT.DIMS", "[8, 16, 32, 64]"]
    report = _tool(tool).main([str(tmp_path / "in.pth"), str(tmp_path / "out.pth"), "--opts", *opts])
    assert report["unused"] == unused
    assert report["missing"] == [f"norm{i}.{p}" for i in range(4) for p in ("bias", "weight")]
    backbone = D2ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64))
    result = _load(backbone, tmp_path / "out.pth")
    assert sorted(result.missing_keys) == report["missing"] and not result.unexpected_keys
    return backbone.state_dict()


def test_convert_convnext(tmp_path):
    official = fabricate_official_convnext()
    unused = ["head.fc.bias", "head.fc.weight", "head.norm.bias", "head.norm.weight"]
    sd = convert_tiny_convnext("convert_convnext", {"model": official}, unused, tmp_path)
    assert torch.equal(sd["convnext.stem.0.weight"], official["downsample_layers.0.0.weight"])
    assert torch.equal(sd["convnext.stages.2.downsample.1.weight"], official["downsample_layers.2.1.weight"])
    assert torch.equal(sd["convnext.stages.2.blocks.1.conv_dw.weight"], official["stages.2.1.dwconv.weight"])
    assert torch.equal(sd["convnext.stages.2.blocks.1.mlp.fc2.weight"], official["stages.2.1.pwconv2.weight"])
    assert torch.equal(sd["convnext.stages.3.blocks.0.gamma"], official["stages.3.0.gamma"])


def test_convert_shape_mismatch_names_the_key(tmp_path):
    torch.save({"model": fabricate_official_convnext(dims=(8, 16, 32, 48))}, tmp_path / "convnext.pth")
    opts = ["MODEL.CONVNEXT.DEPTHS", "[1, 1, 2, 1]", "MODEL.CONVNEXT.DIMS", "[8, 16, 32, 64]"]
    with pytest.raises(ValueError, match="does not match the backbone"):
        _tool("convert_convnext").main([str(tmp_path / "convnext.pth"), str(tmp_path / "o.pth"), "--opts", *opts])


def test_convert_swin_shape_mismatch_names_the_key(tmp_path):
    torch.save(fabricate_official_swin(embed_dim=8), tmp_path / "swin.pth")
    opts = ["INPUT.IMAGE_SIZE", "224", "MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.DEPTHS", "[1, 2, 1, 1]",
            "MODEL.SWIN.NUM_HEADS", "[1, 2, 2, 4]", "MODEL.SWIN.WINDOW_SIZE", "7"]
    with pytest.raises(ValueError, match="patch_embed.proj.weight has shape"):
        _tool("convert_swin").main([str(tmp_path / "swin.pth"), str(tmp_path / "o.pth"), "--opts", *opts])


def test_convert_missing_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="official"):
        _tool("convert_swin").main([str(tmp_path / "nope.pth"), str(tmp_path / "o.pth")])


def fabricate_smlfr_pretraining(encoder: dict) -> dict:
    """SMLFR's checkpoint with the decoder (PCFM, after SparK): the encoder under sparse_encoder.sp_cnn., the
    densify layers, mask tokens, light decoder and unused buffers beside it, all under "module"."""
    module = {f"sparse_encoder.sp_cnn.{k}": v for k, v in encoder.items()}
    for i, c in enumerate((64, 32, 16, 8)):
        module.update({
            f"densify_norms.{i}.weight": _rand(c), f"densify_norms.{i}.bias": _rand(c),
            f"densify_projs.{i}.weight": _rand(16, c, 3, 3), f"densify_projs.{i}.bias": _rand(16),
            f"mask_tokens.{i}": _rand(1, c, 1, 1),
            f"dense_decoder.dec.{i}.up_sample.weight": _rand(16, 16, 4, 4),
            f"dense_decoder.dec.{i}.up_sample.bias": _rand(16),
            f"dense_decoder.dec.{i}.conv.0.weight": _rand(16, 16, 3, 3),
        })
    module.update({"dense_decoder.proj.weight": _rand(3, 16, 1, 1), "dense_decoder.proj.bias": _rand(3),
                   "imn_m": _rand(1, 3, 1, 1), "imn_s": _rand(1, 3, 1, 1), "norm_black": torch.zeros(1, 3, 8, 8),
                   "config": {"mask_ratio": 0.6, "densify_norm_str": "ln"}})
    return {"args": "...", "arch": "convnext_base", "epoch": 799, "module": module, "is_pretrain": True}


@pytest.mark.parametrize("layout", ["encoder", "with_decoder"])
def test_convert_smlfr(tmp_path, layout):
    """SMLFR's encoder: official ConvNeXt names without the final norm and head, saved alone or with the
    pre-training decoder (HIT-SIRS/SMLFR Pretrain/main.py, encoder.py, pcfm.py)."""
    encoder = {k: v for k, v in fabricate_official_convnext().items() if not k.startswith(("norm.", "head."))}
    saved = encoder if layout == "encoder" else fabricate_smlfr_pretraining(encoder)
    pretraining = [] if layout == "encoder" else sorted(k for k in saved["module"] if not k.startswith("sparse_"))
    sd = convert_tiny_convnext("convert_smlfr", saved, pretraining, tmp_path)
    assert torch.equal(sd["convnext.stem.1.weight"], encoder["downsample_layers.0.1.weight"])
    assert torch.equal(sd["convnext.stages.3.downsample.1.weight"], encoder["downsample_layers.3.1.weight"])
    assert torch.equal(sd["convnext.stages.2.blocks.1.mlp.fc1.weight"], encoder["stages.2.1.pwconv1.weight"])
    assert torch.equal(sd["convnext.stages.0.blocks.0.gamma"], encoder["stages.0.0.gamma"])


def test_convert_smlfr_rejects_other_checkpoints(tmp_path):
    torch.save({"model": fabricate_official_swin()}, tmp_path / "swin.pth")
    with pytest.raises(ValueError, match="Not an SMLFR ConvNeXt checkpoint.*convert_convnext.py"):
        _tool("convert_smlfr").main([str(tmp_path / "swin.pth"), str(tmp_path / "o.pth")])

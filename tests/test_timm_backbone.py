"""D2TimmBackbone: any timm model under CroBIM, and the packaged ImageNet weights loaded exactly."""
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from _wheels import wheel_member
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from efficientnet_lite_pytorch import EfficientNet  # the reference implementation of these weights
from PIL import Image
from test_meta_arch import check_train_step, make_inputs, tiny_cfg

from crobim_d2 import add_crobim_config
from crobim_d2.modeling.backbone import D2TimmBackbone
from crobim_d2.modeling.backbone.timm_weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OFFLINE_IMAGE_WEIGHTS,
    read_timm_state_dict,
)

SKIMAGE = "scikit-image==0.26.0"  # its wheel ships skimage.data's photos: chelsea (a cat), coffee (a cup)
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
CUP_CLASSES = (504, 967, 968)  # coffee mug, espresso, cup


def photo(name: str) -> torch.Tensor:
    """skimage.data's photo ``name`` as a normalised (1, 3, 224, 224) ImageNet input."""
    rgb = np.array(Image.open(wheel_member(SKIMAGE, f"skimage/data/{name}.png")).convert("RGB"))
    x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None]
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def classifier(weights: str) -> torch.nn.Module:
    name = OFFLINE_IMAGE_WEIGHTS[weights].timm_name
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(read_timm_state_dict(weights, name), strict=True)
    return model.eval()


def top1(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x).argmax(1))


def test_mobilenet_v2_features_equal_torchvision_exactly():
    backbone = D2TimmBackbone(name="mobilenetv2_100", weights="offline:mobilenet_v2").eval()
    reference = torchvision.models.mobilenet_v2()
    path = OFFLINE_IMAGE_WEIGHTS["offline:mobilenet_v2"].path()
    reference.load_state_dict(torch.load(path, weights_only=True))
    reference.eval()
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = backbone(x)
        taps, h = {}, x
        for i, layer in enumerate(reference.features):
            h = layer(h)
            taps[i] = h
    # torchvision's last block of each stride: 4 -> features[3], 8 -> [6], 16 -> [13], 32 -> [17].
    for name, index in zip(("res2", "res3", "res4", "res5"), (3, 6, 13, 17)):
        assert torch.equal(ours[name], taps[index]), name
    assert backbone.output_shape()["res4"].channels == 96 and backbone.output_shape()["res4"].stride == 16


def test_efficientnet_lite0_matches_its_reference_and_mobilenet_agrees():
    reference = EfficientNet.from_name("efficientnet-lite0")
    path = OFFLINE_IMAGE_WEIGHTS["offline:efficientnet_lite0"].path()
    reference.load_state_dict(torch.load(path, weights_only=True), strict=True)
    reference.eval()
    lite0, mobilenet = classifier("offline:efficientnet_lite0"), classifier("offline:mobilenet_v2")
    cat, cup = photo("chelsea"), photo("coffee")
    expected = top1(reference, cat), top1(reference, cup)
    assert expected[0] in CAT_CLASSES and expected[1] in CUP_CLASSES
    assert (top1(lite0, cat), top1(lite0, cup)) == expected
    assert (top1(mobilenet, cat), top1(mobilenet, cup)) == expected
    with torch.no_grad():  # the mapped weights compute what the reference does, not just the same argmax
        torch.testing.assert_close(lite0(cat), reference(cat), rtol=1e-4, atol=1e-4)
    backbone = D2TimmBackbone(name="tf_efficientnet_lite0", weights="offline:efficientnet_lite0").eval()
    with torch.no_grad():
        res5 = backbone(cat)["res5"]
        torch.testing.assert_close(res5, lite0.blocks(lite0.bn1(lite0.conv_stem(cat))), rtol=0, atol=0)


def test_weights_that_do_not_match_are_an_error_listing_the_keys(tmp_path):
    state = read_timm_state_dict("offline:mobilenet_v2", "mobilenetv2_100")
    state["blocks.9.9.extra.weight"] = torch.zeros(1)
    state.pop("blocks.1.0.conv_pw.weight")
    state["blocks.2.0.bn1.weight"] = torch.zeros(7)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        D2TimmBackbone(name="mobilenetv2_100", weights=str(path))
    message = str(err.value)
    for key in ("blocks.9.9.extra.weight", "blocks.1.0.conv_pw.weight", "blocks.2.0.bn1.weight", "MODEL.TIMM.NAME"):
        assert key in message
    with pytest.raises(ValueError, match="MODEL.TIMM.NAME tf_efficientnet_lite0"):
        D2TimmBackbone(name="mobilenetv2_100", weights="offline:efficientnet_lite0")
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        D2TimmBackbone(name="mobilenetv2_100", weights=str(tmp_path / "none.pth"))
    with pytest.raises(ValueError, match="offline:mobilenet_v2"):
        D2TimmBackbone(name="mobilenetv2_100", weights="offline:mobilenet_v3")


def test_any_timm_model_carries_the_crobim_head():
    cfg = tiny_cfg("D2TimmBackbone")
    cfg.MODEL.TIMM.NAME = "resnet18"
    torch.manual_seed(0)
    model = build_model(cfg)
    assert [model.backbone.output_shape()[f].stride for f in ("res2", "res3", "res4", "res5")] == [4, 8, 16, 32]
    check_train_step(model)
    model.eval()
    with torch.no_grad():
        assert model(make_inputs(1))[0]["ref_seg"].shape == (50, 70)


def test_frozen_batch_norm_keeps_pretrained_statistics():
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.MODEL.TIMM.WEIGHTS = "offline:mobilenet_v2"
    backbone = D2TimmBackbone(cfg, input_shape=ShapeSpec(channels=3))
    bn = next(m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    backbone.train()
    backbone(torch.randn(2, 3, 64, 64))["res5"].sum().backward()
    assert torch.equal(bn.running_mean, before) and bn.weight.grad is not None
    backbone.freeze_bn = False
    backbone.train()
    backbone(torch.randn(2, 3, 64, 64))
    assert not torch.equal(bn.running_mean, before)


def test_channels_last_gives_the_same_features():
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    outs = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        backbone = D2TimmBackbone(name="mobilenetv2_100", channels_last=channels_last).eval()
        with torch.no_grad():
            outs.append(backbone(x))
    for name in outs[0]:
        assert outs[1][name].is_contiguous()
        torch.testing.assert_close(outs[1][name], outs[0][name], rtol=1e-3, atol=1e-4)  # other summation order

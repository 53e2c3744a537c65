"""Paper-size CroBIM (Swin-B, ConvNeXt-B, BERT-base) built from the shipped configs at 480x480."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from crobim_d2 import add_crobim_config


def paper_cfg(config: str):
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.merge_from_file(f"projects/CroBIM/configs/rrsisd/{config}.yaml")
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.TEXT_ENCODER.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def inputs(train: bool) -> list:
    tokens = torch.zeros(20, dtype=torch.long)
    tokens[:7] = torch.tensor([101, 1996, 2317, 4318, 2006, 1996, 102])  # "the white ship on the"
    mask = (tokens > 0).long()
    record = {"image": torch.randint(0, 256, (3, 480, 480), dtype=torch.uint8), "lang_tokens": tokens}
    record.update(lang_mask=mask, height=512, width=512)
    if train:
        record["gt_mask"] = torch.zeros(480, 480, dtype=torch.uint8)
        record["gt_mask"][100:200, 150:260] = 1
    return [record]


@pytest.mark.slow
@pytest.mark.parametrize("config, backbone_params_m", [("crobim_swin_b", 86.9), ("crobim_convnext_b", 87.6)])
def test_paper_model_forward_backward_480(config, backbone_params_m):
    torch.manual_seed(0)
    model = build_model(paper_cfg(config))
    backbone = sum(p.numel() for p in model.backbone.parameters()) / 1e6
    assert backbone == pytest.approx(backbone_params_m, abs=1.0)  # Swin-B / ConvNeXt-B without their heads
    assert model.text_encoder.hidden_size == 768 and len(model.text_encoder.bert.encoder.layer) == 12
    model.train()
    losses = model(inputs(train=True))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    model.eval()
    with torch.no_grad():
        prob = model(inputs(train=False))[0]["ref_seg"]
    assert prob.shape == (512, 512) and prob.dtype == torch.float32

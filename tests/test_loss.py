"""crobim_loss: lambda * BCE + (1 - lambda) * Dice on the upsampled prediction (Eq. 18)."""

import pytest
import torch
import torch.nn.functional as F

from crobim_d2.modeling.loss import crobim_loss, dice_loss


def test_perfect_prediction_has_near_zero_loss():
    target = torch.zeros(2, 16, 16)
    target[:, 4:10, 3:12] = 1
    logits = (target * 40 - 20)[:, None]
    losses = crobim_loss(logits, target)
    assert set(losses) == {"loss_ce", "loss_dice"}
    assert losses["loss_ce"] < 1e-6 and losses["loss_dice"] < 1e-6


def test_hand_computed_values_and_lambda_weighting():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    p = torch.sigmoid(logits[0, 0])
    ce = -(torch.log(p[0, 0]) + torch.log(1 - p[0, 1]) + torch.log(1 - p[1, 0]) + torch.log(p[1, 1])) / 4
    dice = 1 - (2 * (p[0, 0] + p[1, 1]) + 1) / (p.sum() + 2 + 1)
    for lam in (0.9, 0.5, 0.0):
        losses = crobim_loss(logits, target, lambda_=lam)
        assert torch.allclose(losses["loss_ce"], lam * ce, atol=1e-6)
        assert torch.allclose(losses["loss_dice"], (1 - lam) * dice, atol=1e-6)


def test_prediction_is_upsampled_bilinearly_to_the_target():
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 32, 32) > 0.5).float()
    up = F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
    losses = crobim_loss(logits, target, lambda_=0.9)
    expected_ce = 0.9 * F.binary_cross_entropy_with_logits(up[:, 0], target)
    expected_dice = 0.1 * dice_loss(up[:, 0].sigmoid(), target)
    assert torch.allclose(losses["loss_ce"], expected_ce, atol=1e-6)
    assert torch.allclose(losses["loss_dice"], expected_dice, atol=1e-6)


def test_bf16_logits_give_float32_losses_with_gradient():
    logits = torch.randn(1, 1, 8, 8, requires_grad=True)
    target = (torch.rand(1, 16, 16) > 0.7).to(torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = crobim_loss(logits.bfloat16(), target)
    assert all(v.dtype == torch.float32 for v in losses.values())
    sum(losses.values()).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "logits, target, lam, match",
    [
        (torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4), 0.9, "logits of shape"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(2, 4, 4), 0.9, "targets of shape"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4), 1.5, "LOSS_LAMBDA"),
    ],
)
def test_bad_inputs_are_rejected(logits, target, lam, match):
    with pytest.raises(ValueError, match=match):
        crobim_loss(logits, target, lambda_=lam)

"""Training objective of CroBIM (Sec. IV-D, Eq. 18): lambda * cross-entropy + (1 - lambda) * Dice.

The prediction is a single-channel logit per pixel, so "cross-entropy" is binary cross-entropy on it (the same
as 2-class cross-entropy on logits (0, x)). Both terms are computed in float32 on the prediction bilinearly
upsampled to the ground-truth size: Dice sums over whole images and is too sensitive for bfloat16.
"""

import torch
import torch.nn.functional as F


def dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per image, averaged over the batch; probs, target (N, H, W) float32 in [0, 1]."""
    probs, target = probs.flatten(1), target.flatten(1)
    intersection = (probs * target).sum(1)
    return (1 - (2 * intersection + eps) / (probs.sum(1) + target.sum(1) + eps)).mean()


def crobim_loss(logits: torch.Tensor, target: torch.Tensor, lambda_: float = 0.9) -> dict[str, torch.Tensor]:
    """logits (N, 1, h, w), target (N, H, W) with values 0/1 -> {"loss_ce", "loss_dice"}, already weighted."""
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"crobim_loss expects logits of shape (N, 1, h, w), got {tuple(logits.shape)}.")
    if target.dim() != 3 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"crobim_loss expects targets of shape (N, H, W), N={logits.shape[0]}, got {tuple(target.shape)}."
        )
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError(f"MODEL.CROBIM.LOSS_LAMBDA must lie in [0, 1], got {lambda_}.")
    with torch.autocast(logits.device.type, enabled=False):
        logits = logits.float()
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(
                logits, size=target.shape[-2:], mode="bilinear", align_corners=False
            )  # Y_up
        logits = logits[:, 0]
        target = target.float()
        loss_ce = F.binary_cross_entropy_with_logits(logits, target)
        loss_dice = dice_loss(logits.sigmoid(), target)
    return {"loss_ce": lambda_ * loss_ce, "loss_dice": (1 - lambda_) * loss_dice}  # Eq. 18

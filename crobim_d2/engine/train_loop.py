"""The per-iteration trainer: Detectron2's AMPTrainer on GPU, a bfloat16 autocast trainer on CPU."""
import logging

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer, TrainerBase
from torch import nn

logger = logging.getLogger(__name__)


class CPUAutocastTrainer(SimpleTrainer):
    """SimpleTrainer whose steps run under ``torch.autocast("cpu", torch.bfloat16)`` (no loss scaling needed:
    bfloat16 has float32's exponent range). Weights, gradients and optimizer state stay float32."""

    def run_step(self) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            super().run_step()


def build_step_trainer(
    cfg, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer
) -> TrainerBase:
    """``SOLVER.AMP.ENABLED``: float16 AMP (AMPTrainer) when the model is on CUDA, bfloat16 autocast on CPU."""
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer(model, data_loader, optimizer)
    if next(model.parameters()).device.type == "cuda":
        return AMPTrainer(model, data_loader, optimizer)
    logger.info("SOLVER.AMP.ENABLED on CPU: training under bfloat16 autocast.")
    return CPUAutocastTrainer(model, data_loader, optimizer)

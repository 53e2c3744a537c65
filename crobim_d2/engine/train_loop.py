"""The per-iteration trainer under ``SOLVER.AMP``: the precision comes from ``crobim_d2.precision``."""
import logging

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer, TrainerBase
from torch import nn

from ..precision import autocast_dtype

logger = logging.getLogger(__name__)


class AutocastTrainer(SimpleTrainer):
    """SimpleTrainer whose steps run under ``torch.autocast(device_type, dtype)`` without loss scaling (for
    bfloat16, which has float32's exponent range). Weights, gradients and optimizer state stay float32."""

    def __init__(self, model: nn.Module, data_loader, optimizer, device_type: str, dtype: torch.dtype):
        super().__init__(model, data_loader, optimizer)
        self.device_type = device_type
        self.dtype = dtype

    def run_step(self) -> None:
        with torch.autocast(self.device_type, dtype=self.dtype):
            super().run_step()


def build_step_trainer(
    cfg, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer
) -> TrainerBase:
    """``SOLVER.AMP.ENABLED`` with ``SOLVER.AMP.DTYPE`` ("auto": float16 AMP with loss scaling on CUDA,
    bfloat16 autocast on a CPU that runs it natively, float32 on other CPUs)."""
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer(model, data_loader, optimizer)
    device = next(model.parameters()).device.type
    dtype = autocast_dtype(device, cfg.SOLVER.AMP.DTYPE, purpose="training", key="SOLVER.AMP.DTYPE")
    if dtype is None:
        logger.info("SOLVER.AMP.ENABLED: training in float32 on this device (see the precision line above).")
        return SimpleTrainer(model, data_loader, optimizer)
    if device == "cuda" and dtype == torch.float16:
        return AMPTrainer(model, data_loader, optimizer)
    logger.info(f"SOLVER.AMP.ENABLED: training under {dtype} autocast on {device}.")
    return AutocastTrainer(model, data_loader, optimizer, device, dtype)

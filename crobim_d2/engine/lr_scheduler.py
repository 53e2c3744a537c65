"""Polynomial learning-rate decay per iteration (the paper's schedule), with an optional warmup."""
import torch
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from fvcore.common.param_scheduler import ParamScheduler


class PolyParamScheduler(ParamScheduler):
    """``end + (start - end) * (1 - where) ** power`` for ``where`` in [0, 1] (fraction of training done)."""

    def __init__(self, start_value: float, end_value: float, power: float):
        self.start_value = start_value
        self.end_value = end_value
        self.power = power

    def __call__(self, where: float) -> float:
        return self.end_value + (self.start_value - self.end_value) * (1.0 - where) ** self.power


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """``SOLVER.LR_SCHEDULER_NAME`` "WarmupPolyLR": every group's lr decays from its initial value with power
    ``SOLVER.POLY_LR_POWER`` to ``SOLVER.POLY_LR_END`` (scaled by the group's multiplier), per iteration, after
    ``SOLVER.WARMUP_ITERS`` warmup iterations from ``SOLVER.WARMUP_FACTOR`` x. Other names go to Detectron2."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return d2_build_lr_scheduler(cfg, optimizer)
    max_iter = cfg.SOLVER.MAX_ITER
    if cfg.SOLVER.BASE_LR <= 0:
        raise ValueError(f"SOLVER.BASE_LR={cfg.SOLVER.BASE_LR} must be positive for WarmupPolyLR.")
    if not 0 <= cfg.SOLVER.WARMUP_ITERS <= max_iter:
        raise ValueError(
            f"SOLVER.WARMUP_ITERS={cfg.SOLVER.WARMUP_ITERS} must lie in [0, SOLVER.MAX_ITER={max_iter}]."
        )
    sched = PolyParamScheduler(1.0, cfg.SOLVER.POLY_LR_END / cfg.SOLVER.BASE_LR, cfg.SOLVER.POLY_LR_POWER)
    if cfg.SOLVER.WARMUP_ITERS > 0:
        sched = WarmupParamScheduler(
            sched, cfg.SOLVER.WARMUP_FACTOR, cfg.SOLVER.WARMUP_ITERS / max_iter, cfg.SOLVER.WARMUP_METHOD
        )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=max_iter)

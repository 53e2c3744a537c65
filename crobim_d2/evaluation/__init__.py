"""RRSIS metrics (oIoU, mIoU, Pr@X)."""
from .rrsis_evaluation import RRSISEvaluator, rrsis_metrics

__all__ = ["RRSISEvaluator", "rrsis_metrics"]

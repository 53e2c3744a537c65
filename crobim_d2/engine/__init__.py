"""Training helpers shared by ``projects/CroBIM/train_net.py`` and the tests: the optimizer, the
polynomial learning-rate schedule, and a ``launch`` / DDP wrapping that also work on CPU-only machines (gloo)."""
from .launch import create_ddp_model, launch
from .lr_scheduler import PolyParamScheduler, build_lr_scheduler
from .optimizer import build_optimizer, get_param_groups

__all__ = [
    "PolyParamScheduler",
    "build_lr_scheduler",
    "build_optimizer",
    "create_ddp_model",
    "get_param_groups",
    "launch",
]

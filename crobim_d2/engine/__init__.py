"""Training helpers shared by ``projects/CroBIM/train_net.py`` and the tests: the optimizer, the
polynomial learning-rate schedule, and a ``launch`` / DDP wrapping that also work on CPU-only machines (gloo)."""
from .allocator import apply_cpu_malloc_reuse, reuse_freed_memory
from .checks import check_config
from .defaults import default_setup
from .launch import create_ddp_model, launch
from .lr_scheduler import PolyParamScheduler, build_lr_scheduler
from .optimizer import build_optimizer, get_param_groups
from .train_loop import AutocastTrainer, build_step_trainer

__all__ = [
    "AutocastTrainer",
    "PolyParamScheduler",
    "apply_cpu_malloc_reuse",
    "build_lr_scheduler",
    "build_optimizer",
    "build_step_trainer",
    "check_config",
    "create_ddp_model",
    "default_setup",
    "get_param_groups",
    "launch",
    "reuse_freed_memory",
]

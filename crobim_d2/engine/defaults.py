"""Process set-up for training scripts (Detectron2's ``default_setup`` without its environment report, which
needs detectron2's compiled ``_C`` extension; CroBIM uses none of detectron2's C++ ops)."""
import argparse
import os

import detectron2
import torch
from detectron2.config import CfgNode
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from .allocator import apply_cpu_malloc_reuse


def default_setup(cfg: CfgNode, args: argparse.Namespace) -> None:
    """Create ``cfg.OUTPUT_DIR``, set up the loggers, save the full config, seed each rank, and on the CPU
    apply ``CPU_MALLOC_REUSE``."""
    output_dir = cfg.OUTPUT_DIR
    rank = comm.get_rank()
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    setup_logger(output_dir, distributed_rank=rank, name="crobim_d2")
    logger = setup_logger(output_dir, distributed_rank=rank)
    logger.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    logger.info(f"torch {torch.__version__}, detectron2 {detectron2.__version__}, CUDA {torch.cuda.is_available()}")
    logger.info(f"Command line arguments: {args}")
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        with open(path, "w") as f:
            f.write(cfg.dump())
        logger.info(f"Full config saved to {path}")
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
    apply_cpu_malloc_reuse(cfg)

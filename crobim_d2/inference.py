"""Loading a config for inference: the one path of ``RRSISPredictor``, ``crobim-predict``, ``demo.py``, the
benchmarks and the weight converters (``train_net.py`` has its own: it also checks datasets and processes)."""

import os
from collections.abc import Sequence

import torch
from detectron2.config import CfgNode, get_cfg

from .config import add_crobim_config

__all__ = ["ConfigError", "check_inference_config", "load_inference_config"]


class ConfigError(ValueError):
    """A config, override or checkpoint that inference cannot use; the message names the fix."""


def check_inference_config(cfg: CfgNode) -> None:
    """Raise :class:`ConfigError` for a ``MODEL.WEIGHTS`` file that does not exist or a ``MODEL.DEVICE`` this
    machine does not have."""
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise ConfigError(
            f"MODEL.WEIGHTS={weights!r} does not exist; give a checkpoint written by train_net.py "
            "(e.g. output/.../model_final.pth)."
        )
    device = str(cfg.MODEL.DEVICE)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"MODEL.DEVICE={device!r} but this machine has no usable CUDA device; use --device cpu "
            "(or MODEL.DEVICE cpu)."
        )


def load_inference_config(
    config_file: str,
    opts: Sequence[str] = (),
    *,
    weights: str | None = None,
    device: str | None = None,
) -> CfgNode:
    """``get_cfg`` + ``add_crobim_config`` + ``config_file`` + ``opts`` (KEY VALUE ...), checked and frozen.

    ``weights`` replaces ``MODEL.WEIGHTS`` ("" builds the model with random weights). ``device`` replaces
    ``MODEL.DEVICE``; without it and without a ``MODEL.DEVICE`` override in ``opts``, CUDA is used when
    available, else the CPU (a config written on a GPU machine runs on a CPU one).
    """
    if not os.path.isfile(config_file):
        raise ConfigError(
            f"Config file not found: {config_file}; give a CroBIM YAML config, e.g. "
            "projects/CroBIM/configs/synrrsis/crobim_tiny.yaml"
        )
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"Config overrides need KEY VALUE pairs, got {opts}")
    cfg = get_cfg()
    add_crobim_config(cfg)
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        raise ConfigError(
            f"Cannot use config {config_file} with overrides {opts} ({e}); give a CroBIM config "
            "(projects/CroBIM/configs/) and keys it has"
        ) from None
    if weights is not None:
        cfg.MODEL.WEIGHTS = weights
    if device is not None:
        cfg.MODEL.DEVICE = device
    elif "MODEL.DEVICE" not in opts[::2]:
        cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    check_inference_config(cfg)
    cfg.freeze()
    return cfg

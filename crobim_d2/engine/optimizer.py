"""AdamW with per-module learning-rate multipliers and no weight decay on norms, biases and position terms."""
from typing import Any

import torch
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups
from torch import nn

# Parameters whose names contain one of these are position embeddings or tables (Swin, BERT): no weight decay.
NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "pos_embed", "position_embeddings")
NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)


def _lr_multiplier(name: str, backbone_multiplier: float, text_encoder_multiplier: float) -> float:
    if name.startswith("backbone."):
        return backbone_multiplier
    if name.startswith("text_encoder."):
        return text_encoder_multiplier
    return 1.0


def get_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    backbone_multiplier: float = 1.0,
    text_encoder_multiplier: float = 1.0,
) -> list[dict[str, Any]]:
    """Parameter groups with their lr and weight decay (groups with equal settings are merged).

    ``backbone.*`` parameters get ``base_lr * backbone_multiplier``, ``text_encoder.*`` parameters
    ``base_lr * text_encoder_multiplier``; norms (any ``nn.LayerNorm``/``BatchNorm``/``GroupNorm`` subclass,
    also BERT's and timm's), biases and position embeddings get no weight decay.
    """
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            name = f"{module_name}.{param_name}" if module_name else param_name
            no_decay = (
                isinstance(module, NORM_TYPES)
                or param_name == "bias"
                or any(k in name for k in NO_DECAY_NAMES)
            )
            multiplier = _lr_multiplier(name, backbone_multiplier, text_encoder_multiplier)
            groups.append(
                {
                    "params": [param],
                    "lr": base_lr * multiplier,
                    "weight_decay": 0.0 if no_decay else weight_decay,
                }
            )
    return reduce_param_groups(groups)


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` "ADAMW" (the paper) or "SGD", with ``SOLVER.CLIP_GRADIENTS`` applied."""
    groups = get_param_groups(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        backbone_multiplier=cfg.SOLVER.BACKBONE_MULTIPLIER,
        text_encoder_multiplier=cfg.SOLVER.TEXT_ENCODER_MULTIPLIER,
    )
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_type = torch.optim.AdamW
        kwargs = {"lr": cfg.SOLVER.BASE_LR, "betas": (0.9, 0.999), "eps": 1e-8}
    elif name == "SGD":
        optimizer_type = torch.optim.SGD
        kwargs = {"lr": cfg.SOLVER.BASE_LR, "momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r} is not supported; use 'ADAMW' or 'SGD'.")
    return maybe_add_gradient_clipping(cfg, optimizer_type)(groups, **kwargs)

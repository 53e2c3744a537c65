"""Context-aware prompt modulation, CAPM (Sec. IV-A, Eq. 1-2, Fig. 6, Table V)."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

POOL_TYPES = ("adaptive_avg", "avg", "max")


def stage_indices(names: Sequence[str], in_features: Sequence[str], key: str) -> list[int]:
    """Positions in MODEL.CROBIM.IN_FEATURES of the feature names (e.g. "res2") of config key ``key``."""
    unknown = [n for n in names if n not in in_features]
    if unknown:
        raise ValueError(
            f"{key} names {unknown}, which are not in MODEL.CROBIM.IN_FEATURES={list(in_features)}."
        )
    return sorted(in_features.index(n) for n in names)


def pool_context(x: torch.Tensor, size: int, pool_type: str) -> torch.Tensor:
    """Pool_{s x s} of Eq. 1 for (N, C, H, W) -> (N, C, s, s)."""
    if pool_type == "adaptive_avg":
        return F.adaptive_avg_pool2d(x, size)
    if pool_type == "max":
        return F.adaptive_max_pool2d(x, size)
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(
            f"A {h}x{w} feature map cannot be average-pooled to {size}x{size}; lower CAPM_POOL_SIZE."
        )
    kernel = (h // size, w // size)
    return F.avg_pool2d(x, kernel, stride=kernel)[..., :size, :size]


class ContextAwarePromptModulation(nn.Module):
    """Learnable prompts P (N_p x D_l) that read pooled multi-scale visual context V_e by cross-attention.

    Eq. 1 is ambiguous: "Concat" is called a channel concatenation, but V_e in R^{4 s^2 x C_total} has 4 s^2
    tokens, and maps with different C_i cannot be stacked as tokens of one width. Reading chosen: every scale
    is pooled to s x s, each pooled location becomes one token, and each scale has its own linear projection
    C_i -> D_l (so V_e has |scales| * s^2 tokens of width D_l), plus a learned embedding per token that tells
    the attention which scale and which pooled cell it comes from. The alternative reading (concatenate the
    C_i channels per pooled cell, s^2 tokens of C_total) degenerates at the paper's s = 1: a single key makes
    the softmax constant, so every prompt would receive the same vector and P would have no effect.

    Pool types (Table V(b)): "adaptive_avg" (paper) = adaptive average pooling to s x s; "max" = adaptive max
    pooling; "avg" = plain average pooling with fixed, non-overlapping kernel = stride = floor(H_i / s), which
    drops the bottom/right remainder rows and columns that adaptive pooling covers with overlapping windows
    (identical to "adaptive_avg" when H_i, W_i are multiples of s). Eq. 2 uses multi-head attention with an
    output projection and no residual: P_v = CrossAttn(V_e, P).
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: list[int],
        text_dim: int,
        num_prompts: int = 4,
        pool_size: int = 1,
        pool_type: str = "adaptive_avg",
        scales: Sequence[int] = (0, 1, 2, 3),
        num_heads: int = 8,
    ):
        super().__init__()
        if pool_type not in POOL_TYPES:
            raise ValueError(
                f"MODEL.CROBIM.CAPM_POOL_TYPE={pool_type!r} is unknown; use one of {POOL_TYPES}."
            )
        if not scales or any(not 0 <= i < len(in_channels) for i in scales):
            raise ValueError(
                f"CAPM scales {list(scales)} must be a non-empty subset of the {len(in_channels)} levels."
            )
        if pool_size < 1 or num_prompts < 1:
            raise ValueError(
                f"CAPM needs pool_size >= 1 and num_prompts >= 1, got {pool_size}, {num_prompts}."
            )
        if text_dim % num_heads != 0:
            raise ValueError(f"CAPM: text dim {text_dim} must be divisible by CAPM_NUM_HEADS={num_heads}.")
        self.scales = sorted(scales)
        self.pool_size = pool_size
        self.pool_type = pool_type
        self.prompts = nn.Parameter(torch.empty(num_prompts, text_dim))  # P
        nn.init.trunc_normal_(self.prompts, std=0.02)
        self.context_proj = nn.ModuleList(nn.Linear(in_channels[i], text_dim) for i in self.scales)
        self.context_embed = nn.Parameter(torch.zeros(len(self.scales) * pool_size**2, text_dim))
        nn.init.trunc_normal_(self.context_embed, std=0.02)
        self.cross_attn = nn.MultiheadAttention(text_dim, num_heads, batch_first=True)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec], text_dim: int) -> dict:
        c = cfg.MODEL.CROBIM
        return {
            "in_channels": [input_shape[f].channels for f in c.IN_FEATURES],
            "text_dim": text_dim,
            "num_prompts": c.NUM_PROMPTS,
            "pool_size": c.CAPM_POOL_SIZE,
            "pool_type": c.CAPM_POOL_TYPE,
            "scales": stage_indices(c.CAPM_SCALES, c.IN_FEATURES, "MODEL.CROBIM.CAPM_SCALES"),
            "num_heads": c.CAPM_NUM_HEADS,
        }

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features: V_1..V_4, each (N, C_i, H_i, W_i) -> context-aware prompts P_v (N, N_p, D_l)."""
        tokens = [
            proj(pool_context(features[i], self.pool_size, self.pool_type).flatten(2).transpose(1, 2))
            for i, proj in zip(self.scales, self.context_proj)
        ]
        context = torch.cat(tokens, dim=1) + self.context_embed  # V_e, Eq. 1
        prompts = self.prompts.expand(context.shape[0], -1, -1)
        return self.cross_attn(prompts, context, context, need_weights=False)[0]  # P_v, Eq. 2

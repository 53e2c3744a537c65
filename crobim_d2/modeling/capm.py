"""Context-aware prompt modulation, CAPM (Sec. IV-A, Eq. 1-2, Fig. 6, Table V)."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .layers import Attention, sine_position_encoding, stage_indices

POOL_TYPES = ("adaptive_avg", "avg", "max")


def pool_context(x: torch.Tensor, size: int, pool_type: str, coarsest: tuple[int, int]) -> torch.Tensor:
    """Pool_{s x s} of Eq. 1 for (N, C, H, W): "adaptive_avg" -> (N, C, s, s); "avg" / "max" -> fixed
    kernel = stride = the coarsest map's side // s, so finer maps give more cells."""
    if pool_type == "adaptive_avg":
        return F.adaptive_avg_pool2d(x, size)
    kernel = (coarsest[0] // size, coarsest[1] // size)
    if min(kernel) < 1:
        raise ValueError(
            f"The coarsest feature map is {coarsest[0]}x{coarsest[1]}: it cannot be pooled to {size}x{size}; "
            "lower MODEL.CROBIM.CAPM_POOL_SIZE."
        )
    pool = F.avg_pool2d if pool_type == "avg" else F.max_pool2d
    return pool(x, kernel, stride=kernel)


class ContextAwarePromptModulation(nn.Module):
    """Learnable prompts P (N_p x D_l) that read pooled multi-scale visual context V_e by cross-attention.

    Eq. 1 reading: each pooled location of each scale becomes one token, projected by its scale's own linear
    layer C_i -> D_l (maps of different C_i cannot be stacked as tokens of one width); concatenating the C_i
    channels per cell instead would leave one key at the paper's s = 1 and make the prompts input-independent
    (projects/CroBIM/README.md). Eq. 2 is multi-head attention with an output projection, no residual.

    Pool types (Table V(b)): "adaptive_avg" (paper) pools every scale to s x s, |scales| * s^2 tokens with a
    learned embedding each. "avg" / "max" are fixed-kernel average / max pooling (kernel = stride = H_4 // s,
    H_4 the coarsest input map, remainders dropped): V_4 gives s x s cells and a finer V_i about
    (s H_i / H_4)^2 (at strides 4-32 and s = 1: 64 + 16 + 4 + 1 tokens), so the three rows differ also at
    s = 1. Their token count follows the input size, so each token gets its scale's learned embedding plus
    the sine encoding of its cell's position.
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
        tokens = len(self.scales) * pool_size**2 if pool_type == "adaptive_avg" else len(self.scales)
        self.context_embed = nn.Parameter(torch.zeros(tokens, text_dim))  # per token, or per scale
        nn.init.trunc_normal_(self.context_embed, std=0.02)
        self.cross_attn = Attention(text_dim, num_heads)

    @classmethod
    def from_config(cls, cfg, in_channels: list[int], text_dim: int) -> dict:
        c = cfg.MODEL.CROBIM
        return {
            "in_channels": in_channels,
            "text_dim": text_dim,
            "num_prompts": c.NUM_PROMPTS,
            "pool_size": c.CAPM_POOL_SIZE,
            "pool_type": c.CAPM_POOL_TYPE,
            "scales": stage_indices(c.CAPM_SCALES, c.IN_FEATURES, "MODEL.CROBIM.CAPM_SCALES"),
            "num_heads": c.CAPM_NUM_HEADS,
        }

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features: V_1..V_4, each (N, C_i, H_i, W_i) -> context-aware prompts P_v (N, N_p, D_l)."""
        coarsest = tuple(features[-1].shape[-2:])
        tokens = []
        for j, (i, proj) in enumerate(zip(self.scales, self.context_proj)):
            pooled = pool_context(features[i], self.pool_size, self.pool_type, coarsest)
            x = proj(pooled.flatten(2).transpose(1, 2))
            if self.pool_type != "adaptive_avg":
                h, w = pooled.shape[-2:]
                embed = sine_position_encoding(h, w, x.shape[-1], x.device) + self.context_embed[j]
                x = x + embed.to(x.dtype)
            tokens.append(x)
        context = torch.cat(tokens, dim=1)  # V_e, Eq. 1
        if self.pool_type == "adaptive_avg":
            context = context + self.context_embed
        prompts = self.prompts.expand(context.shape[0], -1, -1)
        return self.cross_attn(prompts, context, context)  # P_v, Eq. 2

"""``MSDeformAttn``: Deformable DETR's multi-scale deformable attention module (parameters and init)."""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functions import ms_deform_attn
from .reference import ms_deform_attn_pytorch

IMPLEMENTATIONS = {"auto": ms_deform_attn, "pytorch": ms_deform_attn_pytorch}


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Zhu et al., Deformable DETR).

    Args:
        d_model: channels of queries and values.
        n_levels: feature levels sampled.
        n_heads: attention heads; ``d_model`` must be divisible by it.
        n_points: sampling points per head and level.
        impl: "auto" (compiled kernel for the tensors' device, the reference when the extension is not
            built) or "pytorch" (always the ``grid_sample`` reference).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4, impl: str = "auto"):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}); change one of them")
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {sorted(IMPLEMENTATIONS)}, got {impl!r}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.impl = impl
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Offsets start on a radial pattern: head h points along angle 2*pi*h/M, point i at distance i+1.
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def sampling_projections(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """``sampling_offsets(query), attention_weights(query)`` as one product with both layers' rows: they
        read the same queries."""
        return F.linear(
            query,
            torch.cat([self.sampling_offsets.weight, self.attention_weights.weight]),
            torch.cat([self.sampling_offsets.bias, self.attention_weights.bias]),
        ).split([self.sampling_offsets.out_features, self.attention_weights.out_features], -1)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        input_spatial_shapes: Tensor,
        input_level_start_index: Tensor,
        input_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            query: (N, Lq, C).
            reference_points: (N, Lq, L, 2) normalized (x, y) in [0, 1], or (N, Lq, L, 4) boxes (cx, cy, w, h).
            input_flatten: (N, S, C), all levels flattened level after level.
            input_spatial_shapes: (L, 2) long, (H_l, W_l).
            input_level_start_index: (L,) long.
            input_padding_mask: (N, S) bool, True at padded positions (their values are zeroed).
        Returns:
            (N, Lq, C)
        """
        n, lq, _ = query.shape
        s = input_flatten.shape[1]
        if input_spatial_shapes.shape[0] != self.n_levels:
            raise ValueError(
                f"MSDeformAttn was built with n_levels={self.n_levels} but got {input_spatial_shapes.shape[0]} "
                "levels; pass as many levels as n_levels"
            )
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, self.n_heads, self.d_model // self.n_heads)
        offsets, weights = self.sampling_projections(query)
        offsets = offsets.reshape(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = weights.reshape(n, lq, self.n_heads, self.n_levels * self.n_points)
        # float32 weights also under autocast (the kernels take them in float32): the softmax computes in float32
        # from the autocast-dtype logits, instead of rounding the weights to bfloat16 and widening them again.
        weights = F.softmax(weights, -1, dtype=torch.promote_types(weights.dtype, torch.float32))
        weights = weights.view(n, lq, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:
            # reference + offset / (W_l, H_l), with the (level, point, xy) axes flattened into rows of
            # L * P * 2: the broadcasts then run over contiguous rows, not over a last axis of 2.
            # float32 locations also under autocast.
            levels, points = self.n_levels, self.n_points
            dtype = torch.promote_types(torch.promote_types(offsets.dtype, reference_points.dtype), torch.float32)
            inverse = 1.0 / input_spatial_shapes.flip(-1).to(dtype)  # (L, 2): 1 / (W_l, H_l)
            scale = inverse[:, None, :].expand(levels, points, 2).reshape(-1)
            ref = reference_points[:, :, :, None, :].expand(n, lq, levels, points, 2).reshape(n, lq, 1, -1)
            locations = torch.addcmul(ref.to(dtype), offsets.flatten(3), scale)
            locations = locations.view(n, lq, self.n_heads, levels, points, 2)
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                f"reference_points must end in 2 (x, y) or 4 (cx, cy, w, h), got shape {tuple(reference_points.shape)}"
            )
        output = IMPLEMENTATIONS[self.impl](value, input_spatial_shapes, input_level_start_index, locations, weights)
        return self.output_proj(output)

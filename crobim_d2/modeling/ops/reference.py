"""Pure-PyTorch multi-scale deformable attention (Deformable DETR's ``ms_deform_attn_core_pytorch``).

It is the semantic reference for the compiled kernels: bilinear sampling with ``grid_sample``
(``align_corners=False``, zero padding), so a location ``(x, y)`` in [0, 1] maps to the pixel coordinate
``(x * W - 0.5, y * H - 0.5)`` and locations outside the image read zeros.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def check_inputs(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> list[tuple[int, int]]:
    """Validate the Deformable DETR layouts and return the level sizes ``[(H_l, W_l), ...]``."""
    if value.dim() != 4:
        raise ValueError(f"value must be (N, S, M, D), got shape {tuple(value.shape)}")
    n, s, m, _ = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f"spatial_shapes must be (L, 2) with rows (H, W), got {tuple(spatial_shapes.shape)}")
    num_levels = spatial_shapes.shape[0]
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            f"sampling_locations must be (N, Lq, M, L, P, 2), got {tuple(sampling_locations.shape)}"
        )
    nq, lq, mq, lv, p, _ = sampling_locations.shape
    if (nq, mq, lv) != (n, m, num_levels):
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} does not match value {tuple(value.shape)} "
            f"and {num_levels} levels: expected (N={n}, Lq, M={m}, L={num_levels}, P, 2)"
        )
    if tuple(attention_weights.shape) != (n, lq, m, num_levels, p):
        raise ValueError(
            f"attention_weights must be (N, Lq, M, L, P) = {(n, lq, m, num_levels, p)}, "
            f"got {tuple(attention_weights.shape)}"
        )
    if spatial_shapes.is_floating_point() or level_start_index.is_floating_point():
        raise TypeError("spatial_shapes and level_start_index must be integer (long) tensors")
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(f"value has S={s} positions but spatial_shapes {shapes} sum to {sum(h * w for h, w in shapes)}")
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    if level_start_index.tolist() != starts:
        raise ValueError(f"level_start_index must be {starts} for spatial_shapes {shapes}, got {level_start_index.tolist()}")
    return shapes


def ms_deform_attn_pytorch(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention with ``grid_sample``; returns ``(N, Lq, M * D)`` in ``value``'s dtype.

    Mixed input dtypes (e.g. bfloat16 values with float32 locations under autocast) are computed in their
    promoted dtype.
    """
    shapes = check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    out_dtype = value.dtype
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    value, sampling_locations, attention_weights = (t.to(dtype) for t in (value, sampling_locations, attention_weights))
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampled = []
    for lid, (h, w) in enumerate(shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        value_l = value_list[lid].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        grid_l = sampling_grids[:, :, :, lid].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (N, Lq, M, L, P) -> (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * p)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(n, m * d, lq)
    return output.transpose(1, 2).contiguous().to(out_dtype)

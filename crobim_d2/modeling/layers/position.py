"""Cell centres of a grid and the sine position encodings built on them (MID's V_ms, ADC's region cells)."""

import functools
import math

import torch
import torch.nn.functional as F


def cell_centres_1d(n: int, device: torch.device) -> torch.Tensor:
    """Centres (i + 0.5) / n of n equal cells of [0, 1], float32."""
    return (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n


def cell_centres(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Normalized (x, y) centres of the cells of an h x w grid in row-major order, (h*w, 2) float32."""
    ys, xs = cell_centres_1d(h, device), cell_centres_1d(w, device)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)


@functools.lru_cache(maxsize=32)
def sine_position_encoding(h: int, w: int, dim: int, device: torch.device) -> torch.Tensor:
    """DETR's normalized 2D sine encoding, (h*w, dim): dim/2 channels for y, then dim/2 for x (cached)."""
    ys = cell_centres_1d(h, device) * 2 * math.pi
    xs = cell_centres_1d(w, device) * 2 * math.pi
    half = dim // 2
    freqs = 10000 ** (2 * (torch.arange(half, device=device) // 2) / half)
    py = ys[:, None] / freqs
    px = xs[:, None] / freqs
    py = torch.stack([py[:, 0::2].sin(), py[:, 1::2].cos()], dim=2).flatten(1)
    px = torch.stack([px[:, 0::2].sin(), px[:, 1::2].cos()], dim=2).flatten(1)
    return torch.cat([py[:, None, :].expand(h, w, half), px[None, :, :].expand(h, w, half)], dim=2).flatten(
        0, 1
    )


def cell_position_encoding(rh: int, rw: int, dim: int, ref: torch.Tensor) -> torch.Tensor:
    """Sine encoding (rh*rw, dim) of token centres inside a region cell, in the cell's [0, 1]^2 frame:
    octave frequencies pi * 2^j for y then x, sines then cosines, zero-padded to ``dim``; ``ref``'s dtype."""
    yx = cell_centres(rh, rw, ref.device).flip(-1)  # (rh*rw, 2) as (y, x)
    freqs = 2 ** torch.arange(dim // 4, device=ref.device, dtype=torch.float32) * torch.pi
    angles = (yx[:, :, None] * freqs).flatten(1)  # (rh*rw, dim/2)
    enc = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(enc, (0, dim - enc.shape[1])).to(ref.dtype)

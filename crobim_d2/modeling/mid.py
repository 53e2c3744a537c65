"""Mutual-interaction decoder, MID (Sec. IV-C, Eq. 14-17, Fig. 8, Table VII)."""

import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from . import ops
from .sdpa import scaled_dot_product_attention

ATTENTION_SCHEMES = ("cascaded", "unidirectional", "parallel")


class Attention(nn.Module):
    """Multi-head attention on F.scaled_dot_product_attention with a key padding mask.

    ``fp32`` runs the attention itself in float32 (the projections keep the autocast dtype): used where the
    softmax spans the ~19k visual tokens.

    ``few_queries`` gives the same result for a few queries over many keys (the l_m + N_p words reading the
    ~19k visual tokens, Eq. 15) without projecting the keys and values. Per head m, with x_j the key and
    value inputs: q_m . (W_k,m x_j + b_k,m) = (W_k,m^T q_m) . x_j + q_m . b_k,m, and the last term is the
    same for every key, so it cancels in the softmax (the key projection has no bias here: it never had an
    effect); and sum_j a_j (W_v,m x_j + b_v,m) = W_v,m (sum_j a_j x_j) + b_v,m because the weights sum to 1.
    All heads then attend over the same raw inputs, so they run as one attention of M * Q queries of width
    D. For Q = 24 and S = 19125 this replaces two D x D projections of S tokens (~5 GFLOP at D = 256) with
    ~4 GFLOP of attention and never writes the projected keys and values.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, fp32: bool = False, few_queries: bool = False):
        super().__init__()
        self.num_heads, self.dropout, self.fp32, self.few_queries = num_heads, dropout, fp32, few_queries
        self.q, self.v, self.out = (nn.Linear(dim, dim) for _ in range(3))
        self.k = nn.Linear(dim, dim, bias=not few_queries)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query (N, Q, D), key/value (N, S, D), key_mask (N, S) bool, True = attend -> (N, Q, D)."""
        mask = None if key_mask is None else key_mask[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        precision = (
            torch.autocast(query.device.type, enabled=False) if self.fp32 else contextlib.nullcontext()
        )
        n, m, d = query.shape[0], self.num_heads, query.shape[-1]
        q = self.q(query).view(n, -1, m, d // m).transpose(1, 2)  # (N, M, Q, d_h)
        if self.few_queries:
            w_k = self.k.weight.view(m, d // m, d)
            w_v = self.v.weight.view(m, d // m, d)
            with precision:
                if self.fp32:
                    q, key, value, w_k, w_v = (x.float() for x in (q, key, value, w_k, w_v))
                q_abs = torch.einsum("nmqe,med->nmqd", q, w_k.to(q.dtype))  # W_k,m^T q_m
                mixed = F.scaled_dot_product_attention(
                    q_abs.flatten(1, 2)[:, None],
                    key[:, None].to(q_abs.dtype),
                    value[:, None].to(q_abs.dtype),
                    attn_mask=mask,
                    dropout_p=dropout,
                    scale=(d // m) ** -0.5,
                ).view(n, m, -1, d)  # sum_j a_j x_j per head
                out = torch.einsum("nmqd,med->nmqe", mixed, w_v.to(mixed.dtype))
                out = out + self.v.bias.view(m, 1, d // m).to(out.dtype)
        else:
            k, v = (x.view(n, x.shape[1], m, -1).transpose(1, 2) for x in (self.k(key), self.v(value)))
            with precision:
                if self.fp32:
                    q, k, v = q.float(), k.float(), v.float()
                out = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out(out.transpose(1, 2).flatten(2).to(query.dtype))


class FFN(nn.Sequential):
    def __init__(self, dim: int, ffn_dim: int, dropout: float):
        super().__init__(
            nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )


class MutualInteractionLayer(nn.Module):
    """One decoder layer: language <- vision (Eq. 15), then vision <- language (Eq. 16).

    Every sub-layer is post-norm: x = LN(x + Dropout(sublayer(x))). ``attention`` selects the scheme of
    Table VII: "cascaded" (CBAM, paper) updates the language from the vision first and lets the vision read
    the updated language; "parallel" (WPA-style) lets both directions read the layer's inputs;
    "unidirectional" (PWAM-style) only updates the vision, and the language sub-layers are not built.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_levels: int,
        num_points: int,
        ffn_dim: int,
        dropout: float,
        attention: str,
        msda_impl: str,
    ):
        super().__init__()
        self.attention = attention
        if attention != "unidirectional":
            self.lang_cross = Attention(dim, num_heads, dropout, fp32=True, few_queries=True)
            self.lang_self = Attention(dim, num_heads, dropout)
            self.lang_ffn = FFN(dim, ffn_dim, dropout)
            self.lang_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.vis_cross = Attention(dim, num_heads, dropout)
        self.msda = ops.MSDeformAttn(dim, num_levels, num_heads, num_points, impl=msda_impl)
        self.vis_ffn = FFN(dim, ffn_dim, dropout)
        self.vis_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def update_language(
        self, lang: torch.Tensor, lang_mask: torch.Tensor, vis: torch.Tensor, vis_pos: torch.Tensor
    ) -> torch.Tensor:
        """L^_v = FFN(SelfAttn(CrossAttn(L_v, V_ms))), Eq. 15; vis_pos = V_ms + position encoding."""
        norms = self.lang_norms
        lang = norms[0](lang + self.drop(self.lang_cross(lang, vis_pos, vis)))
        lang = norms[1](lang + self.drop(self.lang_self(lang, lang, lang, lang_mask)))
        return norms[2](lang + self.drop(self.lang_ffn(lang)))

    def update_vision(
        self,
        vis: torch.Tensor,
        vis_pos: torch.Tensor,
        pos: torch.Tensor,
        lang: torch.Tensor,
        lang_mask: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """V^_ms = FFN(MSDeformAttn(CrossAttn(V_ms, L^_v))), Eq. 16."""
        norms = self.vis_norms
        vis = norms[0](vis + self.drop(self.vis_cross(vis_pos, lang, lang, lang_mask)))
        sampled = self.msda(vis + pos, reference_points, vis, spatial_shapes, level_start_index)
        vis = norms[1](vis + self.drop(sampled.to(vis.dtype)))
        return norms[2](vis + self.drop(self.vis_ffn(vis)))

    def forward(
        self,
        vis: torch.Tensor,
        pos: torch.Tensor,
        lang: torch.Tensor,
        lang_mask: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vis_pos = vis + pos
        if self.attention == "unidirectional":
            new_lang = lang
        else:
            new_lang = self.update_language(lang, lang_mask, vis, vis_pos)
        guide = lang if self.attention == "parallel" else new_lang
        vis = self.update_vision(
            vis, vis_pos, pos, guide, lang_mask, reference_points, spatial_shapes, level_start_index
        )
        return vis, new_lang


@functools.lru_cache(maxsize=32)
def sine_position_encoding(h: int, w: int, dim: int, device: torch.device) -> torch.Tensor:
    """DETR's normalized 2D sine encoding, (h*w, dim): dim/2 channels for y, then dim/2 for x (cached)."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    half = dim // 2
    freqs = 10000 ** (2 * (torch.arange(half, device=device) // 2) / half)
    py = ys[:, None] / freqs
    px = xs[:, None] / freqs
    py = torch.stack([py[:, 0::2].sin(), py[:, 1::2].cos()], dim=2).flatten(1)
    px = torch.stack([px[:, 0::2].sin(), px[:, 1::2].cos()], dim=2).flatten(1)
    return torch.cat([py[:, None, :].expand(h, w, half), px[None, :, :].expand(h, w, half)], dim=2).flatten(
        0, 1
    )


class MutualInteractionDecoder(nn.Module):
    """Cascaded bidirectional vision-language decoder producing the mask logits at res2 resolution.

    Eq. 14: every level is projected to D (a 1x1 conv, run as a linear layer on tokens, + LayerNorm),
    flattened and concatenated into V_ms (sum_i H_i W_i tokens) with a sine position encoding plus a learned
    level embedding; L_v is projected from D_l to D. The layers cross-attend between the l_m + N_p language
    tokens and all V_ms tokens and run multi-scale deformable attention over V_ms: nothing attends densely
    from V_ms to V_ms. Padded words are masked as keys everywhere (as queries they never reach the output).
    Eq. 17 reading: V^_ms + V_ms is split back into its levels, each resampled (bilinear) to H_1 x W_1 and
    summed, then a 1x1 conv gives V_out (N, D, H_1, W_1); the prediction is the per-pixel dot product of
    V_out with L_out = Linear(L^_v[CLS]) (token 0), scaled by 1/sqrt(D) so that initial logits are O(1).
    Eq. 15-16 describe a single pass, the default (``num_layers`` stacks more, each reading the previous
    layer's V^_ms and L^_v).
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: list[int],
        text_dim: int,
        hidden_dim: int = 256,
        num_layers: int = 1,
        num_heads: int = 8,
        num_points: int = 4,
        ffn_dim: int = 1024,
        attention: str = "cascaded",
        msda_impl: str = "auto",
        dropout: float = 0.0,
    ):
        super().__init__()
        if attention not in ATTENTION_SCHEMES:
            raise ValueError(
                f"MODEL.CROBIM.MID_ATTENTION={attention!r} is unknown; use one of {ATTENTION_SCHEMES}."
            )
        if hidden_dim % num_heads != 0:
            raise ValueError(
                f"MODEL.CROBIM.HIDDEN_DIM={hidden_dim} must be a multiple of MID_NUM_HEADS={num_heads}."
            )
        if num_layers < 1:
            raise ValueError(f"MODEL.CROBIM.MID_NUM_LAYERS must be >= 1, got {num_layers}.")
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Linear(c, hidden_dim), nn.LayerNorm(hidden_dim)) for c in in_channels
        )  # Proj_v, Eq. 14
        self.level_embed = nn.Parameter(torch.empty(len(in_channels), hidden_dim))
        nn.init.normal_(self.level_embed)
        self.lang_proj = nn.Linear(text_dim, hidden_dim)
        self.layers = nn.ModuleList(
            MutualInteractionLayer(
                hidden_dim, num_heads, len(in_channels), num_points, ffn_dim, dropout, attention, msda_impl
            )
            for _ in range(num_layers)
        )
        self.mask_embed = nn.Linear(hidden_dim, hidden_dim)  # the 1x1 conv giving V_out, Eq. 17
        self.cls_embed = nn.Linear(hidden_dim, hidden_dim)  # L_out, Eq. 17

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec], text_dim: int) -> dict:
        c = cfg.MODEL.CROBIM
        return {
            "in_channels": [input_shape[f].channels for f in c.IN_FEATURES],
            "text_dim": text_dim,
            "hidden_dim": c.HIDDEN_DIM,
            "num_layers": c.MID_NUM_LAYERS,
            "num_heads": c.MID_NUM_HEADS,
            "num_points": c.MID_NUM_POINTS,
            "ffn_dim": c.MID_FFN_DIM,
            "attention": c.MID_ATTENTION,
            "msda_impl": c.MSDA_IMPL,
            "dropout": c.DROPOUT,
        }

    def forward(
        self, features: list[torch.Tensor], lang: torch.Tensor, lang_mask: torch.Tensor
    ) -> torch.Tensor:
        """features V_l1..V_l4 (N, C_i, H_i, W_i), L_v (N, T, D_l), lang_mask (N, T) -> (N, 1, H_1, W_1)."""
        if len(features) != len(self.input_proj):
            raise ValueError(f"MID was built for {len(self.input_proj)} levels, got {len(features)}.")
        shapes = [f.shape[-2:] for f in features]
        projected = [proj(f.flatten(2).transpose(1, 2)) for proj, f in zip(self.input_proj, features)]
        v_ms = torch.cat(projected, dim=1)  # V_ms, Eq. 14
        pos = torch.cat(
            [
                sine_position_encoding(h, w, v_ms.shape[-1], v_ms.device) + self.level_embed[i]
                for i, (h, w) in enumerate(shapes)
            ]
        ).to(v_ms.dtype)
        spatial_shapes = torch.tensor([list(s) for s in shapes], dtype=torch.long, device=v_ms.device)
        level_start_index = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
        reference_points = torch.cat([self.reference_points(h, w, v_ms) for h, w in shapes])
        reference_points = reference_points[None, :, None, :].expand(v_ms.shape[0], -1, len(shapes), -1)
        key_mask = lang_mask.bool()
        vis, lng = v_ms, self.lang_proj(lang)
        for layer in self.layers:
            vis, lng = layer(vis, pos, lng, key_mask, reference_points, spatial_shapes, level_start_index)
        return self.predict(vis + v_ms, lng[:, 0], shapes)  # V^_ms + V_ms, [CLS]

    def predict(self, fused: torch.Tensor, cls: torch.Tensor, shapes: list[torch.Size]) -> torch.Tensor:
        """Eq. 17 on fused (N, S, D) and the [CLS] token (N, D) -> logits (N, 1, H_1, W_1), in float32.

        Y^ = <Resample(W V + b), L_out> is linear in V, so it is computed as
        Resample(<V, W^T L_out>) + <b, L_out>:
        one scalar per token before resampling instead of a D-channel map at H_1 x W_1 (same result).
        """
        with torch.autocast(fused.device.type, enabled=False):
            l_out = self.cls_embed(cls.float()) * fused.shape[-1] ** -0.5  # L_out
            weight = l_out @ self.mask_embed.weight  # W^T L_out of the 1x1 conv
            bias = l_out @ self.mask_embed.bias
            per_token = torch.bmm(fused.float(), weight[:, :, None])[..., 0]
            h1, w1 = shapes[0]
            logits = bias[:, None, None, None]
            for level, (h, w) in zip(per_token.split([h * w for h, w in shapes], dim=1), shapes):
                level = level.view(-1, 1, h, w)
                if (h, w) != (h1, w1):
                    level = F.interpolate(level, size=(h1, w1), mode="bilinear", align_corners=False)
                logits = logits + level
        return logits

    @staticmethod
    def reference_points(h: int, w: int, ref: torch.Tensor) -> torch.Tensor:
        """Normalized (x, y) centres of an h x w grid, (h*w, 2)."""
        ys = (torch.arange(h, device=ref.device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=ref.device, dtype=torch.float32) + 0.5) / w
        return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)

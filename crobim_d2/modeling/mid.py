"""Mutual-interaction decoder, MID (Sec. IV-C, Eq. 14-17, Fig. 8, Table VII)."""

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from . import ops
from .layers import (
    Attention,
    cell_centres,
    fused_linear,
    fused_linear_applies,
    sine_position_encoding,
    use_onednn_linears,
)

ATTENTION_SCHEMES = ("cascaded", "unidirectional", "parallel")


class FFN(nn.Sequential):
    """Linear, ReLU, Dropout, Linear. The tokens run as one (N*S, D) matrix so that the hidden layer is a
    tensor of its own (not a view of a batched product): the ReLU then runs in place without autograd
    copying the hidden layer back in backward. In CPU inference both layers run through oneDNN with bias
    and ReLU fused into the products (``layers/linear.py``; ``onednn_policy`` as there)."""

    onednn_policy = "auto"

    def __init__(self, dim: int, ffn_dim: int, dropout: float):
        super().__init__(
            nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1, _, drop, fc2 = self
        if fused_linear_applies(x, policy=self.onednn_policy) and not (self.training and drop.p > 0):
            return fused_linear(fused_linear(x, fc1.weight, fc1.bias, "relu"), fc2.weight, fc2.bias)
        hidden = fc1(x.reshape(-1, x.shape[-1])).relu_()
        return fc2(drop(hidden)).view(*x.shape[:-1], -1)


def project_tokens(proj: nn.Sequential, feature: torch.Tensor) -> torch.Tensor:
    """Proj_v of Eq. 14, (Linear, LayerNorm), on (N, C, H, W) -> (N, H*W, D) tokens: the linear layer reads the
    channels-first map through a transposed view (one batched product) instead of a token copy of it."""
    linear, norm = proj
    tokens = feature.flatten(2).transpose(1, 2)
    weight = linear.weight.t().expand(tokens.shape[0], -1, -1)
    return norm(torch.baddbmm(linear.bias, tokens, weight))


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
        self.vis_cross = Attention(dim, num_heads, dropout, few_keys=True)
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
        use_onednn_linears(self)  # CPU speed only (layers/linear.py); the same parameters and outputs

    @classmethod
    def from_config(cls, cfg, in_channels: list[int], text_dim: int) -> dict:
        c = cfg.MODEL.CROBIM
        return {
            "in_channels": in_channels,
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
        projected = [project_tokens(proj, f) for proj, f in zip(self.input_proj, features)]
        v_ms = torch.cat(projected, dim=1)  # V_ms, Eq. 14
        pos = torch.cat(
            [
                sine_position_encoding(h, w, v_ms.shape[-1], v_ms.device) + self.level_embed[i]
                for i, (h, w) in enumerate(shapes)
            ]
        ).to(v_ms.dtype)
        spatial_shapes = torch.tensor([list(s) for s in shapes], dtype=torch.long, device=v_ms.device)
        level_start_index = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
        reference_points = torch.cat([cell_centres(h, w, v_ms.device) for h, w in shapes])
        reference_points = reference_points[None, :, None, :].expand(v_ms.shape[0], -1, len(shapes), -1)
        key_mask = lang_mask.bool()
        vis, lng = v_ms, self.lang_proj(lang)
        for layer in self.layers:
            vis, lng = layer(vis, pos, lng, key_mask, reference_points, spatial_shapes, level_start_index)
        return self.predict(vis + v_ms, lng[:, 0], shapes)  # V^_ms + V_ms, [CLS]

    def predict(self, fused: torch.Tensor, cls: torch.Tensor, shapes: list[torch.Size]) -> torch.Tensor:
        """Eq. 17 on fused (N, S, D) and the [CLS] token (N, D) -> logits (N, 1, H_1, W_1), in float32
        (precision policy: ``layers/attention.py``).

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

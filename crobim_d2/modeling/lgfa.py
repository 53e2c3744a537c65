"""Language-guided feature aggregation, LGFA (Sec. IV-B, Eq. 3-13, Fig. 7, Table VI)."""

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from .capm import stage_indices
from .sdpa import scaled_dot_product_attention


def block_diagonal(x: torch.Tensor) -> torch.Tensor:
    """(N, T, M, d) per-head vectors -> (N, M*T, M*d): row (h, t) holds x[:, t, h] in head h's columns."""
    n, t, m, d = x.shape
    eye = torch.eye(m, device=x.device, dtype=x.dtype)
    return torch.einsum("nthj,hg->nhtgj", x, eye).reshape(n, m * t, m * d)


class LanguageGuidedFusion(nn.Module):
    """Cross-modal fusion of one stage (Eq. 3-7): pixels attend to words, a gated map reweights V_i.

    Multi-head attention with the usual 1/sqrt(head dim) scale (the paper writes 1/sqrt(l_m), which would make
    the temperature depend on the padding length); padded words are masked. omega_iq and the Gate's 1x1 conv
    are linear, so they are folded into the T per-head word vectors (block-diagonal over heads) instead of
    being applied to the H*W pixels: S_i = V_i (W_q^T K) and Gate(A V) = GELU(A (V W_g^T) + b_g) give the
    same result with two (H*W x C) by (C x M*T) products. Scores and softmax run in float32.
    """

    def __init__(self, channels: int, text_dim: int, num_heads: int):
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"LGFA: {channels} channels are not divisible by LGFA_NUM_HEADS={num_heads}.")
        self.num_heads = num_heads
        self.query = nn.Linear(channels, channels)  # omega_iq
        self.key = nn.Linear(text_dim, channels)  # omega_ik
        self.value = nn.Linear(text_dim, channels)  # omega_iv
        self.gate = nn.Linear(channels, channels)  # Gate of Eq. 6: 1x1 conv, then GELU
        self.reweight = nn.Linear(channels, channels)  # Conv_1x1 of Eq. 7

    def forward(
        self, v: torch.Tensor, lang: torch.Tensor, lang_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """v (N, C, H, W), lang (N, T, D_l), lang_mask (N, T) -> V_li (N, C, H, W), map (N, T, H, W)."""
        n, c, h, w = v.shape
        m, t = self.num_heads, lang.shape[1]
        x = v.flatten(2).transpose(1, 2)  # Flatten of Eq. 3: (N, H*W, C)
        values = block_diagonal(self.value(lang).view(n, t, m, c // m))  # L_iv, Eq. 4: (N, M*T, C)
        with torch.autocast(v.device.type, enabled=False):
            keys = block_diagonal(self.key(lang.float()).view(n, t, m, c // m))  # L_ik, Eq. 4: (N, M*T, C)
            scale = (c // m) ** -0.5
            q_keys = keys @ (self.query.weight * scale)  # (N, M*T, C): omega_iq folded into the keys
            q_bias = keys @ (self.query.bias * scale)  # (N, M*T)
            scores = torch.baddbmm(q_bias[:, None], x.float(), q_keys.transpose(1, 2))  # S_i, Eq. 3-5
            scores = scores.view(n, h * w, m, t).masked_fill(
                ~lang_mask.bool()[:, None, None, :], float("-inf")
            )
            probs = scores.softmax(-1)
        gated_values = values @ self.gate.weight.t().to(values.dtype)  # Gate's conv folded into L_iv
        att = F.gelu(torch.baddbmm(self.gate.bias, probs.view(n, h * w, m * t), gated_values))  # Eq. 6
        fused = self.reweight(att) * x  # Eq. 7
        return fused.transpose(1, 2).view(n, c, h, w), probs.mean(2).transpose(1, 2).reshape(n, t, h, w)


def attention_deficit_map(maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Attention maps (N, T, H_i, W_i) per stage -> deficit map M (N, H_4, W_4), Eq. 8-9."""
    resampled = [F.adaptive_avg_pool2d(a.float(), size) for a in maps]  # S'_i, Eq. 8
    return sum((a - b).abs().sum(1) for a, b in itertools.pairwise(resampled))  # Eq. 9


def cell_position_encoding(rh: int, rw: int, dim: int, ref: torch.Tensor) -> torch.Tensor:
    """Sine encoding (rh*rw, dim) of token centres inside a region cell, in the cell's [0, 1]^2 frame."""
    ys = (torch.arange(rh, device=ref.device, dtype=torch.float32) + 0.5) / rh
    xs = (torch.arange(rw, device=ref.device, dtype=torch.float32) + 0.5) / rw
    yx = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).view(-1, 2)  # (rh*rw, 2)
    freqs = 2 ** torch.arange(dim // 4, device=ref.device, dtype=torch.float32) * torch.pi
    angles = (yx[:, :, None] * freqs).flatten(1)  # (rh*rw, dim/2)
    enc = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(enc, (0, dim - enc.shape[1])).to(ref.dtype)


def self_attention(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """``attn(x, x, x)`` for batch-first x (N, L, C), computed with attn's own parameters as one packed
    projection and F.scaled_dot_product_attention. nn.MultiheadAttention's batch-first path transposes x to
    (L, N, C) before its projection; at the ADC's (16, 85, 256) that projection ran as a batched matmul on an
    expanded copy of the weight (85 x 256 x 768): that copy alone took 13 ms of ADC's 24 ms per 480x480 image
    (Swin-B config, bf16 autocast). The attention itself runs in float32 on the CPU (``sdpa``)."""
    n, length, c = x.shape
    m = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(n, length, 3, m, c // m).permute(2, 0, 3, 1, 4)
    out = scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=attn.dropout if attn.training else 0.0)
    return attn.out_proj(out.transpose(1, 2).reshape(n, length, c))


class AttentionDeficitCompensation(nn.Module):
    """Cross-scale self-attention over the K stage-4 regions with the largest attention deficit (Eq. 10-13).

    Reading chosen: a region r_k is one cell of the coarsest (stage-4) grid; at stage i it covers the
    r_i x r_i patch of V_li above it (r_i = H_i / H_4, e.g. 8, 4, 2, 1). When a stage is not an exact
    multiple of the stage-4 grid it is first resampled to one (I of Eq. 11) and the update resampled back
    (I' of Eq. 13). The patches of the compensated stages are projected to a common width C_v (Proj->),
    concatenated along the sequence with a learned embedding per stage plus a sine encoding of each token's
    position inside the cell (the same frame for all stages), refined by LN + MSA with a residual (Eq. 12),
    split per stage, projected back (Proj<-) and written back. The write-back adds the MSA update in the
    original channel space, V_li^r + Proj<-(MSA(LN(Proj->(V_li^r)))), so compensated regions keep their
    full-width features instead of passing through the C_v bottleneck. The deficit map always uses all
    stages (Eq. 9 sums over i = 1..3); ``stages`` (Table VI) selects the stages whose features are
    compensated. K is clipped to the number of stage-4 cells.
    """

    def __init__(self, in_channels: list[int], stages: Sequence[int], topk: int, dim: int, num_heads: int):
        super().__init__()
        if topk < 1:
            raise ValueError(f"MODEL.CROBIM.ADC_TOPK must be >= 1, got {topk}.")
        if dim % num_heads != 0:
            raise ValueError(
                f"ADC: width {dim} (MODEL.CROBIM.HIDDEN_DIM) not divisible by {num_heads} heads."
            )
        self.stages = list(stages)
        self.topk = topk
        self.proj_in = nn.ModuleList(nn.Linear(in_channels[i], dim) for i in self.stages)  # Proj->, Eq. 11
        self.proj_out = nn.ModuleList(nn.Linear(dim, in_channels[i]) for i in self.stages)  # Proj<-, Eq. 13
        self.stage_embed = nn.Parameter(torch.zeros(len(self.stages), dim))
        nn.init.trunc_normal_(self.stage_embed, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, features: list[torch.Tensor], deficit: torch.Tensor) -> list[torch.Tensor]:
        """features V_l1..V_l4 (N, C_i, H_i, W_i), deficit M (N, H_4, W_4) -> compensated features."""
        n, h4, w4 = deficit.shape
        k = min(self.topk, h4 * w4)
        regions = deficit.flatten(1).topk(k, dim=1).indices  # {r_k}, Eq. 10
        patches, grids = [], []
        for j, i in enumerate(self.stages):
            v = features[i]
            rh, rw = max(1, round(v.shape[2] / h4)), max(1, round(v.shape[3] / w4))
            if v.shape[2:] != (rh * h4, rw * w4):
                v = F.interpolate(v, size=(rh * h4, rw * w4), mode="bilinear", align_corners=False)  # I
            c = v.shape[1]
            cells = v.reshape(n, c, h4, rh, w4, rw).permute(0, 2, 4, 3, 5, 1).reshape(n, h4 * w4, rh * rw, c)
            picked = torch.gather(cells, 1, regions[:, :, None, None].expand(-1, -1, rh * rw, c))
            tokens = self.proj_in[j](picked)  # Proj->, Eq. 11
            tokens = (
                tokens
                + self.stage_embed[j].to(tokens.dtype)
                + cell_position_encoding(rh, rw, tokens.shape[-1], tokens)
            )
            patches.append(tokens)
            grids.append((rh, rw))
        seq = torch.cat(patches, dim=2).flatten(0, 1)  # V_l^{r_k}: (N*K, sum r_i^2, C_v), Eq. 11
        update = self_attention(self.attn, self.norm(seq))  # MSA(LN(.)), Eq. 12
        out = list(features)
        for j, (part, (rh, rw)) in enumerate(zip(update.split([p.shape[2] for p in patches], 1), grids)):
            i = self.stages[j]
            delta = self.proj_out[j](part).view(n, k, rh * rw, -1)  # Split + Proj<-, Eq. 13
            c = delta.shape[-1]
            index = regions[:, :, None, None].expand(-1, -1, rh * rw, c)
            full = delta.new_zeros(n, h4 * w4, rh * rw, c).scatter(1, index, delta)
            full = full.view(n, h4, w4, rh, rw, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, rh * h4, rw * w4)
            if full.shape[2:] != features[i].shape[2:]:
                full = F.interpolate(
                    full, size=features[i].shape[2:], mode="bilinear", align_corners=False
                )  # I'
            out[i] = features[i] + full.to(features[i].dtype)  # write back, Eq. 13
        return out


class LanguageGuidedFeatureAggregation(nn.Module):
    """Per-stage language-guided fusion (Eq. 3-7) followed by attention deficit compensation (Eq. 8-13).

    ``adc_stages`` lists the stages (0-based positions in the input list) that receive compensation
    (Table VI); an empty list disables ADC and builds none of its parameters.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: list[int],
        text_dim: int,
        num_heads: int = 8,
        adc_stages: Sequence[int] = (0, 1, 2, 3),
        topk: int = 16,
        adc_dim: int = 256,
    ):
        super().__init__()
        if any(not 0 <= i < len(in_channels) for i in adc_stages):
            raise ValueError(f"ADC stages {list(adc_stages)} must index the {len(in_channels)} input levels.")
        self.fusions = nn.ModuleList(LanguageGuidedFusion(c, text_dim, num_heads) for c in in_channels)
        self.adc = (
            AttentionDeficitCompensation(in_channels, sorted(adc_stages), topk, adc_dim, num_heads)
            if adc_stages
            else None
        )

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec], text_dim: int) -> dict:
        c = cfg.MODEL.CROBIM
        return {
            "in_channels": [input_shape[f].channels for f in c.IN_FEATURES],
            "text_dim": text_dim,
            "num_heads": c.LGFA_NUM_HEADS,
            "adc_stages": stage_indices(c.ADC_STAGES, c.IN_FEATURES, "MODEL.CROBIM.ADC_STAGES"),
            "topk": c.ADC_TOPK,
            "adc_dim": c.HIDDEN_DIM,
        }

    def forward(
        self, features: list[torch.Tensor], lang: torch.Tensor, lang_mask: torch.Tensor
    ) -> list[torch.Tensor]:
        """features V_1..V_4 (N, C_i, H_i, W_i), lang L_v (N, T, D_l), lang_mask (N, T) -> V_l1..V_l4."""
        if len(features) != len(self.fusions):
            raise ValueError(f"LGFA was built for {len(self.fusions)} levels, got {len(features)}.")
        fused, maps = zip(*(f(v, lang, lang_mask) for f, v in zip(self.fusions, features)))
        if self.adc is None:
            return list(fused)
        with torch.no_grad():
            deficit = attention_deficit_map(maps, features[-1].shape[-2:])  # Eq. 8-9
        return self.adc(list(fused), deficit)

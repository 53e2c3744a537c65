"""Language-guided feature aggregation, LGFA (Sec. IV-B, Eq. 3-13, Fig. 7, Table VI)."""

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .layers import (
    Attention,
    cell_position_encoding,
    fold_heads,
    folded_query_softmax,
    stage_indices,
    use_onednn_linears,
)

ADC_FUSIONS = ("sequence", "channel")


class LanguageGuidedFusion(nn.Module):
    """Cross-modal fusion of one stage (Eq. 3-7): pixels attend to words, a gated map reweights V_i.

    Multi-head attention with the usual 1/sqrt(head dim) scale (the paper's 1/sqrt(l_m) would tie the
    temperature to the padding length); padded words are masked. omega_iq and the Gate's 1x1 conv are linear,
    so they are folded into the T per-head word vectors (``folded_query_softmax``, ``fold_heads``) instead
    of being applied to the H*W pixels: same result, two (H*W x C) by (C x M*T) products. Scores and softmax
    in float32 (precision policy: ``layers/attention.py``). The pixels stay channels-first, V_i's own
    layout: the products read transposed views, and the Gate's output, Eq. 7's 1x1 conv and its product with
    V_i are computed as (C, H*W) maps, so no elementwise operation mixes a token-major tensor with a
    channel-major one (strided, and several times slower on the CPU) and the result needs no copy back to
    (N, C, H, W).
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
        x = v.flatten(2)  # Flatten of Eq. 3, channels-first: (N, C, H*W)
        values = self.value(lang).view(n, t, m, c // m)  # L_iv, Eq. 4
        with torch.autocast(v.device.type, enabled=False):
            keys = self.key(lang.float()).view(n, t, m, c // m)  # L_ik, Eq. 4
            # S_i, Eq. 3-5, with omega_iq folded into the keys; the pixels read as (N, H*W, C)
            probs = folded_query_softmax(x.float().transpose(1, 2), keys, self.query, lang_mask.bool())
        gated_values = fold_heads(values, self.gate.weight)  # Gate's conv folded into L_iv: (N, M*T, C)
        weights = probs.view(n, h * w, m * t).transpose(1, 2)  # (N, M*T, H*W)
        att = F.gelu(torch.baddbmm(self.gate.bias[:, None], gated_values.transpose(1, 2), weights))  # Eq. 6
        conv = self.reweight  # Conv_1x1 of Eq. 7 on the (C, H*W) map
        fused = torch.baddbmm(conv.bias[:, None], conv.weight.expand(n, -1, -1), att) * x  # Eq. 7
        return fused.view(n, c, h, w), probs.mean(2).transpose(1, 2).reshape(n, t, h, w)


def attention_deficit_map(maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Attention maps (N, T, H_i, W_i) per stage -> deficit map M (N, H_4, W_4), Eq. 8-9."""
    resampled = [F.adaptive_avg_pool2d(a.float(), size) for a in maps]  # S'_i, Eq. 8
    return sum((a - b).abs().sum(1) for a, b in itertools.pairwise(resampled))  # Eq. 9


def resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size): bilinear along a side that grows, area average along a shrinking one."""
    h, w = x.shape[-2:]
    grown = (max(h, size[0]), max(w, size[1]))
    if grown != (h, w):
        x = F.interpolate(x, size=grown, mode="bilinear", align_corners=False)
    if grown != tuple(size):
        x = F.adaptive_avg_pool2d(x, size)
    return x


def stage_on_region_grid(v: torch.Tensor, h4: int, w4: int) -> tuple[torch.Tensor, int, int]:
    """V_li (N, C, H_i, W_i) on a multiple (r_h H_4, r_w W_4) of the stage-4 grid, resampled when it is not
    one (I of Eq. 11), and the patch size r_h x r_w of one region there."""
    rh, rw = max(1, round(v.shape[2] / h4)), max(1, round(v.shape[3] / w4))
    if v.shape[2:] != (rh * h4, rw * w4):
        v = F.interpolate(v, size=(rh * h4, rw * w4), mode="bilinear", align_corners=False)
    return v, rh, rw


def region_index(v: torch.Tensor, regions: torch.Tensor, rh: int, rw: int):
    """V_li (N, C, r_h H_4, r_w W_4) as (N, C, H_4, r_h, W_4, r_w) and the index of the K regions in it: a
    region's patch is ``cells[index]``, (N, K, C, r_h, r_w), read or written without touching the rest."""
    n, c, h, w = v.shape
    w4 = w // rw
    batch = torch.arange(n, device=regions.device)[:, None]
    return v.reshape(n, c, h // rh, rh, w4, rw), (batch, slice(None), regions // w4, slice(None), regions % w4)


def gather_regions(v: torch.Tensor, regions: torch.Tensor, rh: int, rw: int) -> torch.Tensor:
    """Patches V_li^{r_k} (N, K, r_h*r_w, C) of a stage on its region grid; regions (N, K) stage-4 cells."""
    cells, index = region_index(v, regions, rh, rw)
    patches = cells[index]  # (N, K, C, r_h, r_w)
    return patches.permute(0, 1, 3, 4, 2).reshape(*regions.shape, rh * rw, v.shape[1])


def add_to_regions(
    v: torch.Tensor, delta: torch.Tensor, regions: torch.Tensor, h4: int, w4: int, rh: int, rw: int
) -> torch.Tensor:
    """V_li + the per-region change delta (N, K, r_h*r_w, C) placed at its regions of the region grid and
    resampled to V_li's size where the two differ (I' of Eq. 13)."""
    n, k, _, c = delta.shape
    patches = delta.view(n, k, rh, rw, c).permute(0, 1, 4, 2, 3)  # (N, K, C, r_h, r_w)
    if v.shape[2:] == (rh * h4, rw * w4):  # on the region grid: only the K patches change
        out = v.clone(memory_format=torch.contiguous_format)  # its reshape below must be a view
        cells, index = region_index(out, regions, rh, rw)
        cells[index] = cells[index] + patches.to(v.dtype)
        return out
    full = delta.new_zeros(n, c, rh * h4, rw * w4)
    cells, index = region_index(full, regions, rh, rw)
    cells[index] = patches
    return v + F.interpolate(full, size=v.shape[2:], mode="bilinear", align_corners=False).to(v.dtype)


class AttentionDeficitCompensation(nn.Module):
    """Cross-scale self-attention over the K stage-4 regions with the largest attention deficit (Eq. 10-13).

    A region r_k is one cell of the coarsest (stage-4) grid; at stage i it covers the r_i x r_i patch above
    it (r_i = H_i / H_4: 8, 4, 2, 1 at strides 4-32; a stage that is not a multiple of the stage-4 grid is
    resampled to one first and its change resampled back). Every stage takes part in the attention;
    ``stages`` (Table VI) are the ones written back. K is clipped to the number of stage-4 cells. Subclasses
    say how the patches are fused (``ADC_FUSION``) in ``refine``.
    """

    def __init__(self, in_channels: list[int], stages: Sequence[int], topk: int, dim: int):
        super().__init__()
        if topk < 1:
            raise ValueError(f"MODEL.CROBIM.ADC_TOPK must be >= 1, got {topk}.")
        if not stages or any(not 0 <= i < len(in_channels) for i in stages):
            raise ValueError(f"ADC stages {list(stages)} must index the {len(in_channels)} input levels.")
        self.stages = sorted(stages)
        self.topk = topk
        self.proj_in = nn.ModuleList(nn.Linear(c, dim) for c in in_channels)  # Proj->, Eq. 11
        self.proj_out = nn.ModuleList(nn.Linear(dim, in_channels[i]) for i in self.stages)  # Proj<-, Eq. 13

    def refine(self, patches: list[torch.Tensor], grids: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Patches (N, K, r_h*r_w, C_i) of every stage -> their changes, for ``self.stages`` only."""
        raise NotImplementedError

    def forward(self, features: list[torch.Tensor], deficit: torch.Tensor) -> list[torch.Tensor]:
        """features V_l1..V_l4 (N, C_i, H_i, W_i), deficit M (N, H_4, W_4) -> compensated features."""
        h4, w4 = deficit.shape[1:]
        regions = deficit.flatten(1).topk(min(self.topk, h4 * w4), dim=1).indices  # {r_k}, Eq. 10
        patches, grids = [], []
        for v in features:
            v, rh, rw = stage_on_region_grid(v, h4, w4)
            patches.append(gather_regions(v, regions, rh, rw))
            grids.append((rh, rw))
        out = list(features)
        for i, delta in zip(self.stages, self.refine(patches, grids)):
            out[i] = add_to_regions(features[i], delta, regions, h4, w4, *grids[i])  # Eq. 13
        return out


class SequenceCompensation(AttentionDeficitCompensation):
    """``ADC_FUSION: "sequence"``: each stage's patch is projected to C_v (Proj->) and the stages are
    concatenated along the sequence (sum r_i^2 tokens, 85 at strides 4-32), with a learned embedding per
    stage plus a sine encoding of each token's position inside the cell (the same frame for all stages).
    LN + MSA run there; the update is split per stage, projected back (Proj<-) and added to the region's
    features in their own channel space, V_li^r + Proj<-(MSA(LN(Proj->(V_li^r)))), so compensated regions keep
    their full-width features instead of passing through the C_v bottleneck.
    """

    def __init__(self, in_channels: list[int], stages: Sequence[int], topk: int, dim: int, num_heads: int):
        super().__init__(in_channels, stages, topk, dim)
        if dim % num_heads != 0:
            raise ValueError(f"ADC: MODEL.CROBIM.HIDDEN_DIM={dim} is not divisible by {num_heads} heads.")
        self.stage_embed = nn.Parameter(torch.zeros(len(in_channels), dim))
        nn.init.trunc_normal_(self.stage_embed, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)

    def refine(self, patches: list[torch.Tensor], grids: list[tuple[int, int]]) -> list[torch.Tensor]:
        n, k = patches[0].shape[:2]
        tokens = []
        for proj, embed, patch, (rh, rw) in zip(self.proj_in, self.stage_embed, patches, grids):
            x = proj(patch)  # Proj->, Eq. 11
            tokens.append(x + embed.to(x.dtype) + cell_position_encoding(rh, rw, x.shape[-1], x))
        seq = torch.cat(tokens, dim=2).flatten(0, 1)  # V_l^{r_k}: (N*K, sum r_i^2, C_v), Eq. 11
        x = self.norm(seq)
        update = self.attn(x, x, x).split([t.shape[2] for t in tokens], dim=1)  # MSA(LN(.)), Eq. 12
        changes = []
        for j, i in enumerate(self.stages):
            rh, rw = grids[i]
            changes.append(self.proj_out[j](update[i]).view(n, k, rh * rw, -1))  # Split, Proj<-, Eq. 13
        return changes


class ChannelCompensation(AttentionDeficitCompensation):
    """``ADC_FUSION: "channel"``, Eq. 11-13 as written: each stage's patch is resampled to one G x G grid
    (I), projected to C_v (Proj->) and the stages are concatenated along the channels (G^2 tokens of
    |stages| * C_v); V~ = MSA(LN(V)) + V there (Eq. 12, no position encoding: the paper adds none), split
    into the stages' channel groups, projected back per stage (Proj<-, the inverse of Proj->) and resampled
    to the patch (I'). The region's features are replaced by the result.
    """

    def __init__(
        self,
        in_channels: list[int],
        stages: Sequence[int],
        topk: int,
        dim: int,
        num_heads: int,
        grid_size: int,
    ):
        super().__init__(in_channels, stages, topk, dim)
        if grid_size < 1:
            raise ValueError(f"MODEL.CROBIM.ADC_GRID_SIZE must be >= 1, got {grid_size}.")
        width = len(in_channels) * dim
        if width % num_heads != 0:
            raise ValueError(f"ADC: width {width} (stages x HIDDEN_DIM) not divisible by {num_heads} heads.")
        self.dim = dim
        self.grid_size = grid_size
        self.norm = nn.LayerNorm(width)
        self.attn = Attention(width, num_heads)

    def refine(self, patches: list[torch.Tensor], grids: list[tuple[int, int]]) -> list[torch.Tensor]:
        n, k = patches[0].shape[:2]
        g = self.grid_size
        columns = []
        for proj, patch, (rh, rw) in zip(self.proj_in, patches, grids):
            x = patch.reshape(n * k, rh, rw, -1).permute(0, 3, 1, 2)
            columns.append(proj(resample(x, (g, g)).flatten(2).transpose(1, 2)))  # I, Proj->: (N*K, G^2, C_v)
        x = torch.cat(columns, dim=2)  # Concat, Eq. 11: (N*K, G^2, |stages| * C_v)
        y = self.norm(x)
        x = self.attn(y, y, y) + x  # Eq. 12
        parts = x.split(self.dim, dim=2)  # Split, Eq. 13
        changes = []
        for j, i in enumerate(self.stages):
            (rh, rw), c = grids[i], patches[i].shape[-1]
            new = self.proj_out[j](parts[i]).transpose(1, 2).reshape(n * k, c, g, g)  # Proj<-
            new = resample(new, (rh, rw)).flatten(2).transpose(1, 2).reshape(n, k, rh * rw, c)  # I'
            changes.append(new - patches[i])
        return changes


class LanguageGuidedFeatureAggregation(nn.Module):
    """Per-stage language-guided fusion (Eq. 3-7) followed by attention deficit compensation (Eq. 8-13).

    ``adc_stages`` lists the stages (0-based positions in the input list) whose compensated features are
    written back (Table VI); an empty list disables ADC and builds none of its parameters. ``adc_fusion``
    picks how the stages' patches meet: "sequence" (``SequenceCompensation``) or "channel"
    (``ChannelCompensation``, the paper's Eq. 11-13 with a common ``adc_grid_size`` grid). The deficit map
    always uses all stages (Eq. 9 sums over i = 1..3).
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
        adc_fusion: str = "sequence",
        adc_grid_size: int = 8,
    ):
        super().__init__()
        if adc_fusion not in ADC_FUSIONS:
            raise ValueError(f"MODEL.CROBIM.ADC_FUSION={adc_fusion!r} is unknown; use one of {ADC_FUSIONS}.")
        self.fusions = nn.ModuleList(LanguageGuidedFusion(c, text_dim, num_heads) for c in in_channels)
        self.adc = None
        if adc_stages and adc_fusion == "sequence":
            self.adc = SequenceCompensation(in_channels, adc_stages, topk, adc_dim, num_heads)
        elif adc_stages:
            self.adc = ChannelCompensation(in_channels, adc_stages, topk, adc_dim, num_heads, adc_grid_size)
        use_onednn_linears(self)  # CPU speed only (layers/linear.py); the same parameters and outputs

    @classmethod
    def from_config(cls, cfg, in_channels: list[int], text_dim: int) -> dict:
        c = cfg.MODEL.CROBIM
        return {
            "in_channels": in_channels,
            "text_dim": text_dim,
            "num_heads": c.LGFA_NUM_HEADS,
            "adc_stages": stage_indices(c.ADC_STAGES, c.IN_FEATURES, "MODEL.CROBIM.ADC_STAGES"),
            "topk": c.ADC_TOPK,
            "adc_dim": c.HIDDEN_DIM,
            "adc_fusion": c.ADC_FUSION,
            "adc_grid_size": c.ADC_GRID_SIZE,
        }

    def forward(
        self, features: list[torch.Tensor], lang: torch.Tensor, lang_mask: torch.Tensor
    ) -> list[torch.Tensor]:
        """features V_1..V_4 (N, C_i, H_i, W_i), language (N, T, D_l), its mask (N, T) -> V_l1..V_l4."""
        if len(features) != len(self.fusions):
            raise ValueError(f"LGFA was built for {len(self.fusions)} levels, got {len(features)}.")
        fused, maps = zip(*(f(v, lang, lang_mask) for f, v in zip(self.fusions, features)))
        if self.adc is None:
            return list(fused)
        with torch.no_grad():
            deficit = attention_deficit_map(maps, features[-1].shape[-2:])  # Eq. 8-9
        return self.adc(list(fused), deficit)

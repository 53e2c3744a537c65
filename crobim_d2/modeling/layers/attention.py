"""Multi-head attention shared by CAPM, LGFA's attention deficit compensation and MID.

Precision policy of the whole model under autocast (weights, gradients and optimizer state stay float32);
the modules follow it and point here instead of restating it:

- Attention on the CPU computes in float32 and casts the result back (``scaled_dot_product_attention``):
  PyTorch's CPU flash-attention kernel is slower in bfloat16 than in float32 at these head widths (16-32),
  and the casts cost far less than the difference.
- ``Attention(fp32=True)`` computes in float32 on every device: used where a softmax spans the ~19k
  visual tokens (MID's language queries, Eq. 15), too many keys for bfloat16's 8-bit mantissa.
- LGFA's word-attention scores and softmax (Eq. 5-6) and the attention deficit map (Eq. 8-9) run in float32:
  the deficit map's top-K picks the regions ADC refines, and rounding would change that choice.
- MID's prediction (Eq. 17) and the loss (Eq. 18) run in float32: the logits decide the 0.5 threshold of
  every pixel, and Dice sums over whole images.
- BERT runs in float32: for ~24 tokens, casting its weights to bfloat16 on every call costs more than the
  bfloat16 matmuls save.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "fold_heads", "folded_query_softmax", "scaled_dot_product_attention"]


def fold_heads(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-head vectors x (N, T, M, d) through a linear map ``weight`` (E, M*d) whose input columns are read
    per head -> (N, M*T, E), row (m, t) = W[:, m's d columns] x[:, t, m]. This folds a layer applied to many
    tokens into the few per-head keys or values instead (``Attention(few_keys=True)``, LGFA's fusion)."""
    n, t, m, d = x.shape
    return torch.einsum("ntmd,emd->nmte", x, weight.reshape(-1, m, d).to(x.dtype)).reshape(n, m * t, -1)


def folded_query_softmax(
    x: torch.Tensor, keys: torch.Tensor, query: nn.Linear, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention weights softmax_j((W_q x + b_q)_m . k_mj / sqrt(d)) of many query inputs x (N, S, D_in) over
    the T per-head keys (N, T, M, d), without projecting the S inputs: ``query``'s weight and bias are folded
    into the keys (``fold_heads``), one (S x D_in) by (D_in x M*T) product. -> (N, S, M, T), the softmax in
    at least float32; ``key_mask`` (N, T) bool, True = attend."""
    n, t, m, d = keys.shape
    scale = d**-0.5
    a = fold_heads(keys, query.weight.t()) * scale  # rows (m, j): W_q,m^T k_mj
    c = fold_heads(keys, query.bias[None]) * scale  # b_q,m . k_mj
    scores = torch.baddbmm(c.transpose(1, 2), x, a.transpose(1, 2)).view(n, -1, m, t)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    # The softmax reads the autocast-dtype scores and computes in float32: no float32 copy of them first.
    return scores.softmax(-1, dtype=torch.promote_types(scores.dtype, torch.float32))


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention``; on the CPU, bfloat16/float16 inputs are computed in float32 and the
    result cast back (see the module docstring). Other devices use the inputs' dtype."""
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=attn_mask, dropout_p=dropout_p, scale=scale
            )
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections and a key padding mask.

    ``fp32`` runs the attention itself in float32 on every device (the projections keep the autocast dtype).

    ``few_queries`` gives the same result for a few queries over many keys (the l_m + N_p words reading the
    ~19k visual tokens, Eq. 15) without projecting the keys and values. Per head m, with x_j the key and
    value inputs: q_m . (W_k,m x_j + b_k,m) = (W_k,m^T q_m) . x_j + q_m . b_k,m, and the last term is the
    same for every key, so it cancels in the softmax (the key projection has no bias here: it would have no
    effect); and sum_j a_j (W_v,m x_j + b_v,m) = W_v,m (sum_j a_j x_j) + b_v,m because the weights sum to 1.
    All heads then attend over the same raw inputs, so they run as one attention of M * Q queries of width D.
    For Q = 24 and S = 19125 keys of width D = 256 this replaces two D x D projections of S tokens with
    fewer FLOPs of attention and never writes the projected keys and values. On the CPU that attention is
    two matrix products around a softmax (the M * Q x S scores are small), elsewhere the attention kernel.

    ``few_keys`` gives the same result for many queries over a few keys (the ~19k visual tokens reading the
    l_m + N_p words, Eq. 16) without projecting the queries or the attention output. Per head m, with k_m, v_m
    the projected keys and values (T x d_h) and x a query input: q_m . k_mj = x . (W_q,m^T k_mj) + b_q,m . k_mj,
    and the output W_o (concat_m sum_j a_mj v_mj) + b_o = sum_m sum_j a_mj (W_o,m v_mj) + b_o. So the scores of
    all heads are one (S x D) by (D x M*T) product and the output one (S x M*T) by (M*T x D) product, with a
    softmax over each head's T scores in between. That costs 2 S D M T multiply-adds against 2 S D (D + T)
    for projecting, so it is taken when T (M - 1) < D (24 words, 8 heads, D = 256 in MID); otherwise the
    module projects as usual. The scores are a product in the autocast dtype; their softmax runs in float32.

    Checkpoints in ``nn.MultiheadAttention``'s layout (``in_proj_weight``, ``in_proj_bias``, ``out_proj.*``,
    written by earlier versions of CAPM and ADC) load into this layout (``_load_from_state_dict``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dropout: float = 0.0,
        *,
        fp32: bool = False,
        few_queries: bool = False,
        few_keys: bool = False,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"Attention width {dim} is not divisible by {num_heads} heads.")
        if few_keys and (few_queries or fp32):
            raise ValueError("Attention's few_keys does not combine with few_queries or fp32.")
        self.num_heads, self.dropout, self.fp32 = num_heads, dropout, fp32
        self.few_queries, self.few_keys = few_queries, few_keys
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
        n, m, d = query.shape[0], self.num_heads, query.shape[-1]
        if self.few_keys and key.shape[1] * (m - 1) < d:
            return self.folded(query, key, value, key_mask)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        precision = (
            torch.autocast(query.device.type, enabled=False) if self.fp32 else contextlib.nullcontext()
        )
        q = self.q(query).view(n, -1, m, d // m).transpose(1, 2)  # (N, M, Q, d_h)
        if self.few_queries:
            w_k = self.k.weight.view(m, d // m, d)
            w_v = self.v.weight.view(m, d // m, d)
            with precision:
                if self.fp32:
                    q, key, value, w_k, w_v = (x.float() for x in (q, key, value, w_k, w_v))
                q_abs = torch.einsum("nmqe,med->nmqd", q, w_k.to(q.dtype))  # W_k,m^T q_m
                q_abs, key, value = q_abs.flatten(1, 2), key.to(q_abs.dtype), value.to(q_abs.dtype)
                if q_abs.device.type == "cpu":
                    # Two matrix products and a softmax: faster on the CPU than the flash-attention
                    # kernel for M * Q queries over ~19k keys, forward and backward.
                    scores = torch.bmm(q_abs * (d // m) ** -0.5, key.transpose(1, 2))
                    if key_mask is not None:
                        scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
                    weights = F.dropout(scores.softmax(-1), dropout, self.training)
                    mixed = torch.bmm(weights, value)
                else:
                    mixed = F.scaled_dot_product_attention(
                        q_abs[:, None], key[:, None], value[:, None], attn_mask=mask, dropout_p=dropout,
                        scale=(d // m) ** -0.5,
                    )
                mixed = mixed.view(n, m, -1, d)  # sum_j a_j x_j per head
                out = torch.einsum("nmqd,med->nmqe", mixed, w_v.to(mixed.dtype))
                out = out + self.v.bias.view(m, 1, d // m).to(out.dtype)
        else:
            k, v = (x.view(n, x.shape[1], m, -1).transpose(1, 2) for x in (self.k(key), self.v(value)))
            with precision:
                if self.fp32:
                    q, k, v = q.float(), k.float(), v.float()
                out = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out(out.transpose(1, 2).flatten(2).to(query.dtype))

    def folded(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """``few_keys``: the queries' and the output's projections folded through the T keys (class docstring)."""
        n, s, d = query.shape
        m, t = self.num_heads, key.shape[1]
        k = self.k(key).view(n, t, m, d // m)
        v = self.v(value).view(n, t, m, d // m)
        b = fold_heads(v, self.out.weight)  # rows (m, j): W_o,m v_mj, (N, M*T, D)
        p = folded_query_softmax(query, k, self.q, key_mask)
        p = F.dropout(p, self.dropout, self.training).view(n, s, m * t)
        return torch.baddbmm(self.out.bias.to(b.dtype), p.to(b.dtype), b)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        packed = state_dict.pop(prefix + "in_proj_weight", None)
        if packed is not None:  # nn.MultiheadAttention's layout
            for name, part in zip("qkv", packed.chunk(3)):
                state_dict[f"{prefix}{name}.weight"] = part
            bias = state_dict.pop(prefix + "in_proj_bias", None)
            if bias is not None:
                for name, part in zip("qkv", bias.chunk(3)):
                    state_dict[f"{prefix}{name}.bias"] = part
            for name in ("weight", "bias"):
                if prefix + f"out_proj.{name}" in state_dict:
                    state_dict[f"{prefix}out.{name}"] = state_dict.pop(prefix + f"out_proj.{name}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

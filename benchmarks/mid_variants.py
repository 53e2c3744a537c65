"""MID at the paper's size (480x480 input: 19,125 V_ms tokens, 24 language tokens): the model's exact
reformulations of its pieces against the plain forms they replaced, timed side by side, interleaved, in one
process.

Each pair computes the same function (the max |difference| is printed):
  vis_cross  V_ms reading the few language tokens (Eq. 16). Model: Attention(few_keys=True), the query and
             output projections folded through the words, two (S x D) by (D x M*T) products. Plain: project
             the S queries, attention kernel, project the S outputs.
  lang_cross the language tokens reading V_ms (Eq. 15; keys and values unprojected in both). Model, on the
             CPU: the M*Q x S scores and their softmax as two matrix products. Plain: the flash-attention
             kernel.
  ffn        Model: the FFN over one (N*S, D) matrix with the ReLU in place. Plain: nn.Sequential.
  msda_proj  Model: MSDeformAttn's sampling offsets and attention weights as one (D -> 3 M L P) product.
             Plain: two nn.Linear.
  input_proj Model: the 1x1 projections of Eq. 14 reading the NCHW features through a transposed view.
             Plain: nn.Linear on a token copy of each level.
``--whole`` also times the whole decoder, model against plain (all but msda_proj in their plain forms),
forward (inference) and forward+backward. Prints a table; writes JSON with ``--output``. "speedup" is the
plain form's time over the model's.

    python benchmarks/mid_variants.py [--threads 2] [--repeats 15] [--batch 1] [--whole]
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time
import types
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from crobim_d2.modeling import mid as mid_module
from crobim_d2.modeling.mid import MutualInteractionDecoder, project_tokens

LEVELS = [(120, 120), (60, 60), (30, 30), (15, 15)]
CHANNELS = [128, 256, 512, 1024]  # Swin-B's stages, as LGFA returns them
TEXT_DIM, TOKENS = 768, 24  # BERT-base; 20 words + 4 prompts


def kernel_lang_cross(self, query, key, value, key_mask=None):
    """Attention.forward with few_queries and fp32 (MID's lang_cross) through the flash-attention kernel."""
    n, _, d = query.shape
    m = self.num_heads
    q = self.q(query).view(n, -1, m, d // m).transpose(1, 2)
    with torch.autocast(query.device.type, enabled=False):
        w_k = self.k.weight.view(m, d // m, d).float()
        w_v = self.v.weight.view(m, d // m, d).float()
        q_abs = torch.einsum("nmqe,med->nmqd", q.float(), w_k).flatten(1, 2)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        mixed = F.scaled_dot_product_attention(
            q_abs[:, None], key.float()[:, None], value.float()[:, None], attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0, scale=(d // m) ** -0.5,
        ).view(n, m, -1, d)
        out = torch.einsum("nmqd,med->nmqe", mixed, w_v) + self.v.bias.view(m, 1, d // m).float()
    return self.out(out.transpose(1, 2).flatten(2).to(query.dtype))


def plain_input_proj(proj, feature):
    return proj(feature.flatten(2).transpose(1, 2))


def separate_msda_proj(msda, q):
    return msda.sampling_offsets(q), msda.attention_weights(q)


def plain(mid):
    """A copy of ``mid`` with vis_cross, lang_cross, the FFNs and the input projections in their plain forms."""
    new = copy.deepcopy(mid)
    for layer in new.layers:
        layer.vis_cross.few_keys = False
        layer.lang_cross.forward = types.MethodType(kernel_lang_cross, layer.lang_cross)
        for ffn in (layer.vis_ffn, layer.lang_ffn):
            ffn.forward = types.MethodType(torch.nn.Sequential.forward, ffn)
    new.forward = types.MethodType(plain_forward, new)
    return new


def plain_forward(self, features, lang, lang_mask):
    with mock.patch.object(mid_module, "project_tokens", plain_input_proj):
        return MutualInteractionDecoder.forward(self, features, lang, lang_mask)


def make_inputs(batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    features = [torch.randn(batch, c, h, w, generator=g) for c, (h, w) in zip(CHANNELS, LEVELS)]
    lang = torch.randn(batch, TOKENS, TEXT_DIM, generator=g)
    mask = torch.ones(batch, TOKENS, dtype=torch.long)
    mask[:, 9:20] = 0  # a 9-token expression padded to 20, then the 4 prompts
    return features, lang, mask


def timed(fn, backward: bool) -> float:
    start = time.perf_counter()
    if backward:
        out = fn()
        sum(o.float().sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
    else:
        with torch.inference_mode():
            fn()
    return time.perf_counter() - start


def compare(name: str, base, variant, repeats: int, backward: bool = False) -> dict:
    """Interleaved medians of two zero-argument callables and the max |difference| of their outputs."""
    with torch.no_grad():
        a, b = base(), variant()
    a, b = (x if isinstance(x, tuple) else (x,) for x in (a, b))
    diff = max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b))
    scale = max(x.float().abs().max().item() for x in a)
    times = {"base": [], "variant": []}
    for i in range(repeats + 1):
        for key, fn in (("base", base), ("variant", variant)) if i % 2 else (("variant", variant), ("base", base)):
            t = timed(fn, backward)
            if i:
                times[key].append(t)
    row = {"piece": name, "backward": backward, "max_abs_diff": diff, "max_abs": scale}
    row.update({f"{k}_ms": 1e3 * statistics.median(v) for k, v in times.items()})
    row["ratios"] = [v / b for v, b in zip(times["variant"], times["base"])]
    row["speedup"] = 1 / statistics.median(row["ratios"])
    print(f"{name:12s} {'fwd+bwd' if backward else 'fwd':8s} {row['base_ms']:9.1f} {row['variant_ms']:9.1f} "
          f"{row['speedup']:7.2f}x  max|diff| {diff:.1e} (of {scale:.1e})", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--whole", action="store_true", help="also the whole decoder, forward and fwd+bwd")
    parser.add_argument("--output", default="output/benchmarks/mid_variants.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mid = MutualInteractionDecoder(in_channels=CHANNELS, text_dim=TEXT_DIM)
    mid.eval()
    features, lang, mask = make_inputs(args.batch)
    layer, n = mid.layers[0], args.batch
    s = sum(h * w for h, w in LEVELS)
    g = torch.Generator().manual_seed(1)
    vis, words = torch.randn(n, s, 256, generator=g), torch.randn(n, TOKENS, 256, generator=g)
    key_mask = mask.bool()
    old = plain(mid)
    old_layer = old.layers[0]
    x_level = features[0]
    print(f"MID pieces, batch {n}, {s} V_ms tokens, {TOKENS} language tokens, {args.threads} threads, "
          f"median of {args.repeats} interleaved; CPU {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'piece':12s} {'pass':8s} {'base ms':>9s} {'new ms':>9s} {'speedup':>8s}  (base: plain, new: model)")
    rows = []
    for backward in (False, True):
        if backward:
            for t in (vis, words):
                t.requires_grad_(True)
        rows += [
            compare("vis_cross", lambda: old_layer.vis_cross(vis, words, words, key_mask),
                    lambda: layer.vis_cross(vis, words, words, key_mask), args.repeats, backward),
            compare("lang_cross", lambda: old_layer.lang_cross(words, vis, vis),
                    lambda: layer.lang_cross(words, vis, vis), args.repeats, backward),
            compare("ffn", lambda: old_layer.vis_ffn(vis), lambda: layer.vis_ffn(vis), args.repeats, backward),
            compare("msda_proj", lambda: separate_msda_proj(layer.msda, vis),
                    lambda: layer.msda.sampling_projections(vis), args.repeats, backward),
            compare("input_proj", lambda: plain_input_proj(mid.input_proj[0], x_level),
                    lambda: project_tokens(mid.input_proj[0], x_level), args.repeats, backward),
        ]
    if args.whole:
        rows.append(compare("MID", lambda: old(features, lang, mask), lambda: mid(features, lang, mask),
                            args.repeats))
        mid.train(), old.train()
        rows.append(compare("MID", lambda: old(features, lang, mask), lambda: mid(features, lang, mask),
                            max(3, args.repeats // 3), backward=True))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"threads": args.threads, "batch": n, "cpu": torch.backends.cpu.get_cpu_capability(),
                   "load_average": os.getloadavg(), "rows": rows}, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

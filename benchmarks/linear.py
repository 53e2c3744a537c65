"""The image encoders' linear layers: MKL (``F.linear``) against oneDNN (``layers/linear.py``) per shape.

Each row is one linear layer of Swin-B (window 12, windows padded) or ConvNeXt-B at a 480x480 input, batch 1
for inference and batch 2 for a training step, in float32:
  infer   ``F.linear`` (+ GELU where the layer has one) against ``fused_linear`` (bias and GELU fused), no grad
  train   forward + backward of ``F.linear`` against ``OneDNNLinear``'s autograd function (forward and input
          gradient on oneDNN, weight gradient on torch.mm), GELU unfused in both
and, where the CPU runs bfloat16 natively, the inference row under bfloat16 autocast (both on oneDNN there;
only the fusion differs). The two are timed interleaved, median of ``--repeats``; "oneDNN / MKL" below 1
means oneDNN is faster. This is the measurement behind the rule in ``layers/linear.py`` (float32 on oneDNN
only on AVX-512 CPUs): run it on a CPU to see whether the rule holds there. Prints a table naming the CPU
capability and writes JSON.

    python benchmarks/linear.py [--threads 2] [--repeats 15] [--output output/benchmarks/linear.json]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from crobim_d2.modeling.layers import linear
from crobim_d2.precision import cpu_has_native_bf16, describe_cpu

EMULATION_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
# (layer, tokens at batch 1, in features, out features, GELU after it)
SHAPES = [
    ("Swin-B stage 1 qkv", 14400, 128, 384, False),
    ("Swin-B stage 1 fc1", 14400, 128, 512, True),
    ("Swin-B stage 1 fc2", 14400, 512, 128, False),
    ("Swin-B stage 2 fc1", 3600, 256, 1024, True),
    ("Swin-B stage 2 fc2", 3600, 1024, 256, False),
    ("Swin-B stage 3 qkv", 1296, 512, 1536, False),
    ("Swin-B stage 3 proj", 1296, 512, 512, False),
    ("Swin-B stage 3 fc1", 1296, 512, 2048, True),
    ("Swin-B stage 3 fc2", 1296, 2048, 512, False),
    ("Swin-B stage 4 fc1", 576, 1024, 4096, True),
    ("Swin-B stage 4 fc2", 576, 4096, 1024, False),
    ("ConvNeXt-B stage 1 fc1", 14400, 128, 512, True),
    ("ConvNeXt-B stage 3 fc1", 900, 512, 2048, True),
    ("ConvNeXt-B stage 3 fc2", 900, 2048, 512, False),
]


def median_pair(plain, onednn, repeats: int) -> tuple[float, float]:
    for _ in range(2):
        plain(), onednn()
    times = ([], [])
    for _ in range(repeats):
        for fn, out in zip((plain, onednn), times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def measure(tokens: int, k: int, n: int, gelu: bool, repeats: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(tokens, k)
    layer = torch.nn.Linear(k, n)
    w, b = layer.weight.detach(), layer.bias.detach()
    act = "gelu" if gelu else None
    row = {}

    def infer_plain():
        y = F.linear(x, w, b)
        return F.gelu(y) if gelu else y

    with torch.no_grad():
        plain_s, onednn_s = median_pair(infer_plain, lambda: linear.fused_linear(x, w, b, act), repeats)
        row["infer_float32_ms"] = (plain_s * 1e3, onednn_s * 1e3)
        if cpu_has_native_bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                plain_s, onednn_s = median_pair(infer_plain, lambda: linear.fused_linear(x, w, b, act), repeats)
            row["infer_bfloat16_ms"] = (plain_s * 1e3, onednn_s * 1e3)
    x2 = torch.randn(2 * tokens, k, requires_grad=True)
    grad = torch.randn(2 * tokens, n)
    weight, bias = layer.weight, layer.bias

    def step(forward):
        def run():
            forward(x2, weight, bias).backward(grad)
            x2.grad = weight.grad = bias.grad = None
        return run

    # The autograd function itself, whatever the rule picks on this CPU, so that it is measured here too.
    plain_s, onednn_s = median_pair(step(F.linear), step(linear._OneDNNLinearFunction.apply), max(3, repeats // 3))
    row["train_float32_ms"] = (plain_s * 1e3, onednn_s * 1e3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", default="output/benchmarks/linear.json")
    args = parser.parse_args()
    if not linear.ONEDNN_LINEAR:
        raise SystemExit("this torch has no oneDNN linear op (torch.ops.mkldnn._linear_pointwise): nothing to compare")
    torch.set_num_threads(args.threads)
    emulated = [f"{k}={os.environ[k]}" for k in EMULATION_VARIABLES if os.environ.get(k)]
    cpu = f"{describe_cpu()}{' (emulated: ' + ' '.join(emulated) + ')' if emulated else ''}, {args.threads} threads"
    rule = "oneDNN" if linear._avx512() else "MKL"
    rows = []
    for name, tokens, k, n, gelu in SHAPES:
        row = {"layer": name, "tokens": tokens, "in": k, "out": n, "gelu": gelu}
        row.update(measure(tokens, k, n, gelu, args.repeats))
        rows.append(row)
    columns = [c for c in ("infer_float32_ms", "infer_bfloat16_ms", "train_float32_ms") if c in rows[0]]
    print(f"CPU: {cpu}; the encoders' float32 layers run on {rule} here")
    print("| layer | tokens x in -> out | " + " | ".join(f"{c[:-3]} MKL / oneDNN ms (ratio)" for c in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for r in rows:
        cells = [f"{r[c][0]:.2f} / {r[c][1]:.2f} ({r[c][1] / r[c][0]:.2f})" for c in columns]
        act = " + GELU" if r["gelu"] else ""
        print(f"| {r['layer']} | {r['tokens']} x {r['in']} -> {r['out']}{act} | " + " | ".join(cells) + " |")
    totals = {c: [sum(r[c][i] for r in rows) for i in (0, 1)] for c in columns}
    print("| all rows | | " + " | ".join(f"{t[0]:.1f} / {t[1]:.1f} ({t[1] / t[0]:.2f})" for t in totals.values())
          + " |")
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"cpu": cpu, "threads": args.threads, "repeats": args.repeats, "float32_rule": rule,
                   "rows": rows, "totals_ms": totals}, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

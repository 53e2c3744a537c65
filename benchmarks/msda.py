"""Multi-scale deformable attention: compiled kernel vs the pure-PyTorch reference at MID's size.

MID at a 480x480 input samples 4 levels (120^2, 60^2, 30^2, 15^2: S = Lq = 19125), 8 heads, 4 points,
256 channels (D = 32). Locations are encoder-style by default: each query sits at its own pixel center and
samples a few pixels around it (``--locations uniform`` spreads them over the whole image instead).

CPU: batch 2 at ``--threads`` threads (2 by default), forward (no grad) and forward+backward, median of
``--repeats`` runs. With a GPU also the CUDA kernel (float32, float16, bfloat16) vs the reference (float32) at
batch 32 and the achieved bandwidth over the compulsory traffic (every input read once, every output written
once), also as a share of the card's device-to-device copy bandwidth measured in the same run. Prints a table
and writes JSON (``--output``). Timings are not asserted: this is not a test.

    python benchmarks/msda.py [--threads 2] [--repeats 5] [--output output/benchmarks/msda.json]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from crobim_d2.modeling.ops import extension_info, ms_deform_attn, ms_deform_attn_pytorch

LEVELS = [(120, 120), (60, 60), (30, 30), (15, 15)]
HEADS, POINTS, CHANNELS = 8, 4, 256


def make_inputs(batch: int, locations: str, device: str, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    spatial = torch.tensor(LEVELS, dtype=torch.long)
    sizes = spatial.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    s, d, num_levels = int(sizes.sum()), CHANNELS // HEADS, len(LEVELS)
    value = torch.randn(batch, s, HEADS, d, generator=g)
    shape = (batch, s, HEADS, num_levels, POINTS, 2)
    if locations == "uniform":
        loc = torch.rand(shape, generator=g)
    else:
        centers = torch.cat([
            torch.stack(torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")[::-1], -1)
            .view(-1, 2)
            for h, w in LEVELS
        ])
        normalizer = spatial.flip(1).float().view(1, 1, 1, num_levels, 1, 2)
        loc = centers.view(1, s, 1, 1, 1, 2) + 2.0 * torch.randn(shape, generator=g) / normalizer
    attn = torch.rand(batch, s, HEADS, num_levels, POINTS, generator=g)
    attn = attn / attn.sum((-1, -2), keepdim=True)
    loc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return (
        value.to(device, dtype),
        spatial.to(device),
        starts.to(device),
        loc.to(device, loc_dtype),
        attn.to(device, loc_dtype),
    )


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_op(fn, inputs, device: str, repeats: int, backward: bool) -> float:
    value, spatial, starts, loc, attn = inputs
    if backward:
        leaves = [t.detach().clone().requires_grad_(True) for t in (value, loc, attn)]
    times = []
    for i in range(repeats + 1):  # the first run warms up caches and allocators
        sync(device)
        t0 = time.perf_counter()
        if backward:
            out = fn(leaves[0], spatial, starts, leaves[1], leaves[2])
            out.backward(torch.ones_like(out))
        else:
            with torch.no_grad():
                out = fn(value, spatial, starts, loc, attn)
        sync(device)
        if i:
            times.append(time.perf_counter() - t0)
        del out
    return 1e3 * statistics.median(times)


def compulsory_bytes(inputs, backward: bool) -> int:
    value, _, _, loc, attn = inputs
    out = value.numel() // value.shape[1] * loc.shape[1] * value.element_size()
    fwd = value.numel() * value.element_size() + loc.numel() * loc.element_size() + attn.numel() * attn.element_size()
    if not backward:
        return fwd + out
    # Backward re-reads the inputs and grad_output and writes one gradient per input.
    return 2 * fwd + out + value.numel() * value.element_size() + loc.numel() * loc.element_size() + attn.numel() * attn.element_size()


def copy_bandwidth_gbps(gib: int = 2, repeats: int = 10) -> float:
    """The GPU's device-to-device copy rate, counting bytes read and written (median of ``repeats``)."""
    src = torch.randn(gib * 2**28, device="cuda")  # random, not zeros: float32, ``gib`` GiB
    dst = torch.empty_like(src)
    times = []
    for i in range(repeats + 3):  # 3 warm-ups
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    assert torch.equal(dst, src)
    return 2 * src.numel() * src.element_size() / statistics.median(times) / 1e9


def run(device: str, batch: int, dtypes, args, copy_gbps: float | None = None) -> list:
    rows = []
    ref_inputs = make_inputs(batch, args.locations, device, torch.float32)
    ref = {p: time_op(ms_deform_attn_pytorch, ref_inputs, device, args.repeats, p) for p in (False, True)}
    rows.append({"device": device, "impl": "pytorch", "dtype": "float32", "batch": batch,
                 "fwd_ms": ref[False], "fwd_bwd_ms": ref[True]})
    for dtype in dtypes:
        inputs = ref_inputs if dtype == torch.float32 else make_inputs(batch, args.locations, device, dtype)
        row = {"device": device, "impl": "kernel", "dtype": str(dtype).replace("torch.", ""), "batch": batch}
        for phase, backward in (("fwd", False), ("fwd_bwd", True)):
            ms = time_op(ms_deform_attn, inputs, device, args.repeats, backward)
            row[f"{phase}_ms"] = ms
            row[f"{phase}_speedup"] = ref[backward] / ms
            if device == "cuda":
                row[f"{phase}_gbps"] = compulsory_bytes(inputs, backward) / ms / 1e6
                row[f"{phase}_copy_share"] = row[f"{phase}_gbps"] / copy_gbps
        rows.append(row)
        del inputs
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both implementations")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--batch", type=int, default=2, help="CPU batch size")
    parser.add_argument("--cuda-batch", type=int, default=32, help="GPU batch size")
    parser.add_argument("--locations", choices=["encoder", "uniform"], default="encoder")
    parser.add_argument("--skip-cpu", action="store_true", help="only the GPU part")
    parser.add_argument("--output", default="output/benchmarks/msda.json")
    args = parser.parse_args()
    info = extension_info()
    if not info["built"]:
        print(f"warning: {info['import_error']}; 'kernel' rows time the reference. Run `make install`.")
    torch.set_num_threads(args.threads)
    rows = [] if args.skip_cpu else run("cpu", args.batch, [torch.float32], args)
    copy_gbps = copy_bandwidth_gbps() if torch.cuda.is_available() else None
    if copy_gbps is not None:
        rows += run("cuda", args.cuda_batch, [torch.float32, torch.float16, torch.bfloat16], args, copy_gbps)

    header = f"{'device':6} {'impl':8} {'dtype':9} {'batch':>5} {'fwd ms':>9} {'x':>6} {'fwd+bwd ms':>11} {'x':>6} {'GB/s fwd/bwd':>13} {'% copy':>8}"
    print(f"MSDeformAttn, levels {LEVELS}, M={HEADS} P={POINTS} C={CHANNELS}, {args.locations} locations, "
          f"{args.threads} CPU threads, median of {args.repeats}")
    if copy_gbps is not None:
        print(f"GPU copy bandwidth (read + write): {copy_gbps:.0f} GB/s; '% copy' is fwd/fwd+bwd against it")
    print(header)
    for r in rows:
        gbps = f"{r['fwd_gbps']:.0f}/{r['fwd_bwd_gbps']:.0f}" if "fwd_gbps" in r else ""
        share = f"{100 * r['fwd_copy_share']:.0f}/{100 * r['fwd_bwd_copy_share']:.0f}" if "fwd_gbps" in r else ""
        print(f"{r['device']:6} {r['impl']:8} {r['dtype']:9} {r['batch']:>5} {r['fwd_ms']:9.1f} "
              f"{r.get('fwd_speedup', 1.0):6.2f} {r['fwd_bwd_ms']:11.1f} {r.get('fwd_bwd_speedup', 1.0):6.2f} {gbps:>13} {share:>8}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    result = {
        "levels": LEVELS, "heads": HEADS, "points": POINTS, "channels": CHANNELS, "locations": args.locations,
        "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__, "extension": info,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "copy_gbps": copy_gbps,
        "rows": rows,
    }
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

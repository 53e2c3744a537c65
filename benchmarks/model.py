"""CroBIM model benchmark on CPU at 480x480 with random weights (Swin-B and ConvNeXt-B configs).

Measures parameters, inference seconds per image (float32 and bfloat16 autocast), peak memory, a batch-2
training step (forward, loss, backward; float32, and under bfloat16 autocast as SOLVER.AMP.ENABLED does on
the CPU), the share of inference time in backbone / text encoder / CAPM / LGFA / MID, deformable-attention impl "auto" against "pytorch", and the mean IoU between the bfloat16 and
float32 masks. Every measurement runs with ``CPU_MALLOC_REUSE`` (the default, as train_net.py and
RRSISPredictor apply it) except ``train_no_malloc_reuse``, the float32 training step with glibc's default
allocator behaviour, for comparison. Each (config, measurement) runs in its own subprocess so that its peak RSS
(``resource.getrusage``) is its own; "peak MiB" is the growth of the peak RSS over the built model's.

    .venv/bin/python benchmarks/model.py                       # both configs, 2 threads
    .venv/bin/python benchmarks/model.py --configs swin_b --modes infer_float32 infer_bfloat16 train

The machine's own matrix-multiply speed (float32 and bfloat16 GFLOP/s of a 2048^3 matmul) is measured after
each measurement and reported next to the issue's reference machine (210 / 900): the time goals were set on
that machine and scale with it.

Inputs for the agreement check are smooth random images (low-resolution noise, upsampled) with random
expressions: with random weights the masks are arbitrary but deterministic, so the IoU measures how far
bfloat16 moves the decision boundary. Timings are noisy on shared CPUs: each inference run also times the timm
backbone alone, interleaved, and reports CroBIM's time relative to it ("ratio") and that ratio times the
backbone's idle-machine time ("idle estimate"); the load average after each measurement goes into the JSON.
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

CONFIGS = {
    "swin_b": "projects/CroBIM/configs/rrsisd/crobim_swin_b.yaml",
    "convnext_b": "projects/CroBIM/configs/rrsisd/crobim_convnext_b.yaml",
}
# timm backbones timed alongside CroBIM: (timm name, kwargs, s/image fp32 and bf16 on an idle machine with
# 2 threads, as measured for the issue). CroBIM's time over the backbone's, measured interleaved, times the
# idle-machine backbone time estimates CroBIM's idle-machine time when other jobs share the CPUs.
REFERENCES = {
    "swin_b": ("swin_base_patch4_window12_384", {"img_size": 480}, {"float32": 1.11, "bfloat16": 0.44}),
    "convnext_b": ("convnext_base", {}, {"float32": 0.76, "bfloat16": 0.24}),
}
COMPONENTS = ("backbone", "text_encoder", "capm", "lgfa", "mid")
MODES = (
    "infer_float32",
    "infer_bfloat16",
    "infer_msda_pytorch",
    "train",
    "train_bfloat16",
    "train_no_malloc_reuse",
    "agreement",
)
# Matrix-multiply throughput that the goals were measured against (GFLOP/s, 2 threads): the goals
# scale with this machine's own (``gemm`` in the JSON), which varies between machines and over time.
REFERENCE_GEMM = {"float32": 210.0, "bfloat16": 900.0}
GEMM_SIZE = 2048


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def build(config: str, msda_impl: str = "auto", opts: list | tuple = ()):
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from crobim_d2 import add_crobim_config

    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.TEXT_ENCODER.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CROBIM.MSDA_IMPL = msda_impl
    torch.manual_seed(0)
    return build_model(cfg), cfg


def make_inputs(cfg, n: int, seed: int, train: bool = False) -> list:
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    s, t = cfg.INPUT.IMAGE_SIZE, cfg.INPUT.MAX_TOKENS
    out = []
    for _ in range(n):
        coarse = torch.rand(1, 3, 15, 15, generator=g) * 255
        image = F.interpolate(coarse, size=(s, s), mode="bicubic", align_corners=False)[0]
        valid = int(torch.randint(4, t + 1, (1,), generator=g))
        tokens = torch.zeros(t, dtype=torch.long)
        tokens[:valid] = torch.randint(1000, 30000, (valid,), generator=g)
        tokens[0], tokens[valid - 1] = 101, 102  # [CLS] ... [SEP]
        mask = torch.zeros(t, dtype=torch.long)
        mask[:valid] = 1
        record = {"image": image.clamp(0, 255).to(torch.uint8), "lang_tokens": tokens, "lang_mask": mask}
        record.update(height=s, width=s)
        if train:
            record["gt_mask"] = (torch.rand(s // 32, s // 32, generator=g) > 0.7).to(torch.uint8)
            record["gt_mask"] = record["gt_mask"].repeat_interleave(32, 0).repeat_interleave(32, 1)
        out.append(record)
    return out


def time_components(model) -> dict:
    """Forward pre/post hooks accumulating wall time per top-level component."""
    totals = dict.fromkeys(COMPONENTS, 0.0)
    starts = {}
    for name in COMPONENTS:
        module = getattr(model, name)
        module.register_forward_pre_hook(
            lambda m, a, name=name: starts.__setitem__(name, time.perf_counter())
        )
        module.register_forward_hook(
            lambda m, a, o, name=name: totals.__setitem__(
                name, totals[name] + time.perf_counter() - starts[name]
            )
        )
    return totals


def build_reference(config: str):
    import timm

    name, kwargs, _ = REFERENCES[config]
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()


def run_inference(model, cfg, dtype: str, repeats: int, reference, reference_seconds: float) -> dict:
    """CroBIM and the timm backbone alone, timed interleaved so that both see the same CPU load."""
    import torch

    model.inference_dtype = dtype
    inputs = make_inputs(cfg, 1, seed=0)
    x = torch.randn(1, 3, cfg.INPUT.IMAGE_SIZE, cfg.INPUT.IMAGE_SIZE)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    with torch.inference_mode():
        for _ in range(2):  # warm-up: oneDNN builds its bf16 kernels for each new shape on first use
            model(inputs)
            with autocast:
                reference.forward_features(x)
        totals = time_components(model)
        elapsed = elapsed_ref = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            model(inputs)
            mid = time.perf_counter()
            with autocast:
                reference.forward_features(x)
            elapsed += mid - start
            elapsed_ref += time.perf_counter() - mid
    result = {"seconds_per_image": elapsed / repeats, "backbone_alone_seconds": elapsed_ref / repeats}
    result["ratio_to_backbone_alone"] = elapsed / elapsed_ref
    result["idle_estimate_seconds"] = result["ratio_to_backbone_alone"] * reference_seconds
    result["share"] = {k: v / elapsed for k, v in totals.items()}
    result["share"]["other"] = 1.0 - sum(result["share"].values())
    return result


def run_train(model, cfg, repeats: int, dtype: str = "float32") -> dict:
    """Forward, loss and backward of a batch of 2; ``bfloat16``: under CPU autocast, as SOLVER.AMP does."""
    import torch

    model.train()
    inputs = make_inputs(cfg, 2, seed=1, train=True)
    times = []
    for _ in range(repeats + 1):  # first step is warm-up
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            losses = model(inputs)
        sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"seconds_per_step": sum(times[1:]) / repeats, "batch": 2, "dtype": dtype}


def measure_gemm(repeats: int = 5) -> dict:
    """GFLOP/s of a square matmul in float32 and bfloat16 at the worker's thread count (median of repeats)."""
    import statistics

    import torch

    out = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a, b = (torch.randn(GEMM_SIZE, GEMM_SIZE).to(dtype) for _ in range(2))
        a @ b
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        out[name] = 2 * GEMM_SIZE**3 / statistics.median(times) / 1e9
    return out


def run_agreement(model, cfg, n: int) -> dict:
    import torch

    ious, pixel_agree = [], []
    with torch.inference_mode():
        for i in range(n):
            inputs = make_inputs(cfg, 1, seed=1000 + i)
            masks = []
            for dtype in ("float32", "bfloat16"):
                model.inference_dtype = dtype
                masks.append(model(inputs)[0]["ref_seg"] > 0.5)
            inter = (masks[0] & masks[1]).sum().item()
            union = (masks[0] | masks[1]).sum().item()
            ious.append(1.0 if union == 0 else inter / union)  # both empty: full agreement
            pixel_agree.append((masks[0] == masks[1]).float().mean().item())
    return {
        "num_inputs": n,
        "mean_iou": sum(ious) / n,
        "min_iou": min(ious),
        "pixel_agreement": sum(pixel_agree) / n,
    }


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from crobim_d2.engine import apply_cpu_malloc_reuse

    model, cfg = build(CONFIGS[args.config], "pytorch" if args.mode == "infer_msda_pytorch" else "auto")
    malloc_reuse = args.mode != "train_no_malloc_reuse" and apply_cpu_malloc_reuse(cfg)
    model.eval()
    dtype = "bfloat16" if args.mode in ("infer_bfloat16", "train_bfloat16") else "float32"
    reference = build_reference(args.config) if args.mode.startswith("infer") else None
    built_rss = peak_rss_mib()
    result = {"config": args.config, "mode": args.mode, "model_rss_mib": built_rss, "malloc_reuse": malloc_reuse}
    result["params_m"] = {k: sum(p.numel() for p in getattr(model, k).parameters()) / 1e6 for k in COMPONENTS}
    result["params_m"]["total"] = sum(p.numel() for p in model.parameters()) / 1e6
    if args.mode.startswith("infer"):
        reference_seconds = REFERENCES[args.config][2][dtype]
        result.update(run_inference(model, cfg, dtype, args.repeats, reference, reference_seconds))
    elif args.mode.startswith("train"):
        result.update(run_train(model, cfg, args.train_repeats, dtype))
    else:
        result.update(run_agreement(model, cfg, args.num_agreement))
    result["peak_mib"] = peak_rss_mib() - built_rss
    result["minor_page_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    result["gemm_gflops"] = measure_gemm()  # the CPU's speed right after the measurement
    return result


def spawn(args, config: str, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--config", config, "--mode", mode]
    cmd += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    cmd += ["--train-repeats", str(args.train_repeats), "--num-agreement", str(args.num_agreement)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def fmt(x: float, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def print_table(results: dict) -> None:
    print(
        "| config | params (M) | train s/step (b=2) fp32 / bf16 autocast / fp32 without CPU_MALLOC_REUSE | peak MiB infer fp32 / bf16 / train "
        "| bf16 vs fp32 IoU (n) | GEMM GFLOP/s fp32 / bf16 |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        fp, bf, tr, tb, tn, ag = (
            r.get(m, {})
            for m in ("infer_float32", "infer_bfloat16", "train", "train_bfloat16", "train_no_malloc_reuse", "agreement")
        )
        params = next((x["params_m"]["total"] for x in r.values()), None)
        peaks = " / ".join(fmt(x.get("peak_mib"), 0) for x in (fp, bf, tr))
        iou = f"{fmt(ag.get('mean_iou'), 4)} ({ag.get('num_inputs', '-')})"
        gemm = [x["gemm_gflops"] for x in r.values()]
        gemm = " / ".join(fmt(min(g[k] for g in gemm), 0) + "-" + fmt(max(g[k] for g in gemm), 0) for k in REFERENCE_GEMM)
        steps = " / ".join(fmt(x.get("seconds_per_step")) for x in (tr, tb, tn))
        print(f"| {name} | {fmt(params, 1)} | {steps} | {peaks} | {iou} | {gemm} |")
    print(f"(GEMM: {GEMM_SIZE}^3 matmul right after each measurement; the issue's machine: "
          f"{REFERENCE_GEMM['float32']:.0f} / {REFERENCE_GEMM['bfloat16']:.0f})")
    print()
    print(
        "| config | inference | s/img | timm backbone alone s/img | ratio | idle estimate s/img | "
        + " | ".join(COMPONENTS)
        + " | other |"
    )
    print("|---|---|---|---|---|---|" + "---|" * (len(COMPONENTS) + 1))
    labels = {"infer_float32": "fp32", "infer_bfloat16": "bf16", "infer_msda_pytorch": "fp32, MSDA pytorch"}
    for name, r in results.items():
        for mode, label in labels.items():
            if mode in r:
                x = r[mode]
                cells = " | ".join(f"{100 * x['share'][k]:.0f}%" for k in (*COMPONENTS, "other"))
                print(
                    f"| {name} | {label} | {fmt(x['seconds_per_image'])} | {fmt(x['backbone_alone_seconds'])} "
                    f"| {fmt(x['ratio_to_backbone_alone'])} | {fmt(x['idle_estimate_seconds'])} | {cells} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--modes", nargs="+", choices=list(MODES),
        help="default: all, without the bfloat16 ones on a CPU that has no native bfloat16 (crobim_d2.precision)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed inference runs after one warm-up")
    parser.add_argument("--train-repeats", type=int, default=2, help="timed training steps after one warm-up")
    parser.add_argument("--num-agreement", type=int, default=200, help="inputs for the bf16/fp32 mask IoU")
    parser.add_argument("--output", default="output/benchmarks/model.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    from crobim_d2.precision import cpu_has_native_bf16, describe_cpu

    if args.modes is None:
        native = cpu_has_native_bf16()
        args.modes = [m for m in MODES if native or m not in ("infer_bfloat16", "train_bfloat16", "agreement")]
    results = {}
    for config in args.configs:
        results[config] = {}
        for mode in args.modes:
            start = time.perf_counter()
            results[config][mode] = spawn(args, config, mode)
            results[config][mode]["load_average_after"] = os.getloadavg()[0]  # other jobs sharing the CPUs
            print(f"# {config} {mode}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(f"CPU: {describe_cpu()}, {args.threads} threads")
    print_table(results)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    settings = {k: getattr(args, k) for k in ("threads", "repeats", "train_repeats", "num_agreement")}
    settings["cpu_count"] = os.cpu_count()
    settings["cpu"] = describe_cpu()
    from crobim_d2.modeling import ops

    settings["msda_extension"] = ops.extension_info()
    with open(args.output, "w") as f:
        json.dump({"settings": settings, "results": results}, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

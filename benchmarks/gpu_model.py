"""The model stages of the GPU check (benchmarks/gpu_check.sh): the paper-size Swin-B CroBIM on one GPU.

    check   build it with random weights (seed 0) on the CPU, copy it to the GPU; compare the float32
            probabilities of both on a few inputs (TF32 off; tolerance ``PROB_TOLERANCE``); time inference at
            batch 1 and 32 in float32 and under the GPU's autocast dtype; probe the peak memory of AMP training
            steps at two batch sizes and pick the largest batch that fits and the iterations for a time budget.
    train   one ``projects/CroBIM/train_net.py`` run (its ``main``) on synrrsis under SOLVER.AMP with a dtype:
            images/s, peak GPU memory, and whether the loss fell (first vs last logged window).
    report  merge the stages' JSON into one file and print a table.

``--device cpu`` with ``--opts`` for a tiny model runs the same code without a GPU (tests/test_gpu_check.py).
Timings are not asserted: this is not a test.
"""
import argparse
import copy
import glob
import json
import math
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "projects", "CroBIM"))
import model as model_bench  # benchmarks/model.py: build, make_inputs

from crobim_d2.precision import autocast_dtype

CONFIG = "projects/CroBIM/configs/rrsisd/crobim_swin_b.yaml"
PROB_TOLERANCE = 1e-3  # max |p_gpu - p_cpu| of float32 probabilities, TF32 off on both
MEMORY_FRACTION = 0.8  # of the GPU's memory the chosen training batch is predicted to use
GOALS = {"msda_fwd_bwd_copy_share": 0.5, "train_bf16_images_per_s": 100.0}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def compare(model_cpu, model_dev, cfg, n: int) -> dict:
    """float32 probabilities of the same weights on the CPU and on the device, with TF32 off."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    diffs, means, agree = [], [], []
    try:
        with torch.inference_mode():
            for i in range(n):
                inputs = model_bench.make_inputs(cfg, 1, seed=100 + i)
                p_cpu = model_cpu(inputs)[0]["ref_seg"]
                p_dev = model_dev(inputs)[0]["ref_seg"].cpu()
                d = (p_dev - p_cpu).abs()
                diffs.append(d.max().item())
                means.append(d.mean().item())
                agree.append(((p_dev > 0.5) == (p_cpu > 0.5)).float().mean().item())
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return {"inputs": n, "tolerance": PROB_TOLERANCE, "max_abs": max(diffs), "mean_abs": statistics.mean(means),
            "mask_agreement": min(agree), "passed": max(diffs) <= PROB_TOLERANCE}


def time_inference(model, cfg, device: str, batch: int, dtype: str, repeats: int) -> dict:
    model.inference_dtype = dtype
    inputs = model_bench.make_inputs(cfg, batch, seed=7)
    reset_peak(device)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):  # 2 warm-ups (cuDNN/oneDNN kernel choice, allocator)
            sync(device)
            start = time.perf_counter()
            model(inputs)
            sync(device)
            if i >= 2:
                times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    resolved = autocast_dtype(device, dtype)
    dtype = dtype if resolved is None or dtype != "auto" else f"auto ({str(resolved).replace('torch.', '')})"
    return {"batch": batch, "dtype": dtype, "seconds": seconds, "images_per_s": batch / seconds,
            "peak_mib": peak_mib(device)}


def train_probe(model, cfg, device: str, batch: int, dtype: torch.dtype) -> dict:
    """Peak memory and time of a forward+backward step at ``batch`` under autocast (the second of two)."""
    model.train()
    inputs = model_bench.make_inputs(cfg, batch, seed=3, train=True)
    for _ in range(2):
        reset_peak(device)
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device, dtype=dtype):
            losses = model(inputs)
        sum(losses.values()).backward()
        sync(device)
        seconds = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
    model.eval()
    return {"batch": batch, "seconds": seconds, "peak_mib": peak_mib(device)}


def choose_batch(probes: list, param_mib: float, total_mib: float | None, max_batch: int) -> int:
    """The largest multiple of 8 (at most ``max_batch``) whose predicted peak, a line through the probes plus
    AdamW's two float32 moments, stays under ``MEMORY_FRACTION`` of the GPU; ``max_batch`` without a GPU."""
    if total_mib is None:
        return max_batch
    (b0, m0), (b1, m1) = [(p["batch"], p["peak_mib"]) for p in probes]
    per_image = (m1 - m0) / (b1 - b0)
    fixed = m0 - per_image * b0 + 2 * param_mib
    fits = int((MEMORY_FRACTION * total_mib - fixed) / per_image)
    return max(8, min(max_batch, fits // 8 * 8))


def stage_check(args) -> dict:
    device = args.device
    model_cpu, cfg = model_bench.build(args.config, opts=args.opts)
    model_cpu.eval().inference_dtype = "float32"
    model_dev = copy.deepcopy(model_cpu).to(device)
    result = {"config": args.config, "opts": args.opts, "device": device, "env": environment()}
    result["params_m"] = sum(p.numel() for p in model_dev.parameters()) / 1e6
    result["equivalence"] = compare(model_cpu, model_dev, cfg, args.inputs)
    del model_cpu
    print(f"equivalence: {result['equivalence']}", flush=True)
    result["inference"] = [
        time_inference(model_dev, cfg, device, b, dtype, args.repeats)
        for dtype in ("float32", "auto") for b in args.batches
    ]
    print(f"inference: {result['inference']}", flush=True)
    amp = torch.bfloat16
    probes = [train_probe(model_dev, cfg, device, b, amp) for b in args.probe_batches]
    total = torch.cuda.get_device_properties(0).total_memory / 2**20 if device == "cuda" else None
    param_mib = sum(p.numel() * 4 for p in model_dev.parameters()) / 2**20
    batch = choose_batch(probes, param_mib, total, args.max_batch)
    rate = probes[-1]["batch"] / probes[-1]["seconds"]
    iters = max(args.min_iters, math.ceil(args.train_seconds * rate / batch))
    result["fit"] = {"probes": probes, "gpu_mib": total, "memory_fraction": MEMORY_FRACTION, "batch": batch,
                     "iters": iters, "train_seconds": args.train_seconds, "probe_images_per_s": rate}
    print(f"fit: {result['fit']}", flush=True)
    return result


def read_metrics(output_dir: str) -> list:
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [r for r in map(json.loads, f) if "total_loss" in r]


def stage_train(args) -> dict:
    import train_net

    out = os.path.abspath(args.train_output)
    opts = [
        "MODEL.WEIGHTS", "", "MODEL.TEXT_ENCODER.WEIGHTS", "", "MODEL.DEVICE", args.device,
        "DATASETS.TRAIN", "('synrrsis_train',)", "DATASETS.TEST", str(tuple(args.test)),
        "DATASETS.CHECK_AT_START", "False", "INPUT.IMAGE_SIZE", str(args.image_size),
        "SOLVER.IMS_PER_BATCH", str(args.batch), "SOLVER.MAX_ITER", str(args.iters),
        "SOLVER.CHECKPOINT_PERIOD", str(10 * args.iters), "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", args.dtype,
        "DATALOADER.NUM_WORKERS", str(args.workers), "SEED", "0", "OUTPUT_DIR", out, *args.opts,
    ]
    parsed = train_net.argument_parser().parse_args(["--config-file", args.config, *opts])
    reset_peak(args.device)
    start = time.perf_counter()
    results = train_net.main(parsed)
    wall = time.perf_counter() - start
    records = read_metrics(out)
    last = records[-1]
    result = {
        "dtype": args.dtype, "batch": args.batch, "iters": args.iters, "image_size": args.image_size,
        "wall_seconds": wall, "seconds_per_iter": last["time"], "data_seconds_per_iter": last["data_time"],
        "images_per_s": args.batch / last["time"], "peak_mib": peak_mib(args.device),
        "loss_first": records[0]["total_loss"], "loss_last": last["total_loss"],
        "loss_fell": last["total_loss"] < records[0]["total_loss"], "logged": [r["iteration"] for r in records],
        "eval": results or None,
    }
    for checkpoint in glob.glob(os.path.join(out, "*.pth")):  # GBs with the optimizer; the logs stay
        os.remove(checkpoint)
    print(f"train {args.dtype}: {result}", flush=True)
    return result


def environment() -> dict:
    import numpy
    import timm
    import transformers
    from PIL import Image

    from crobim_d2.modeling.ops import extension_info

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "timm": timm.__version__, "transformers": transformers.__version__, "numpy": numpy.__version__,
           "pillow": Image.__version__, "msda_extension": extension_info()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "memory_mib": props.total_memory / 2**20,
                      "multiprocessors": props.multi_processor_count}
    return env


def load(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def goals_met(report: dict) -> dict:
    """Each goal: True / False, or None where its stage has no result."""
    shares = [r["fwd_bwd_copy_share"] for r in (report["msda"] or {}).get("rows", []) if "fwd_bwd_copy_share" in r
              and r["impl"] == "kernel"]
    rates = [r["images_per_s"] for r in report["train"] if r["dtype"] == "bfloat16"]
    return {"msda_fwd_bwd_copy_share": max(shares) >= GOALS["msda_fwd_bwd_copy_share"] if shares else None,
            "train_bf16_images_per_s": rates[0] >= GOALS["train_bf16_images_per_s"] if rates else None}


def stage_report(args) -> dict:
    parts = args.parts
    stages = []
    if os.path.exists(os.path.join(parts, "stages.jsonl")):
        with open(os.path.join(parts, "stages.jsonl")) as f:
            stages = [json.loads(line) for line in f]
    report = {"msda": load(os.path.join(parts, "msda_gpu.json")), "model": load(os.path.join(parts, "model.json")),
              "train": [x for x in map(load, sorted(glob.glob(os.path.join(parts, "train_*.json")))) if x],
              "stages": stages, "goals": GOALS}
    print("\n## GPU check")
    print("| stage | exit | s |\n|---|---|---|")
    for s in report["stages"]:
        print(f"| {s['stage']} | {s['rc']} | {s['seconds']} |")
    msda = report["msda"]
    if msda:
        print(f"\nMSDA at MID's size, batch 32 (copy bandwidth {fmt(msda.get('copy_gbps'), '.0f')} GB/s):")
        print("| impl | dtype | fwd ms | fwd+bwd ms | GB/s fwd / fwd+bwd | share of copy fwd / fwd+bwd |")
        print("|---|---|---|---|---|---|")
        for r in msda["rows"]:
            if r["device"] == "cuda":
                share = (f"{100 * r['fwd_copy_share']:.0f}% / {100 * r['fwd_bwd_copy_share']:.0f}%"
                         if "fwd_copy_share" in r else "-")
                gbps = f"{r['fwd_gbps']:.0f} / {r['fwd_bwd_gbps']:.0f}" if "fwd_gbps" in r else "-"
                print(f"| {r['impl']} | {r['dtype']} | {r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | {gbps} | {share} |")
    model = report["model"]
    if model:
        e = model["equivalence"]
        print(f"\n{os.path.basename(model['config'])} ({model['params_m']:.1f} M parameters), GPU vs CPU float32 probabilities on "
              f"{e['inputs']} inputs: max |diff| {e['max_abs']:.2e}, mean {e['mean_abs']:.2e}, mask agreement "
              f">= {100 * e['mask_agreement']:.3f}% (tolerance {e['tolerance']:g}: {'passed' if e['passed'] else 'FAILED'})")
        print("| inference | batch | s/batch | images/s | peak MiB |\n|---|---|---|---|---|")
        for r in model["inference"]:
            print(f"| {r['dtype']} | {r['batch']} | {r['seconds']:.4f} | {r['images_per_s']:.1f} | {fmt(r['peak_mib'], '.0f')} |")
    if report["train"]:
        print("\n| training (train_net.py, AMP) | batch | iterations | s/iter (data) | images/s | peak MiB | loss first -> last |")
        print("|---|---|---|---|---|---|---|")
        for r in report["train"]:
            print(f"| {r['dtype']} | {r['batch']} | {r['iters']} | {r['seconds_per_iter']:.3f} "
                  f"({r['data_seconds_per_iter']:.3f}) | {r['images_per_s']:.1f} | {fmt(r['peak_mib'], '.0f')} | "
                  f"{r['loss_first']:.3f} -> {r['loss_last']:.3f} ({'fell' if r['loss_fell'] else 'DID NOT FALL'}) |")
    report["goals_met"] = goals_met(report)
    print(f"\ngoals {GOALS}: {report['goals_met']}")
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.output}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["check", "train", "report"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides (KEY VALUE ...)")
    parser.add_argument("--output", required=True, help="the stage's JSON")
    check = parser.add_argument_group("check")
    check.add_argument("--inputs", type=int, default=4, help="inputs of the GPU-vs-CPU comparison")
    check.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="inference batch sizes")
    check.add_argument("--repeats", type=int, default=10, help="timed inference runs (median)")
    check.add_argument("--probe-batches", type=int, nargs=2, default=[4, 8])
    check.add_argument("--max-batch", type=int, default=256)
    check.add_argument("--train-seconds", type=float, default=45.0, help="training time budget per dtype")
    check.add_argument("--min-iters", type=int, default=40, help="at least two logged windows of 20")
    train = parser.add_argument_group("train")
    train.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    train.add_argument("--batch", type=int, default=8)
    train.add_argument("--iters", type=int, default=40)
    train.add_argument("--image-size", type=int, default=480)
    train.add_argument("--workers", type=int, default=8)
    train.add_argument("--test", nargs="*", default=[], help="datasets evaluated at the end")
    train.add_argument("--train-output", default="output/gpu_check/train")
    report = parser.add_argument_group("report")
    report.add_argument("--parts", default="output/gpu_check", help="folder of the stages' JSON")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_model.py: no CUDA GPU is visible; use --device cpu for a dry run (tests/test_gpu_check.py).")
    result = {"check": stage_check, "train": stage_train, "report": stage_report}[args.stage](args)
    if args.stage != "report":
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

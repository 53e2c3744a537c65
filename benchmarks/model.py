"""CroBIM against its floor on the CPU at 480x480 with random weights (Swin-B and ConvNeXt-B configs).

The floor is what any model built on the same encoders must spend: the timm backbone alone
(``swin_base_patch4_window12_384`` at 480 / ``convnext_base``) plus BERT-base alone on the expression's
tokens. Each measurement times CroBIM and the floor interleaved, repeat after repeat, in one process, so that
both see the same CPU load; the ratio is the median of the per-repeat ratios. The issue's goals: inference
<= 1.25x the floor, a batch-2 training step (forward, loss, backward) <= 1.2x.

CroBIM's Swin-B / ConvNeXt-B run their linear layers through oneDNN where that is faster
(crobim_d2/modeling/layers/linear.py) and ConvNeXt's depthwise convolutions with a faster CPU backward
(layers/conv.py), which timm's do not. So each repeat also times the same timm backbone with those layers
("backbone on oneDNN"), and "ratio, same encoders" is CroBIM over that backbone plus BERT: what CroBIM's
heads cost on top of the encoders exactly as CroBIM runs them.

Modes (each in its own subprocess, so that its peak RSS is its own; "peak MiB" is the growth of the peak RSS
over the built models'):
  infer_float32 / infer_bfloat16     batch 1; bfloat16 = MODEL.CROBIM.INFERENCE_DTYPE, the floor under the same
                                     autocast (BERT runs in float32 in both, as CroBIM's text encoder does);
                                     also the share of CroBIM's time in backbone / text encoder / CAPM / LGFA / MID
  train_float32 / train_bfloat16     batch 2; bfloat16 = CPU autocast, as SOLVER.AMP.ENABLED does on the CPU
  infer_msda_pytorch                 infer_float32 with the grid_sample reference of the deformable attention
  train_no_malloc_reuse              train_float32 without CPU_MALLOC_REUSE (glibc's default allocator)
  infer_keep_denormals /             infer_float32 / train_float32 without flushing denormals (below)
  train_keep_denormals
  agreement                          mean IoU of bfloat16 vs float32 masks on smooth random images
The bfloat16 modes and agreement run by default only where the CPU has native bfloat16
(crobim_d2.precision.cpu_has_native_bf16). The table names the CPU capability; with ATEN_CPU_CAPABILITY /
ONEDNN_MAX_CPU_ISA / MKL_ENABLE_INSTRUCTIONS set (e.g. avx2 on an AVX-512 machine) it says "emulated".

Every mode but the keep_denormals ones flushes float32 denormals to zero in all of the worker's threads
(where torch can: x86; the table's last column says what each mode ran with). With
random weights timm's Swin has zero biases, so the tokens of its zero-padded windows (stages 3-4 at 480x480)
attend almost only to each other and their outputs come out denormal; x86 runs arithmetic on denormals
through microcode assists, many times slower, in the floor and in CroBIM alike. Pretrained weights (non-zero
value biases) do not produce them, so flushing makes random weights time what trained weights would.

    .venv/bin/python benchmarks/model.py                       # both configs, 2 threads
    .venv/bin/python benchmarks/model.py --configs swin_b --modes infer_float32 train_float32
    .venv/bin/python benchmarks/model.py --configs swin_b --opts MODEL.CROBIM.MID_FFN_DIM 256
"""

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "swin_b": "projects/CroBIM/configs/rrsisd/crobim_swin_b.yaml",
    "convnext_b": "projects/CroBIM/configs/rrsisd/crobim_convnext_b.yaml",
}
# The timm model of each config's backbone, for the floor.
FLOOR_BACKBONES = {
    "swin_b": ("swin_base_patch4_window12_384", {"img_size": 480}),
    "convnext_b": ("convnext_base", {}),
}
COMPONENTS = ("backbone", "text_encoder", "capm", "lgfa", "mid")
MODES = (
    "infer_float32",
    "infer_bfloat16",
    "train_float32",
    "train_bfloat16",
    "infer_msda_pytorch",
    "train_no_malloc_reuse",
    "infer_keep_denormals",
    "train_keep_denormals",
    "agreement",
)
DEFAULT_MODES = ("infer_float32", "infer_bfloat16", "train_float32", "train_bfloat16", "agreement")
BF16_MODES = ("infer_bfloat16", "train_bfloat16", "agreement")
EMULATION_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
GEMM_SIZE = 2048


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def flush_denormals() -> str:
    """Flush float32 denormals to zero in this thread and every intra-op thread.

    Returns "all threads", "unsupported" (torch cannot set it on this CPU: not x86 with SSE3) or "calling
    thread only" (the intra-op pool existed before: ``torch.set_flush_denormal`` sets the calling thread,
    and only threads created after it inherit its floating-point environment, so this must run before the
    first parallel operation).
    """
    import torch

    if not torch.set_flush_denormal(True):
        return "unsupported"
    # A denormal by its bit pattern (a float literal would already be flushed on conversion), over enough
    # elements for every thread of the pool to take a share: a thread that keeps denormals leaves them.
    denormals = torch.full((1 << 20,), 1 << 20, dtype=torch.int32).view(torch.float32)
    return "all threads" if bool((denormals * 1.0 == 0).all()) else "calling thread only"


def build(config: str, msda_impl: str = "auto", opts: list | tuple = ()):
    import torch
    from detectron2.modeling import build_model

    from crobim_d2.inference import load_inference_config

    opts = ["MODEL.TEXT_ENCODER.WEIGHTS", "", "MODEL.CROBIM.MSDA_IMPL", msda_impl, *opts]
    cfg = load_inference_config(config, opts, weights="", device="cpu")
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


class Floor:
    """The timm backbone and BERT-base alone: random images of CroBIM's input size and CroBIM's expression
    tokens; BERT in float32, as CroBIM's text encoder runs it."""

    def __init__(self, config: str, cfg, inputs: list):
        import timm
        import torch
        from transformers import BertConfig, BertModel

        from crobim_d2.modeling.layers import use_fast_depthwise, use_onednn_linears

        name, kwargs = FLOOR_BACKBONES[config]
        torch.manual_seed(1)
        self.backbone = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        self.backbone_onednn = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        self.backbone_onednn.load_state_dict(self.backbone.state_dict())
        use_onednn_linears(self.backbone_onednn)
        use_fast_depthwise(self.backbone_onednn)
        self.bert = BertModel(BertConfig(), add_pooling_layer=False)
        s = cfg.INPUT.IMAGE_SIZE
        self.images = torch.randn(len(inputs), 3, s, s)
        self.tokens = torch.stack([x["lang_tokens"] for x in inputs])
        self.mask = torch.stack([x["lang_mask"] for x in inputs])

    def train(self, mode: bool) -> None:
        self.backbone.train(mode)
        self.backbone_onednn.train(mode)
        self.bert.train(mode)

    def __call__(self, dtype, backward: bool) -> dict:
        """Seconds of the backbone, the backbone on oneDNN and BERT (forward, and backward of a mean when
        ``backward``)."""
        import torch

        seconds = {}
        for key, backbone in (("backbone", self.backbone), ("backbone_onednn", self.backbone_onednn)):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                features = backbone.forward_features(self.images)
            if backward:
                features.float().mean().backward()
                backbone.zero_grad(set_to_none=True)
            seconds[key] = time.perf_counter() - start
        start = time.perf_counter()
        hidden = self.bert(input_ids=self.tokens, attention_mask=self.mask).last_hidden_state
        if backward:
            hidden.mean().backward()
            self.bert.zero_grad(set_to_none=True)
        seconds["bert"] = time.perf_counter() - start
        return seconds


def interleaved(crobim_step, floor_step, repeats: int) -> dict:
    """Median seconds of CroBIM's step, the floor's parts and the floor (backbone + BERT), and the median
    per-repeat ratio; where the floor step also times ``backbone_onednn``, the same against that backbone
    plus BERT (``floor_onednn``, ``ratio_onednn``)."""
    rows, crobim_all = [], []
    for i in range(repeats + 1):  # the first round warms up (oneDNN kernels per shape, allocator)
        start = time.perf_counter()
        crobim_step()
        crobim_all.append(time.perf_counter() - start)
        floor = floor_step()
        if i:
            row = {"crobim": crobim_all[-1], **floor, "floor": floor["backbone"] + floor["bert"]}
            if "backbone_onednn" in floor:
                row["floor_onednn"] = floor["backbone_onednn"] + floor["bert"]
            rows.append(row)
    result = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    result["crobim_seconds_all_rounds"] = sum(crobim_all)
    for suffix in ("", "_onednn"):
        if "floor" + suffix in rows[0]:
            ratios = [r["crobim"] / r["floor" + suffix] for r in rows]
            result["ratio" + suffix] = statistics.median(ratios)
            result["ratios" + suffix] = ratios
    return result


def count_gflop(model, floor: Floor, inputs: list) -> dict:
    """Forward GFLOP (matrix products, convolutions, attention) of CroBIM and of the floor's parts: the ratio
    the measured one is up against at equal arithmetic efficiency."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    from crobim_d2.modeling.layers.linear import ONEDNN_LINEAR

    def cpu_flash_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def onednn_linear(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * math.prod(x_shape) * w_shape[0]

    # The counter has no formula for the CPU flash-attention kernel (Swin's windows, BERT, CroBIM's attention)
    # nor for oneDNN's linear op (CroBIM's encoders, layers/linear.py).
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash_attention}
    if ONEDNN_LINEAR:
        mapping[torch.ops.mkldnn._linear_pointwise] = onednn_linear
    counts = {}
    for name, fn in (("crobim", lambda: model(inputs)), ("backbone", lambda: floor.backbone.forward_features(
            floor.images)), ("bert", lambda: floor.bert(input_ids=floor.tokens, attention_mask=floor.mask))):
        counter = FlopCounterMode(display=False, custom_mapping=mapping)
        with counter:  # autograd on: the counter's module tracker fails under no_grad and inference_mode
            fn()
        counts[name] = counter.get_total_flops() / 1e9
    counts["ratio"] = counts["crobim"] / (counts["backbone"] + counts["bert"])
    return counts


def run_inference(model, cfg, config: str, dtype: str, repeats: int) -> dict:
    import torch

    model.eval()
    model.inference_dtype = dtype
    inputs = make_inputs(cfg, 1, seed=0)
    floor = Floor(config, cfg, inputs)
    floor.train(False)
    with torch.inference_mode():
        model(inputs)  # warm-up outside the component times
        totals = time_components(model)
        result = interleaved(lambda: model(inputs), lambda: floor(dtype, backward=False), repeats)
    total = result.pop("crobim_seconds_all_rounds")  # the rounds the hooks timed
    result["share"] = {k: v / total for k, v in totals.items()}
    result["share"]["other"] = 1.0 - sum(result["share"].values())  # pre/post-processing
    result["peak_rss_timed"] = peak_rss_mib()  # before the FLOP count, which keeps autograd's activations
    result["gflop"] = count_gflop(model, floor, inputs)
    return result


def run_train(model, cfg, config: str, dtype: str, repeats: int) -> dict:
    """Forward, loss and backward of a batch of 2; ``bfloat16``: under CPU autocast, as SOLVER.AMP does."""
    import torch

    model.train()
    inputs = make_inputs(cfg, 2, seed=1, train=True)
    floor = Floor(config, cfg, inputs)
    floor.train(True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            losses = model(inputs)
        sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)

    result = interleaved(step, lambda: floor(dtype, backward=True), repeats)
    del result["crobim_seconds_all_rounds"]
    return {"batch": 2, **result}


def measure_gemm(repeats: int = 5) -> dict:
    """GFLOP/s of a square matmul in float32 and bfloat16 at the worker's thread count (median of repeats).

    bfloat16 only where the CPU runs it natively (else None): emulated, the probe alone takes minutes."""
    import torch

    from crobim_d2.precision import cpu_has_native_bf16

    out = {"bfloat16": None}
    dtypes = (("float32", torch.float32), ("bfloat16", torch.bfloat16))
    for name, dtype in dtypes if cpu_has_native_bf16() else dtypes[:1]:
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

    model.eval()
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

    keep_denormals = args.mode.endswith("keep_denormals")
    torch.set_num_threads(args.threads)
    flushed = "kept" if keep_denormals else flush_denormals()
    if flushed == "calling thread only":
        raise SystemExit("denormals were flushed in the calling thread only: the intra-op pool already existed")
    from crobim_d2.engine import apply_cpu_malloc_reuse

    model, cfg = build(CONFIGS[args.config], "pytorch" if args.mode == "infer_msda_pytorch" else "auto", args.opts)
    malloc_reuse = args.mode != "train_no_malloc_reuse" and apply_cpu_malloc_reuse(cfg)
    dtype = "bfloat16" if args.mode.endswith("bfloat16") else "float32"
    built_rss = peak_rss_mib()
    result = {"config": args.config, "mode": args.mode, "dtype": dtype, "malloc_reuse": malloc_reuse,
              "denormals": flushed, "load_average_before": os.getloadavg()[0]}
    result["params_m"] = {k: sum(p.numel() for p in getattr(model, k).parameters()) / 1e6 for k in COMPONENTS}
    result["params_m"]["total"] = sum(p.numel() for p in model.parameters()) / 1e6
    if args.mode.startswith("infer"):
        result.update(run_inference(model, cfg, args.config, dtype, args.repeats))
    elif args.mode.startswith("train"):
        result.update(run_train(model, cfg, args.config, dtype, args.train_repeats))
    else:
        result.update(run_agreement(model, cfg, args.num_agreement))
    result["peak_mib"] = result.pop("peak_rss_timed", peak_rss_mib()) - built_rss
    result["gemm_gflops"] = measure_gemm()  # the CPU's speed right after the measurement
    result["load_average_after"] = os.getloadavg()[0]
    return result


def spawn(args, config: str, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--config", config, "--mode", mode]
    cmd += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    cmd += ["--train-repeats", str(args.train_repeats), "--num-agreement", str(args.num_agreement)]
    cmd += ["--opts", *args.opts]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cpu_line(threads: int) -> str:
    from crobim_d2.precision import describe_cpu

    emulated = [f"{k}={os.environ[k]}" for k in EMULATION_VARIABLES if os.environ.get(k)]
    note = f" (emulated: {' '.join(emulated)})" if emulated else ""
    return f"{describe_cpu()}{note}, {threads} threads"


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def print_table(results: dict, cpu: str) -> None:
    print(f"CPU: {cpu}")
    goals = {"infer": 1.25, "train": 1.2}
    rows = [(name, mode, x) for name, r in results.items() for mode, x in r.items() if "ratio" in x]
    if rows:  # not for an agreement-only run
        print("| config | measurement | CroBIM s | backbone alone s | BERT alone s | floor s | ratio (goal) | "
              "per-repeat ratios | backbone on oneDNN s | ratio, same encoders | "
              "FLOP ratio | peak MiB | load avg | GEMM GFLOP/s fp32 / bf16 | denormals |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, mode, x in rows:
        goal = goals[mode.split("_")[0]]
        gemm = " / ".join(fmt(x["gemm_gflops"][k], 0) for k in ("float32", "bfloat16"))
        load = f"{x['load_average_before']:.1f}-{x['load_average_after']:.1f}"
        spread = f"{fmt(min(x['ratios']))}-{fmt(max(x['ratios']))}"
        print(f"| {name} | {mode} | {fmt(x['crobim'])} | {fmt(x['backbone'])} | {fmt(x['bert'])} | "
              f"{fmt(x['floor'])} | {fmt(x['ratio'])} ({goal}) | {spread} | {fmt(x.get('backbone_onednn'))} | "
              f"{fmt(x.get('ratio_onednn'))} | {fmt(x.get('gflop', {}).get('ratio'), 3)} | "
              f"{fmt(x['peak_mib'], 0)} | {load} | {gemm} | {x.get('denormals', '-')} |")
    shares = [(n, m, x["share"]) for n, r in results.items() for m, x in r.items() if "share" in x]
    if shares:
        print("\n| config | inference | " + " | ".join(COMPONENTS) + " | other |")
        print("|---|---|" + "---|" * (len(COMPONENTS) + 1))
        for name, mode, share in shares:
            cells = " | ".join(f"{100 * share[k]:.0f}%" for k in (*COMPONENTS, "other"))
            print(f"| {name} | {mode} | {cells} |")
    for name, r in results.items():
        if "agreement" in r:
            a = r["agreement"]
            print(f"{name}: bfloat16 vs float32 masks, mean IoU {a['mean_iou']:.4f} (min {a['min_iou']:.3f}) "
                  f"over {a['num_inputs']} inputs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--modes", nargs="+", choices=list(MODES),
                        help=f"default: {' '.join(DEFAULT_MODES)}, without {' '.join(BF16_MODES)} on a CPU "
                        "without native bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed inference rounds after one warm-up")
    parser.add_argument("--train-repeats", type=int, default=3, help="timed training rounds after one warm-up")
    parser.add_argument("--num-agreement", type=int, default=200, help="inputs for the bf16/fp32 mask IoU")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="config overrides for CroBIM (not the floor), e.g. MODEL.CROBIM.MID_FFN_DIM 256")
    parser.add_argument("--output", default="output/benchmarks/model.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if len(args.opts) % 2:
        parser.error(f"--opts takes KEY VALUE pairs, got {len(args.opts)} words: {' '.join(args.opts)}")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    from crobim_d2.precision import cpu_has_native_bf16

    if args.modes is None:
        native = cpu_has_native_bf16()
        args.modes = [m for m in DEFAULT_MODES if native or m not in BF16_MODES]
    results = {}
    for config in args.configs:
        results[config] = {}
        for mode in args.modes:
            start = time.perf_counter()
            results[config][mode] = spawn(args, config, mode)
            print(f"# {config} {mode}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    cpu = cpu_line(args.threads)
    if args.opts:
        print(f"CroBIM config overrides: {' '.join(args.opts)}")
    print_table(results, cpu)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    settings = {k: getattr(args, k) for k in ("threads", "repeats", "train_repeats", "num_agreement", "opts")}
    settings.update(cpu_count=os.cpu_count(), cpu=cpu)
    from crobim_d2.modeling import ops

    settings["msda_extension"] = ops.extension_info()
    with open(args.output, "w") as f:
        json.dump({"settings": settings, "results": results}, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

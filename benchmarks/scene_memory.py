"""Peak memory of crobim-predict on large GeoTIFF scenes (whole-scene and tiled mode), with the model.

Writes an N x N 3-band uint8 GeoTIFF per size (window by window, cached under output/benchmarks/scenes/),
then runs ``crobim-predict`` on it in a fresh process per (size, mode) and reads that process's peak RSS
(``wait4``'s ``ru_maxrss``). A 64 x 64 scene comes first: its peak is the model's, and what the larger scenes
need above it is the scene's. Memory is the measurement; wall times are reported but mean little on a shared
CPU.

    .venv/bin/python benchmarks/scene_memory.py                        # 3000 and 20000 px, tiny demo model
    .venv/bin/python benchmarks/scene_memory.py --sizes 20000 --modes whole --config-file C.yaml --weights W.pth

Without ``--weights`` the demo config (projects/CroBIM/configs/synrrsis/crobim_tiny.yaml) runs with random
weights: memory does not depend on what the weights are. Prints a table and writes
output/benchmarks/scene_memory.json.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "projects", "CroBIM", "configs", "synrrsis", "crobim_tiny.yaml")
MODES = {
    "whole": ["--save-prob"],
    "tiled": ["--save-prob", "--tile-size", "2048", "--tile-overlap", "256"],
}
BLOCK = 512
BASELINE = 64  # px: the model with (almost) no scene


def write_scene(path: str, size: int) -> None:
    """Smooth background with red squares every 1000 px (something to find), written block by block."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff",
        "count": 3,
        "height": size,
        "width": size,
        "dtype": "uint8",
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "deflate",
        "crs": "EPSG:32633",
        "transform": from_origin(500000.0, 4600000.0, 0.5, 0.5),
        "BIGTIFF": "IF_SAFER",
    }
    tmp = f"{path}.partial.tif"
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, size, BLOCK):
            for c in range(0, size, BLOCK):
                h, w = min(BLOCK, size - r), min(BLOCK, size - c)
                y, x = np.mgrid[r : r + h, c : c + w].astype(np.float32)
                base = 110 + 50 * np.sin(x / 700) * np.cos(y / 900)
                square = ((x % 1000) < 200) & ((y % 1000) < 200)
                bands = np.stack([np.where(square, 230, base), np.where(square, 40, base), base * 0.9])
                dst.write(bands.astype(np.uint8), window=Window(c, r, w, h))
    os.replace(tmp, path)


def measure(command: list[str]) -> dict:
    """Run ``command``; its exit code, wall time and peak RSS (MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    return {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def random_weights(config: str, opts: list[str], folder: str) -> str:
    """A checkpoint of the config's model with random weights (built in a child process, kept per config)."""
    key = hashlib.sha1(json.dumps([os.path.abspath(config), opts]).encode()).hexdigest()[:10]
    path = os.path.join(folder, f"random_{key}.pth")
    if not os.path.isfile(path):
        code = (
            "import os, sys, torch\nfrom detectron2.checkpoint import DetectionCheckpointer\n"
            "from detectron2.modeling import build_model\nfrom crobim_d2.inference import load_inference_config\n"
            "torch.manual_seed(0)\n"
            "cfg = load_inference_config(sys.argv[1], sys.argv[3:], weights='', device='cpu')\n"
            "model = build_model(cfg)\n"
            "DetectionCheckpointer(model, save_dir=os.path.dirname(sys.argv[2])).save(os.path.basename(sys.argv[2])[:-4])\n"
        )
        subprocess.run([sys.executable, "-c", code, config, path, *opts], check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3000, 20000])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--config-file", default=DEMO_CONFIG)
    parser.add_argument("--weights", help="checkpoint (default: random weights for the config)")
    parser.add_argument(
        "--threshold",
        default="0.8",
        help="crobim-predict's --threshold (default 0.8: random weights spread the probabilities around it, so "
        "the mask has many polygons to trace)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    parser.add_argument("--output", default=os.path.join(REPO, "output", "benchmarks", "scene_memory.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    folder = os.path.join(os.path.dirname(args.output), "scenes")
    os.makedirs(folder, exist_ok=True)
    weights = args.weights or random_weights(args.config_file, args.opts, folder)
    model = ["--config-file", args.config_file, "--weights", weights]
    opts = ["--opts", "MODEL.DEVICE", "cpu", *args.opts]

    rows = []
    for size in [BASELINE, *args.sizes]:
        scene = os.path.join(folder, f"scene_{size}.tif")
        if not os.path.isfile(scene):
            write_scene(scene, size)
        for mode in ["whole"] if size == BASELINE else args.modes:
            out = os.path.join(folder, f"out_{size}_{mode}")
            command = [sys.executable, "-m", "crobim_d2.geo.cli", *model, "--input", scene, "--quiet"]
            command += ["--expression", "the red squares", "--output-dir", out, "--threshold", args.threshold]
            command += [*MODES[mode], *opts]
            rows.append({"size": size, "mode": mode, **measure(command)})
            with open(os.path.join(out, "predictions.jsonl")) as f:
                record = json.loads(f.readline())
            rows[-1].update(polygons=record["polygons"], mask_pixels=record["mask_pixels"])
            print(f"# {size} {mode}: {rows[-1]}", file=sys.stderr)

    from crobim_d2.precision import describe_cpu

    cpu = describe_cpu()
    print(f"CPU: {cpu}; config {os.path.relpath(args.config_file, REPO)}; {args.threads} threads")
    print("| scene (px) | mode | peak RSS (MiB) | wall (s) | polygons |")
    print("|---|---|---|---|---|")
    for row in rows:
        size, mode = f"{row['size']} x {row['size']}", row["mode"]
        print(f"| {size} | {mode} | {row['peak_rss_mib']:.0f} | {row['wall_s']:.1f} | {row['polygons']} |")
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    settings = {"cpu": cpu, "config": args.config_file, "weights": args.weights or "random"}
    settings.update(threads=args.threads, threshold=args.threshold, opts=args.opts)
    with open(args.output, "w") as f:
        json.dump({"settings": settings, "results": rows}, f, indent=1)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()

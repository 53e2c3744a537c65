"""The prepared GPU check (benchmarks/gpu_check.sh) up to its first CUDA call: it stops at once without a GPU,
`make gpu-bundle` produces the wheels and detectron2 source it needs, and its model stages run on the CPU with
a tiny model while importing only what the GPU machine has or the bundle brings."""
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BENCH = os.path.join(ROOT, "benchmarks")
TINY = [
    "MODEL.SWIN.DEPTHS", "[1,1,1,1]", "MODEL.SWIN.EMBED_DIM", "32", "MODEL.SWIN.NUM_HEADS", "[1,2,4,8]",
    "MODEL.TEXT_ENCODER.NUM_LAYERS", "1", "MODEL.TEXT_ENCODER.HIDDEN_SIZE", "32", "MODEL.TEXT_ENCODER.NUM_HEADS", "2",
    "MODEL.TEXT_ENCODER.INTERMEDIATE_SIZE", "64", "MODEL.CROBIM.HIDDEN_DIM", "32", "MODEL.CROBIM.MID_FFN_DIM", "32",
    "MODEL.CROBIM.ADC_TOPK", "4",
]
requires_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")


def names(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def pins() -> dict:
    pairs = (p.split("==") for p in names(os.path.join(BENCH, "gpu_bundle.txt")))
    return {canonicalize_name(n): v for n, v in pairs}


@requires_no_gpu
@pytest.mark.parametrize("script", ["gpu_check.sh", "msda_gpu.sh"])
def test_stops_at_once_without_gpu(script, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"), GPU_CHECK_WORK=str(tmp_path / "work"))
    start = time.perf_counter()
    done = subprocess.run(["bash", os.path.join(BENCH, script)], env=env, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no CUDA GPU is visible" in done.stderr and "projects/CroBIM/README.md" in done.stderr
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()  # nothing built or written


def wheel_runs_on_device(filename: str) -> bool:
    """A wheel for CPython 3.12 on x86-64 Linux: pure, cp312, or an abi3 wheel of an older CPython 3."""
    _, _, _, tags = parse_wheel_filename(filename)
    for tag in tags:
        py_ok = tag.interpreter in ("py3", "cp312") or (
            tag.abi == "abi3" and re.fullmatch(r"cp3\d+", tag.interpreter) and int(tag.interpreter[3:]) <= 12
        )
        platform_ok = tag.platform == "any" or (tag.platform.startswith("manylinux") and tag.platform.endswith("x86_64"))
        if py_ok and tag.abi in ("none", "abi3", "cp312") and platform_ok:
            return True
    return False


@pytest.mark.slow
def test_make_gpu_bundle(tmp_path):
    bundle = tmp_path / "bundle"
    cmd = ["make", "-C", ROOT, "gpu-bundle", f"GPU_BUNDLE={bundle}", f"PYTHON={sys.executable}"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    wheels = sorted(os.listdir(bundle / "wheels"))
    found = {canonicalize_name(parse_wheel_filename(w)[0]): str(parse_wheel_filename(w)[1]) for w in wheels}
    assert len(found) == len(wheels)  # one version of each
    assert found == pins()
    assert all(wheel_runs_on_device(w) for w in wheels), wheels
    src = bundle / "pb1-detectron2-0.6"
    setup_py = (src / "setup.py").read_text()
    assert "panopticapi @" not in setup_py
    assert "PYBIND11_MODULE" in (src / "detectron2" / "layers" / "csrc" / "vision.cpp").read_text()
    assert "Image.LINEAR" not in (src / "detectron2" / "data" / "transforms" / "transform.py").read_text()
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
    assert size < 16 * 2**20  # of the 64 MiB that travel with the working tree
    assert not (tmp_path / "bundle.partial").exists()


def imported_distributions(importtime: str) -> set:
    """Distributions of the modules imported by our code and the bundle's packages (``-X importtime``): modules
    imported at top level (scripts, lazy imports at run time) or by a module of ours or of a bundled package.
    The GPU machine has its own versions of the other packages, with their own dependencies."""
    ours = {"crobim_d2", "detectron2", "gpu_model", "model", "train_net"}
    top_to_dist = importlib.metadata.packages_distributions()
    ours |= {top for top, dists in top_to_dist.items() if any(canonicalize_name(d) in pins() for d in dists)}
    lines = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|( +)(\S+)$", importtime, flags=re.MULTILINE)
    wanted, parents = set(), []  # a module's children are listed before it, one level deeper
    for indent, name in reversed(lines):
        depth = (len(indent) - 1) // 2
        del parents[depth:]
        parent = parents[-1] if parents else None
        if parent is None or parent.split(".")[0] in ours:
            wanted |= {canonicalize_name(d) for d in top_to_dist.get(name.split(".")[0], [])}
        parents.append(name)
    return wanted


@pytest.mark.slow
def test_model_stages_dry_run_on_cpu(tmp_path):
    """gpu_model.py check and train with --device cpu and a tiny Swin CroBIM: the code that runs after the
    GPU check, and the packages it imports."""
    from crobim_d2.data.synrrsis import SynRRSISParams, generate_synrrsis

    root = tmp_path / "datasets"
    generate_synrrsis(str(root), SynRRSISParams(image_size=64, num_train=4, num_val=1, num_test=1))
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), PYTHONPATH=ROOT)
    common = [sys.executable, "-X", "importtime", os.path.join(BENCH, "gpu_model.py")]
    check = [*common, "check", "--device", "cpu", "--opts", *TINY, "INPUT.IMAGE_SIZE", "64", "--inputs", "1",
             "--batches", "1", "2", "--repeats", "1", "--probe-batches", "1", "2", "--max-batch", "2",
             "--train-seconds", "1", "--min-iters", "21", "--output", str(tmp_path / "model.json")]
    train = [*common, "train", "--device", "cpu", "--opts", *TINY, "--batch", "2", "--iters", "21",
             "--image-size", "64", "--workers", "0", "--test", "synrrsis_val", "--dtype", "bfloat16",
             "--train-output", str(tmp_path / "train"), "--output", str(tmp_path / "train_bfloat16.json")]
    stderr = ""
    for cmd in (check, train):
        done = subprocess.run(cmd, cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        stderr += done.stderr
    model = json.loads((tmp_path / "model.json").read_text())
    assert model["equivalence"]["passed"] and model["equivalence"]["max_abs"] == 0.0  # the same CPU twice
    assert [r["batch"] for r in model["inference"]] == [1, 2, 1, 2]
    assert all(r["images_per_s"] > 0 for r in model["inference"])
    assert model["fit"]["batch"] == 2 and model["fit"]["iters"] >= 21
    trained = json.loads((tmp_path / "train_bfloat16.json").read_text())
    assert trained["logged"] == [19, 20] and trained["images_per_s"] > 0
    assert torch.isfinite(torch.tensor([trained["loss_first"], trained["loss_last"]])).all()
    assert "oIoU" in trained["eval"]["rrsis"] and not list((tmp_path / "train").glob("*.pth"))
    report = [sys.executable, os.path.join(BENCH, "gpu_model.py"), "report", "--device", "cpu", "--parts",
              str(tmp_path), "--output", str(tmp_path / "gpu_check.json")]
    done = subprocess.run(report, cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "| bfloat16 | 2 | 21 |" in done.stdout, done.stdout + done.stderr
    device = {canonicalize_name(n) for n in names(os.path.join(BENCH, "gpu_device_packages.txt"))}
    missing = imported_distributions(stderr) - device - set(pins()) - {"crobim-d2", "pb1-detectron2"}
    assert not missing, f"imported on the GPU check's path, but neither on the GPU machine nor in the bundle: {missing}"

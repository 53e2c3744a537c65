"""``crobim-predict``: referring segmentation of PNG/JPEG/TIFF/GeoTIFF scenes into georeferenced masks and
polygons.

Examples::

    crobim-predict --config-file C.yaml --weights model_final.pth --input scene.tif \\
        --expression "the large lake in the north" --output-dir out/
    crobim-predict --config-file C.yaml --weights model_final.pth --jobs jobs.jsonl --output-dir out/

Each (image, expression) pair is written as ``<name>_mask.tif``, ``<name>_mask.png``,
``<name>_overlay.png`` and ``<name>.geojson`` (``<name>_prob.tif`` with ``--save-prob``), where ``<name>`` is
the image's file stem, "_", and a slug of the expression (lowercase ASCII words joined by "-", at most 40
characters), e.g. ``scene_the-large-lake-in-the-north``; a JSONL line may set its own ``"name"``, and a
repeated name gets "_2", "_3", .... ``predictions.jsonl`` in the output folder lists every result with its
score.
"""

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .raster import GeoInputError, check_raster, parse_bands, parse_percentiles, read_scene
from .writer import write_prediction

PredictFn = Callable[[np.ndarray, str], np.ndarray]
SLUG_MAX_CHARS = 40


@dataclass
class Job:
    image: str
    expression: str
    name: str


def slugify(expression: str) -> str:
    """Lowercase ASCII words of ``expression`` joined by "-", cut to at most 40 characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", expression.lower()).strip("-")
    return slug[:SLUG_MAX_CHARS].rstrip("-") or "expression"


def _unique(name: str, used: set[str]) -> str:
    candidate, k = name, 1
    while candidate in used:
        k += 1
        candidate = f"{name}_{k}"
    used.add(candidate)
    return candidate


def _check_expression(expression, where: str) -> str:
    if not isinstance(expression, str) or not expression.strip():
        raise GeoInputError(
            f'Empty expression {where}; describe the object to segment, e.g. "the lake in the north"'
        )
    return expression.strip()


def jobs_from_args(images: Sequence[str], expressions: Sequence[str]) -> list[Job]:
    """One job per (image, expression), images in order, each image's expressions together."""
    used: set[str] = set()
    expressions = [_check_expression(e, "in --expression") for e in expressions]
    return [
        Job(img, e, _unique(f"{os.path.splitext(os.path.basename(img))[0]}_{slugify(e)}", used))
        for img in images
        for e in expressions
    ]


def jobs_from_jsonl(path: str) -> list[Job]:
    """Read ``{"image": ..., "expression": ...[, "name": ...]}`` lines.

    Relative image paths resolve against the JSONL file's folder.
    """
    if not os.path.isfile(path):
        raise GeoInputError(f"Jobs file not found: {path}; --jobs takes a JSON Lines file")
    root = os.path.dirname(os.path.abspath(path))
    jobs, used = [], set()
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise GeoInputError(
                    f"{where} is not valid JSON ({e}); write one JSON object per line"
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("image"), str):
                raise GeoInputError(
                    f'{where} needs an "image" path, e.g. {{"image": "a.tif", "expression": "..."}}'
                )
            expression = _check_expression(record.get("expression"), f"at {where}")
            image = os.path.join(root, os.path.expanduser(record["image"]))
            stem = os.path.splitext(os.path.basename(image))[0]
            jobs.append(
                Job(image, expression, _unique(record.get("name") or f"{stem}_{slugify(expression)}", used))
            )
    if not jobs:
        raise GeoInputError(f'{path} holds no jobs; write one {{"image": ..., "expression": ...}} per line')
    return jobs


def run_jobs(
    jobs: Sequence[Job],
    predict: PredictFn,
    output_dir: str,
    bands: Sequence[int] | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
    threshold: float = 0.5,
    min_area_px: float = 0.0,
    save_prob: bool = False,
) -> list[dict]:
    """Predict every job with ``predict(rgb uint8 (H,W,3), expression) -> probability (H,W)``; write its
    outputs.

    The whole scene goes to ``predict`` (which resizes it to the model input and back), so spatial words refer
    to the whole scene. Consecutive jobs on the same image read it once.
    """
    os.makedirs(output_dir, exist_ok=True)
    records, scene = [], None
    with open(os.path.join(output_dir, "predictions.jsonl"), "w") as log:
        for job in tqdm(jobs, desc="crobim-predict", unit="job", disable=None):
            if scene is None or scene.path != job.image:
                scene = read_scene(job.image, bands, percentiles)
            prob = np.asarray(predict(scene.rgb, job.expression), dtype=np.float32)
            record = write_prediction(
                scene, prob, job.expression, output_dir, job.name, threshold, min_area_px, save_prob
            )
            log.write(json.dumps(record) + "\n")
            records.append(record)
    return records


def build_predictor(config_file: str, weights: str, opts: Sequence[str], device: str | None) -> PredictFn:
    """A :class:`crobim_d2.RRSISPredictor` for the config, checkpoint and overrides."""
    import torch
    from detectron2.config import get_cfg

    from crobim_d2 import RRSISPredictor, add_crobim_config
    from crobim_d2.checkpoint import CheckpointError

    cfg = get_cfg()
    add_crobim_config(cfg)
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise GeoInputError(
            f"Cannot use config {config_file} with --opts {list(opts)} ({e}); give a CroBIM config "
            "(projects/CroBIM/configs/) and existing keys"
        ) from None
    cfg.MODEL.WEIGHTS = weights
    if device is not None:
        cfg.MODEL.DEVICE = device
    elif "MODEL.DEVICE" not in opts[::2]:
        cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.freeze()
    try:
        return RRSISPredictor(cfg)
    except CheckpointError as e:
        raise GeoInputError(f"--weights: {e}") from None


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crobim-predict",
        description="Segment the object a referring expression describes in PNG/JPEG/TIFF/GeoTIFF scenes; "
        "write georeferenced masks (GeoTIFF), previews (PNG) and polygons (GeoJSON).",
    )
    p.add_argument("--config-file", required=True, help="CroBIM config YAML the checkpoint was trained with")
    p.add_argument("--weights", required=True, help="trained CroBIM checkpoint (.pth)")
    p.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="load a --weights that does not match the config, keeping only the matching parameters "
        "(the others stay random; by default a mismatch is an error)",
    )
    p.add_argument("--input", nargs="+", help="one or more rasters (PNG, JPEG, TIFF, GeoTIFF)")
    p.add_argument("--expression", action="append", help="referring expression; repeat for several per image")
    p.add_argument(
        "--jobs",
        help='JSON Lines file, one {"image": ..., "expression": ...} per line (instead of '
        "--input/--expression); relative image paths resolve against the file's folder",
    )
    p.add_argument("--output-dir", required=True, help="folder for the outputs (created if missing)")
    p.add_argument(
        "--bands", help="1-based bands to use as R,G,B, e.g. 3,2,1 (default 1,2,3, or 1 as grayscale)"
    )
    p.add_argument(
        "--stretch-percentiles",
        default="2,98",
        help="per-band percentiles mapped to 0 and 255 for non-8-bit rasters (default 2,98)",
    )
    p.add_argument(
        "--threshold", type=float, default=0.5, help="probability above which a pixel is the object"
    )
    p.add_argument(
        "--min-area",
        type=float,
        default=16.0,
        help="drop mask polygons smaller than this many pixels, from the GeoJSON and the masks (default 16)",
    )
    p.add_argument(
        "--save-prob", action="store_true", help="also write <name>_prob.tif (float32 probability)"
    )
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ... (last)"
    )
    return p


def _prepare(args: argparse.Namespace) -> tuple[list[Job], tuple[int, ...] | None, tuple[float, float]]:
    """Check every input before the model is loaded."""
    for path, flag, fix in (
        (args.config_file, "--config-file", "the CroBIM YAML config, e.g. projects/CroBIM/configs/..."),
        (args.weights, "--weights", "the trained checkpoint, e.g. output/.../model_final.pth"),
    ):
        if not os.path.isfile(path):
            raise GeoInputError(f"{flag} file not found: {path}; give {fix}")
    if not 0.0 <= args.threshold < 1.0:
        raise GeoInputError(f"--threshold {args.threshold} must be in [0, 1), e.g. 0.5")
    if args.min_area < 0:
        raise GeoInputError(f"--min-area {args.min_area} must be >= 0 (pixels); 0 keeps every polygon")
    if len(args.opts) % 2:
        raise GeoInputError(f"--opts needs KEY VALUE pairs, got {args.opts}")
    if args.jobs:
        if args.input or args.expression:
            raise GeoInputError("--jobs replaces --input/--expression; give one or the other")
        jobs = jobs_from_jsonl(args.jobs)
    elif args.input and args.expression:
        jobs = jobs_from_args(args.input, args.expression)
    else:
        raise GeoInputError("give --input and --expression, or --jobs")
    bands = parse_bands(args.bands)
    percentiles = parse_percentiles(args.stretch_percentiles)
    for image in dict.fromkeys(job.image for job in jobs):
        check_raster(image, bands)
    return jobs, bands, percentiles


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        jobs, bands, percentiles = _prepare(args)
        partial = ["MODEL.ALLOW_PARTIAL_WEIGHTS", "True"] if args.allow_partial_weights else []
        predict = build_predictor(args.config_file, args.weights, [*args.opts, *partial], args.device)
        records = run_jobs(
            jobs, predict, args.output_dir, bands, percentiles, args.threshold, args.min_area, args.save_prob
        )
    except GeoInputError as e:
        parser.error(str(e))
    print(
        f"Wrote {len(records)} prediction(s) to {args.output_dir} (list: predictions.jsonl)", file=sys.stderr
    )
    return 0

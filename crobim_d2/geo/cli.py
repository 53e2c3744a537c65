"""``crobim-predict``: referring segmentation of PNG/JPEG/TIFF/GeoTIFF scenes into georeferenced masks and
polygons.

Examples::

    crobim-predict --config-file C.yaml --weights model_final.pth --input scene.tif \\
        --expression "the large lake in the north" --output-dir out/
    crobim-predict --config-file C.yaml --weights model_final.pth --input scenes/ --tile-size 1024 \\
        --tile-overlap 128 --expression "the storage tanks" --vector-format gpkg --output-dir out/
    crobim-predict --config-file C.yaml --weights model_final.pth --jobs jobs.jsonl --output-dir out/

Each (image, expression) pair is written as ``<name>_mask.tif``, ``<name>_mask.png``,
``<name>_overlay.png`` and ``<name>.geojson`` or ``<name>.gpkg`` (``<name>_prob.tif`` with ``--save-prob``),
where ``<name>`` is the image's file stem, "_", and a slug of the expression (lowercase ASCII words joined by
"-", at most 40 characters), e.g. ``scene_the-large-lake-in-the-north``; a JSONL line may set its own
``"name"``, and a repeated name gets "_2", "_3", .... ``predictions.jsonl`` in the output folder lists every
result with its score, and every input that failed with the reason; the exit code is 1 if any failed.
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from ..inference import ConfigError
from .options import DEFAULT_OPTIONS, VECTOR_FORMATS, PredictOptions
from .pipeline import check_expression, default_name, predict_scene
from .probability import ScenePredictor
from .raster import GeoInputError, check_raster, list_rasters, parse_bands, parse_percentiles


@dataclass
class Job:
    image: str
    expression: str
    name: str


def _unique(name: str, used: set[str]) -> str:
    candidate, k = name, 1
    while candidate in used:
        k += 1
        candidate = f"{name}_{k}"
    used.add(candidate)
    return candidate


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """``--input`` paths with every folder replaced by the rasters directly inside it, sorted."""
    return [p for path in inputs for p in (list_rasters(path) if os.path.isdir(path) else [path])]


def jobs_from_args(images: Sequence[str], expressions: Sequence[str]) -> list[Job]:
    """One job per (image, expression), images in order, each image's expressions together."""
    used: set[str] = set()
    expressions = [check_expression(e, " in --expression") for e in expressions]
    return [
        Job(img, e, _unique(default_name(img, e), used)) for img in expand_inputs(images) for e in expressions
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
            expression = check_expression(record.get("expression"), f" at {where}")
            image = os.path.join(root, os.path.expanduser(record["image"]))
            jobs.append(
                Job(image, expression, _unique(record.get("name") or default_name(image, expression), used))
            )
    if not jobs:
        raise GeoInputError(f'{path} holds no jobs; write one {{"image": ..., "expression": ...}} per line')
    return jobs


def run_jobs(
    jobs: Sequence[Job],
    predictor: ScenePredictor,
    output_dir: str,
    options: PredictOptions = DEFAULT_OPTIONS,
    quiet: bool = False,
) -> list[dict]:
    """Predict every job with :func:`predict_scene` and list it in ``predictions.jsonl``.

    A job whose input cannot be read (or used) is recorded with its ``error`` and the others still run.
    """
    os.makedirs(output_dir, exist_ok=True)
    records = []
    with open(os.path.join(output_dir, "predictions.jsonl"), "w") as log:
        for job in tqdm(jobs, desc="crobim-predict", unit="job", disable=True if quiet else None):
            try:
                record = predict_scene(predictor, job.image, job.expression, output_dir, job.name, options)
            except GeoInputError as e:
                record = {"image": job.image, "expression": job.expression, "name": job.name, "error": str(e)}
                tqdm.write(f"crobim-predict: failed: {e}", file=sys.stderr)
            log.write(json.dumps(record) + "\n")
            log.flush()
            records.append(record)
    return records


def build_predictor(
    config_file: str, weights: str, opts: Sequence[str], device: str | None
) -> ScenePredictor:
    """A :class:`crobim_d2.RRSISPredictor` for the config, checkpoint and overrides, with the process-wide
    settings of an entry point applied (``CPU_MALLOC_REUSE``)."""
    from crobim_d2 import RRSISPredictor
    from crobim_d2.checkpoint import CheckpointError
    from crobim_d2.engine import apply_cpu_malloc_reuse
    from crobim_d2.inference import load_inference_config

    cfg = load_inference_config(config_file, opts, weights=weights, device=device)
    apply_cpu_malloc_reuse(cfg)
    try:
        return RRSISPredictor(cfg)
    except CheckpointError as e:
        raise GeoInputError(f"--weights: {e}") from None


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--config-file``, ``--weights``, ``--allow-partial-weights`` (crobim-predict's and crobim-serve's)."""
    p.add_argument("--config-file", required=True, help="CroBIM config YAML the checkpoint was trained with")
    p.add_argument("--weights", required=True, help="trained CroBIM checkpoint (.pth)")
    p.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="load a --weights that does not match the config, keeping only the matching parameters "
        "(the others stay random; by default a mismatch is an error)",
    )


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crobim-predict",
        description="Segment the object a referring expression describes in PNG/JPEG/TIFF/GeoTIFF scenes; "
        "write georeferenced masks (GeoTIFF), previews (PNG) and polygons (GeoJSON or GeoPackage).",
    )
    add_model_arguments(p)
    p.add_argument(
        "--input",
        nargs="+",
        help="rasters (PNG, JPEG, TIFF, GeoTIFF) or folders (every raster inside, sorted)",
    )
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
        "--min-area-px",
        type=float,
        default=16.0,
        help="drop mask polygons of fewer pixels than this, from the vectors and the masks (default 16)",
    )
    p.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        help="drop mask polygons smaller than this area in CRS units^2 (e.g. m^2; pixels without a CRS), "
        "from the vectors and the masks (default 0: off)",
    )
    p.add_argument(
        "--simplify",
        type=float,
        default=0.0,
        help="simplify the polygons with this tolerance in CRS units, keeping each valid (default 0: off)",
    )
    p.add_argument("--vector-format", choices=VECTOR_FORMATS, default="geojson", help="polygon file format")
    p.add_argument(
        "--save-prob", action="store_true", help="also write <name>_prob.tif (float32 probability)"
    )
    p.add_argument(
        "--tile-size",
        type=int,
        help="tiled mode: run the expression on windows of this many input pixels, each at the model's input "
        "size, blended where they overlap (default: the whole scene at once)",
    )
    p.add_argument(
        "--tile-overlap", type=int, default=0, help="overlap of the tiles in input pixels (default 0)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ... (last)"
    )
    return p


def _prepare(args: argparse.Namespace) -> tuple[list[Job], PredictOptions]:
    """Check every input before the model is loaded."""
    for path, flag, fix in (
        (args.config_file, "--config-file", "the CroBIM YAML config, e.g. projects/CroBIM/configs/..."),
        (args.weights, "--weights", "the trained checkpoint, e.g. output/.../model_final.pth"),
    ):
        if not os.path.isfile(path):
            raise GeoInputError(f"{flag} file not found: {path}; give {fix}")
    if len(args.opts) % 2:
        raise GeoInputError(f"--opts needs KEY VALUE pairs, got {args.opts}")
    options = PredictOptions(
        bands=parse_bands(args.bands),
        percentiles=parse_percentiles(args.stretch_percentiles),
        threshold=args.threshold,
        min_area_px=args.min_area_px,
        min_area=args.min_area,
        simplify=args.simplify,
        vector_format=args.vector_format,
        save_prob=args.save_prob,
        tile_size=args.tile_size,
        tile_overlap=args.tile_overlap,
        progress=not args.quiet,
    )
    options.check()
    if args.jobs:
        if args.input or args.expression:
            raise GeoInputError("--jobs replaces --input/--expression; give one or the other")
        jobs = jobs_from_jsonl(args.jobs)
    elif args.input and args.expression:
        jobs = jobs_from_args(args.input, args.expression)
    else:
        raise GeoInputError("give --input and --expression, or --jobs")
    # One unreadable input among several is reported as its jobs fail; if none is readable, stop here.
    problems = []
    for image in dict.fromkeys(job.image for job in jobs):
        try:
            check_raster(image, options.bands)
        except GeoInputError as e:
            problems.append(str(e))
    if len(problems) == len({job.image for job in jobs}):
        raise GeoInputError("; ".join(problems))
    return jobs, options


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        jobs, options = _prepare(args)
        partial = ["MODEL.ALLOW_PARTIAL_WEIGHTS", "True"] if args.allow_partial_weights else []
        predictor = build_predictor(args.config_file, args.weights, [*args.opts, *partial], args.device)
    except (GeoInputError, ConfigError) as e:
        parser.error(str(e))
    records = run_jobs(jobs, predictor, args.output_dir, options, quiet=args.quiet)
    failed = sum("error" in r for r in records)
    summary = f"Wrote {len(records) - failed} prediction(s) to {args.output_dir} (list: predictions.jsonl)"
    if failed:
        summary += f"; {failed} failed (their reasons are in predictions.jsonl)"
    print(summary, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

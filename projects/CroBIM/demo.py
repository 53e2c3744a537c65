"""Segment the object an expression refers to in one or more images; write a mask and an overlay PNG each.

    python projects/CroBIM/demo.py --config-file output/demo/config.yaml \
        --input datasets/synrrsis/images/test/00000.png --expression "the vehicle at the top left" \
        --output output/demo_pred --opts MODEL.WEIGHTS output/demo/model_final.pth

Images are read as ``crobim-predict`` reads them (PNG, JPEG, TIFF and GeoTIFF of any bit depth: 16-bit and
float bands stretched, the first three colour bands of a multiband raster, nodata and alpha left out); for
georeferenced outputs, band choice and large scenes use ``crobim-predict``.
"""

import argparse
import os

import cv2
import numpy as np

from crobim_d2 import RRSISPredictor
from crobim_d2.engine import apply_cpu_malloc_reuse
from crobim_d2.geo import read_scene
from crobim_d2.inference import load_inference_config
from crobim_d2.visualization import overlay_mask


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--input", nargs="+", required=True, metavar="IMAGE", help="image files (PNG, JPEG, TIFF)"
    )
    parser.add_argument("--expression", required=True, help="the referring expression, e.g. 'the red car'")
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="folder for <name>_mask.png and <name>_overlay.png"
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="foreground probability threshold")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return parser


def main(argv: list[str] | None = None) -> list[str]:
    args = get_parser().parse_args(argv)
    if not 0.0 < args.threshold < 1.0:
        raise ValueError(f"--threshold={args.threshold} must lie strictly between 0 and 1.")
    missing = [p for p in args.input if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"--input file(s) not found: {', '.join(missing)}")
    cfg = load_inference_config(args.config_file, args.opts)
    apply_cpu_malloc_reuse(cfg)
    predictor = RRSISPredictor(cfg)
    os.makedirs(args.output, exist_ok=True)
    written = []
    for path in args.input:
        image, valid = read_scene(path).read()
        mask = (predictor(image, args.expression) > args.threshold) & valid
        stem = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0])
        cv2.imwrite(f"{stem}_mask.png", mask.astype(np.uint8) * 255)
        cv2.imwrite(f"{stem}_overlay.png", overlay_mask(image, mask)[:, :, ::-1])
        written += [f"{stem}_mask.png", f"{stem}_overlay.png"]
        print(f"{path}: {int(mask.sum())} of {mask.size} pixels -> {stem}_mask.png, {stem}_overlay.png")
    return written


if __name__ == "__main__":
    main()

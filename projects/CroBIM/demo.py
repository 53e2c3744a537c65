"""Segment the object an expression refers to in one or more images; write a mask and an overlay PNG each.

    python projects/CroBIM/demo.py --config-file projects/CroBIM/configs/synrrsis/crobim_tiny.yaml \
        --input datasets/synrrsis/images/test/00000.png --expression "the vehicle at the top left" \
        --output output/demo_pred --opts MODEL.WEIGHTS output/demo/train/model_final.pth
"""
import argparse
import os

import cv2
import numpy as np
from detectron2.config import get_cfg

from crobim_d2 import RRSISPredictor, add_crobim_config
from crobim_d2.data import read_image_rgb

OVERLAY_COLOR = np.array([255, 40, 40], np.float32)  # RGB


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, metavar="IMAGE", help="image files (PNG, JPEG, TIFF)")
    parser.add_argument("--expression", required=True, help="the referring expression, e.g. 'the red car'")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for <name>_mask.png and <name>_overlay.png")
    parser.add_argument("--threshold", type=float, default=0.5, help="foreground probability threshold")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return parser


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Tint the masked pixels of an RGB image and outline them."""
    out = image.astype(np.float32)
    out[mask] = 0.45 * out[mask] + 0.55 * OVERLAY_COLOR
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 0), 1)
    return out


def main(argv: list[str] | None = None) -> list[str]:
    args = get_parser().parse_args(argv)
    if not 0.0 < args.threshold < 1.0:
        raise ValueError(f"--threshold={args.threshold} must lie strictly between 0 and 1.")
    missing = [p for p in args.input if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"--input file(s) not found: {', '.join(missing)}")
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    predictor = RRSISPredictor(cfg)
    os.makedirs(args.output, exist_ok=True)
    written = []
    for path in args.input:
        image = read_image_rgb(path)
        mask = predictor(image, args.expression) > args.threshold
        stem = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0])
        cv2.imwrite(f"{stem}_mask.png", mask.astype(np.uint8) * 255)
        cv2.imwrite(f"{stem}_overlay.png", overlay(image, mask)[:, :, ::-1])
        written += [f"{stem}_mask.png", f"{stem}_overlay.png"]
        print(f"{path}: {int(mask.sum())} of {mask.size} pixels -> {stem}_mask.png, {stem}_overlay.png")
    return written


if __name__ == "__main__":
    main()

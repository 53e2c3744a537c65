"""Image reading shared by the dataset loaders, the mapper and the predictor."""

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from PIL import Image


@contextlib.contextmanager
def _open_image(path: str) -> Iterator[Image.Image]:
    """Open ``path`` with PIL; a missing or unreadable file raises an error naming it and the fix."""
    try:
        with Image.open(path) as img:
            yield img
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Image not found: {path}. Check the dataset folder (see datasets/README.md) or "
            "DETECTRON2_DATASETS."
        ) from None
    except OSError as e:
        raise ValueError(
            f"Cannot read image {path} ({e}). Convert it to an 8-bit RGB PNG, JPEG or TIFF."
        ) from e


def read_image_rgb(path: str) -> np.ndarray:
    """Read an image (PNG, JPEG, 8-bit TIFF, ...) as uint8 (H, W, 3) RGB; grayscale and RGBA are converted."""
    with _open_image(path) as img:
        if img.mode in ("I;16", "I;16B", "I"):
            # 16-bit single band: stretch to 8 bits before replicating to RGB.
            arr = np.asarray(img, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) * (255.0 / max(hi - lo, 1.0))
            return np.repeat(arr.astype(np.uint8)[:, :, None], 3, axis=2)
        return np.asarray(img.convert("RGB"))


class ImageHeader(NamedTuple):
    height: int
    width: int
    format: str  # PIL's name of the file format: "PNG", "JPEG", "TIFF", ...


def read_image_header(path: str) -> ImageHeader:
    """Size and file format from the header, without decoding the pixels (a truncated file passes: decode it
    with ``read_image_rgb`` to know it is readable)."""
    with _open_image(path) as img:
        width, height = img.size
        return ImageHeader(height, width, img.format or "")


def read_image_size(path: str) -> tuple[int, int]:
    """Return ``(height, width)`` from the file header without decoding the pixels."""
    header = read_image_header(path)
    return header.height, header.width

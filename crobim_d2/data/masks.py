"""Ground-truth masks of RRSIS records: a mask image file, a COCO RLE, or COCO polygons."""
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

Segmentation = dict[str, Any] | list[list[float]]


def read_mask_file(path: str, threshold: int = 0) -> np.ndarray:
    """Foreground = pixel value > ``threshold`` (palette images: index > threshold; alpha ignored)."""
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
            if img.mode in ("RGBA", "LA", "PA"):
                arr = arr[..., :-1]
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Mask file not found: {path}. Check the dataset folder (see datasets/README.md)."
        ) from None
    except OSError as e:
        raise ValueError(
            f"Cannot read mask {path} ({e}). Masks must be single-band PNG/TIFF images, 0 = background."
        ) from e
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr > threshold


def decode_segmentation(segm: Segmentation, height: int, width: int) -> np.ndarray:
    """Decode a COCO RLE (compressed or not), a list of RLEs, or polygons ``[[x0, y0, x1, y1, ...], ...]``."""
    if isinstance(segm, dict):
        if "size" not in segm or "counts" not in segm:
            raise ValueError(f"A COCO RLE needs 'size' and 'counts' keys; got keys {sorted(segm)}.")
        if list(segm["size"]) != [height, width]:
            raise ValueError(
                f"RLE size {list(segm['size'])} differs from the image size [{height}, {width}]; "
                "the RLE must be encoded at the image's resolution."
            )
        rle = segm
        if isinstance(segm["counts"], list):
            rle = mask_utils.frPyObjects(segm, height, width)
        elif isinstance(segm["counts"], str):
            rle = dict(segm, counts=segm["counts"].encode("ascii"))
        return mask_utils.decode(rle).astype(bool)
    if isinstance(segm, list) and segm and all(isinstance(s, dict) for s in segm):
        # REFER stores some masks as a list of RLEs: their union is the mask
        return np.logical_or.reduce([decode_segmentation(s, height, width) for s in segm])
    if isinstance(segm, list):
        polygons = [list(map(float, p)) for p in segm if len(p) >= 6]
        if not polygons:
            raise ValueError(
                "Polygon segmentation has no polygon with 3 or more points; "
                "use [[x0, y0, x1, y1, x2, y2, ...]]."
            )
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        return mask_utils.decode(rle).astype(bool)
    raise ValueError(
        f"Unsupported segmentation of type {type(segm).__name__}: use a COCO RLE dict or polygons."
    )


def load_gt_mask(record: dict[str, Any]) -> np.ndarray:
    """The record's ground-truth mask as bool ``(height, width)``.

    The mask is located by ``mask_file`` (a mask image; foreground = value > ``mask_threshold``, default 0)
    or by ``segmentation`` (COCO RLE or polygons at the image's resolution).
    """
    height, width = int(record["height"]), int(record["width"])
    if "mask_file" in record:
        mask = read_mask_file(record["mask_file"], int(record.get("mask_threshold", 0)))
        if mask.shape != (height, width):
            raise ValueError(
                f"Mask {record['mask_file']} is {mask.shape[0]}x{mask.shape[1]} but its image "
                f"{record.get('file_name')} is {height}x{width}; masks must have the image's size."
            )
        return mask
    if "segmentation" in record:
        return decode_segmentation(record["segmentation"], height, width)
    raise KeyError(
        f"Record for {record.get('file_name')} has neither 'mask_file' nor 'segmentation'; "
        "dataset loaders must give one of them."
    )

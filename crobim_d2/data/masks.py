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


def _collinear(points: np.ndarray) -> bool:
    """True when the points span no area (all on one line, or fewer than 3)."""
    if len(points) < 3:
        return True
    spread = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    return bool(spread[1] <= 1e-9 * max(spread[0], 1.0))


def _clip_half_plane(points: list[tuple[float, float]], axis: int, bound: float, sign: float) -> list:
    """One Sutherland-Hodgman step: keep the part of the polygon where ``sign * (p[axis] - bound) >= 0``."""
    out = []
    for k, p in enumerate(points):
        q = points[(k + 1) % len(points)]
        dp, dq = sign * (p[axis] - bound), sign * (q[axis] - bound)
        if dp >= 0:
            out.append(p)
        if (dp >= 0) != (dq >= 0):
            t = dp / (dp - dq)
            out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
    return out


def _clip_to_image(points: np.ndarray, height: int, width: int) -> np.ndarray:
    pts = [tuple(p) for p in points.tolist()]
    sides = ((0, 0.0, 1.0), (0, float(width), -1.0), (1, 0.0, 1.0), (1, float(height), -1.0))
    for axis, bound, sign in sides:
        if pts:
            pts = _clip_half_plane(pts, axis, bound, sign)
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def check_polygons(polygons: Any, height: int, width: int) -> tuple[list[list[float]], int]:
    """Check COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` (pixels; the image is [0, width] x [0, height]).

    Returns the polygons to rasterize and how many extend beyond the image. Those that stay within one image
    size of it are kept as they are (pycocotools rasterizes them as the peers' loaders do); those reaching
    farther are clipped to the image first: pycocotools turns coordinates times 5 into C ints, so beyond ~4e8
    they wrap around, and a polygon far outside the image can fill all of it.
    Raises ``ValueError`` for a polygon with an odd number of coordinates, fewer than 3 points, a coordinate
    that is not a finite number, no area, or no part inside the image.
    """
    if not isinstance(polygons, list) or not polygons:
        raise ValueError("Polygon segmentation must be a non-empty list of polygons [[x0, y0, x1, y1, ...]].")
    out, outside = [], 0
    margin = max(height, width)
    for i, poly in enumerate(polygons):
        name = f"polygon {i}" if len(polygons) > 1 else "the polygon"
        if not isinstance(poly, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly
        ):
            raise ValueError(f"{name} is not a list of numbers; write polygons as [[x0, y0, x1, y1, ...]].")
        if len(poly) % 2:
            raise ValueError(f"{name} has {len(poly)} coordinates, an odd number; write x, y pairs.")
        if len(poly) < 6:
            raise ValueError(
                f"{name} has {len(poly) // 2} point(s); a polygon needs at least 3 (6 coordinates)."
            )
        points = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(points).all():
            raise ValueError(f"{name} has a coordinate that is not a finite number.")
        if _collinear(points):
            raise ValueError(f"{name} has no area: its points lie on one line.")
        lo, hi = points.min(axis=0), points.max(axis=0)
        if lo.min() < 0 or hi[0] > width or hi[1] > height:
            inside = _clip_to_image(points, height, width)
            if _collinear(inside):
                raise ValueError(
                    f"{name} lies wholly outside the {height}x{width} image (x in [{lo[0]:g}, {hi[0]:g}], "
                    f"y in [{lo[1]:g}, {hi[1]:g}]); polygon coordinates are the image's pixel columns, rows."
                )
            outside += 1
            if lo.min() < -margin or hi[0] > width + margin or hi[1] > height + margin:
                poly = inside.ravel().tolist()
        out.append([float(v) for v in poly])
    return out, outside


def decode_segmentation(segm: Segmentation, height: int, width: int) -> np.ndarray:
    """Decode a COCO RLE (compressed or not), a list of RLEs, or polygons ``[[x0, y0, x1, y1, ...], ...]``
    (see ``check_polygons``)."""
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
        polygons, _ = check_polygons(segm, height, width)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        return mask_utils.decode(rle).astype(bool)
    raise ValueError(
        f"Unsupported segmentation of type {type(segm).__name__}: use a COCO RLE dict or polygons."
    )


def record_origin(record: dict[str, Any]) -> str:
    """Where a record comes from, for messages: its ``origin`` (``file:line``) or else its image."""
    return str(record.get("origin") or record.get("file_name"))


def load_gt_mask(record: dict[str, Any]) -> np.ndarray:
    """The record's ground-truth mask as bool ``(height, width)``.

    The mask comes from exactly one of ``mask_file`` (a mask image; foreground = value > ``mask_threshold``,
    default 0) or ``segmentation`` (COCO RLE or polygons at the image's resolution); a record with both or
    neither is an error.
    """
    height, width = int(record["height"]), int(record["width"])
    sources = [key for key in ("mask_file", "segmentation") if key in record]
    if len(sources) != 1:
        problem = ("both 'mask_file' and 'segmentation'" if sources
                   else "neither 'mask_file' nor 'segmentation'")
        raise KeyError(
            f"Record {record_origin(record)} has {problem}; dataset loaders must give exactly one of them "
            "(see datasets/README.md)."
        )
    if "mask_file" in record:
        mask = read_mask_file(record["mask_file"], int(record.get("mask_threshold", 0)))
        if mask.shape != (height, width):
            raise ValueError(
                f"Mask {record['mask_file']} is {mask.shape[0]}x{mask.shape[1]} but its image "
                f"{record.get('file_name')} is {height}x{width}; masks must have the image's size."
            )
        return mask
    try:
        return decode_segmentation(record["segmentation"], height, width)
    except ValueError as e:
        raise ValueError(f"{record_origin(record)}: {e}") from None

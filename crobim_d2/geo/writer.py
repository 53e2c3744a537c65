"""Writing one prediction window by window: mask and probability GeoTIFFs, PNG previews, polygons.

Pass 1 asks the probability source for each window, writes the probability, and traces the thresholded mask
(each pixel's piece id goes to a temporary GeoTIFF); pass 2 writes the mask of the polygons kept (specks
dropped) from those ids, so the raster and vector outputs agree pixel for pixel. Files are written under
temporary names and renamed at the end: a failed job leaves nothing partial.
"""

import contextlib
import os
import warnings
from collections.abc import Iterator

import cv2
import numpy as np
import rasterio
import shapely
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from ..visualization import overlay_mask
from .options import DEFAULT_OPTIONS, PredictOptions
from .raster import Scene, gdal_env
from .vector import Polygons, WindowedPolygonizer, to_crs, write_geojson, write_gpkg

# Full-resolution work happens in windows of this many pixels a side (a multiple of the GeoTIFF block).
WINDOW_SIZE = 2048
BLOCK_SIZE = 256


def iter_windows(height: int, width: int, size: int) -> Iterator[Window]:
    """Windows of at most ``size`` px a side covering the scene, in row-major order."""
    for r in range(0, height, size):
        for c in range(0, width, size):
            yield Window(c, r, min(size, width - c), min(size, height - r))


def _geotiff(path: str, scene: Scene, dtype: str):
    """A tiled, deflate-compressed single-band GeoTIFF with the scene's size and georeferencing."""
    profile = {
        "driver": "GTiff",
        "count": 1,
        "height": scene.height,
        "width": scene.width,
        "dtype": dtype,
        "tiled": True,
        "blockxsize": BLOCK_SIZE,
        "blockysize": BLOCK_SIZE,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    if scene.georeferenced:
        profile.update(crs=scene.crs, transform=scene.transform)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path, "w", **profile)


def _preview_index(full: int, preview: int) -> np.ndarray:
    """Full-resolution row (or column) shown by each preview row: the nearest, as GDAL decimates."""
    return np.minimum(((np.arange(preview) + 0.5) * full / preview).astype(np.int64), full - 1)


def _write_png(path: str, image: np.ndarray) -> None:
    """Gray (H, W) or RGB (H, W, 3) uint8."""
    if not cv2.imwrite(path, image[:, :, ::-1] if image.ndim == 3 else image):
        raise OSError(f"Cannot write {path}; check that the output folder is writable")


class _Staged:
    """Paths written as ``<stem>.partial<ext>``: those in ``keep`` are renamed to their names on success, the
    others (and all of them on failure) removed."""

    def __init__(self, files: dict[str, str], keep: dict[str, str]):
        self.files, self.keep = files, keep
        self.tmp = {k: "{}.partial{}".format(*os.path.splitext(p)) for k, p in files.items()}

    def __enter__(self) -> dict[str, str]:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        for key, tmp in self.tmp.items():
            if exc_type is None and key in self.keep:
                os.replace(tmp, self.files[key])
            elif os.path.exists(tmp):
                os.remove(tmp)


def _trace(scene: Scene, probability, options: PredictOptions, paths: dict[str, str], window_size: int):
    """Pass 1: probability (zero where invalid) window by window, written if asked, traced into polygons; the
    pixels' piece ids go to ``paths["pieces"]`` for pass 2."""
    polygonizer = WindowedPolygonizer(scene.width)
    with contextlib.ExitStack() as stack:
        pieces = stack.enter_context(_geotiff(paths["pieces"], scene, "int32"))
        prob_out = None
        if "prob_tif" in paths:
            prob_out = stack.enter_context(_geotiff(paths["prob_tif"], scene, "float32"))
        for window in iter_windows(scene.height, scene.width, window_size):
            valid = scene.read_valid(window)
            prob = np.where(valid, probability.window(window), np.float32(0)).astype(np.float32)
            if prob_out is not None:
                prob_out.write(prob, 1, window=window)
            pieces.write(polygonizer.add(window, prob > options.threshold, prob), 1, window=window)
    return polygonizer.polygons()


def _write_mask(scene: Scene, keep_piece: np.ndarray, paths: dict[str, str], window_size: int) -> np.ndarray:
    """Pass 2: the mask of the kept pieces (1 / 0) window by window; returns it at the preview's resolution."""
    rows = _preview_index(scene.height, scene.preview.shape[0])
    cols = _preview_index(scene.width, scene.preview.shape[1])
    preview = np.zeros(scene.preview.shape[:2], bool)
    lookup = np.concatenate([[0], keep_piece]).astype(np.uint8)  # id 0: background
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        pieces = rasterio.open(paths["pieces"])
    with pieces, _geotiff(paths["mask_tif"], scene, "uint8") as dst:
        for window in iter_windows(scene.height, scene.width, window_size):
            r0, c0 = int(window.row_off), int(window.col_off)
            mask = lookup[pieces.read(1, window=window)]
            dst.write(mask, 1, window=window)
            ri = np.flatnonzero((rows >= r0) & (rows < r0 + mask.shape[0]))
            ci = np.flatnonzero((cols >= c0) & (cols < c0 + mask.shape[1]))
            preview[np.ix_(ri, ci)] = mask[np.ix_(rows[ri] - r0, cols[ci] - c0)] > 0
    return preview


def _keep(polygons: Polygons, scene: Scene, options: PredictOptions) -> np.ndarray:
    pixel_area = abs(scene.transform.determinant)
    return (polygons.pixels >= options.min_area_px) & (polygons.pixels * pixel_area >= options.min_area)


def write_prediction(
    scene: Scene,
    probability,
    expression: str,
    output_dir: str,
    name: str,
    options: PredictOptions = DEFAULT_OPTIONS,
    window_size: int = WINDOW_SIZE,
) -> dict:
    """Threshold the probability source (``window(window) -> (h, w)``), drop specks, and write into
    ``output_dir``: ``<name>_mask.tif`` (1 object / 0), ``<name>_mask.png`` (255 / 0) and
    ``<name>_overlay.png`` (previews at the preview's resolution), ``<name>.geojson`` or ``<name>.gpkg``, and
    with ``save_prob`` ``<name>_prob.tif``. Nodata pixels are 0 everywhere. Returns the summary record.
    """
    os.makedirs(output_dir, exist_ok=True)
    stem = os.path.join(output_dir, name)
    files = {
        "mask_tif": f"{stem}_mask.tif",
        "mask_png": f"{stem}_mask.png",
        "overlay_png": f"{stem}_overlay.png",
    }
    files[options.vector_format] = f"{stem}.{options.vector_format}"
    if options.save_prob:
        files["prob_tif"] = f"{stem}_prob.tif"
    with gdal_env(), _Staged({**files, "pieces": f"{stem}_pieces.tif"}, keep=files) as tmp:
        polygons = _trace(scene, probability, options, tmp, window_size)
        keep = _keep(polygons, scene, options)
        preview_mask = _write_mask(scene, keep[polygons.piece_polygon], tmp, window_size)
        kept = polygons.select(keep)
        _write_png(tmp["mask_png"], preview_mask.astype(np.uint8) * 255)
        _write_png(tmp["overlay_png"], overlay_mask(scene.preview, preview_mask))
        score = float(kept.prob_sums.sum() / kept.pixels.sum()) if len(kept.pixels) else 0.0
        geometries, properties = _features(kept, scene, expression, options.simplify)
        if options.vector_format == "gpkg":
            write_gpkg(tmp["gpkg"], name, geometries, properties, scene.crs)
        else:
            summary = {"expression": expression, "image": scene.path, "score": score}
            write_geojson(tmp["geojson"], geometries, properties, scene.crs, summary)
    return {
        "image": scene.path,
        "expression": expression,
        "name": name,
        "score": score,
        "mask_pixels": int(kept.pixels.sum()),
        "polygons": len(kept.geometries),
        "files": files,
    }


def _features(kept: Polygons, scene: Scene, expression: str, simplify: float):
    """CRS geometries (simplified, topology kept, when asked) and their properties."""
    geometries = [to_crs(g, scene.transform) for g in kept.geometries]
    if simplify > 0:
        geometries = [shapely.simplify(g, simplify, preserve_topology=True) for g in geometries]
    properties = [
        {"expression": expression, "image": scene.path, "score": s / n, "area": g.area, "area_px": int(n)}
        for g, n, s in zip(geometries, kept.pixels.tolist(), kept.prob_sums.tolist())
    ]
    return geometries, properties

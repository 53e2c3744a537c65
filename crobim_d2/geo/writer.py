"""Writing one prediction: mask GeoTIFF, PNG previews, GeoJSON polygons, optional probability GeoTIFF."""

import json
import os
import warnings

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning

from .raster import Scene
from .vector import feature_collection, polygonize

OVERLAY_COLOR = np.array([255, 0, 0], np.float32)
OVERLAY_ALPHA = 0.5


def crs_name(crs: CRS | None) -> str | None:
    """The CRS as an OGC URN when it has an EPSG code, else as WKT."""
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"urn:ogc:def:crs:EPSG::{epsg}" if epsg is not None else crs.to_wkt()


def _write_raster(path: str, array: np.ndarray, scene: Scene, driver: str = "GTiff") -> None:
    """Write (bands, H, W) or (H, W); GeoTIFFs carry the scene's CRS and transform when it has them."""
    array = array[None] if array.ndim == 2 else array
    profile = {"driver": driver, "count": array.shape[0], "height": array.shape[1], "width": array.shape[2]}
    profile["dtype"] = array.dtype.name
    if driver == "GTiff":
        profile["compress"] = "deflate"
        if scene.georeferenced:
            profile.update(crs=scene.crs, transform=scene.transform)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)


def overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The scene with the mask tinted red."""
    out = rgb.astype(np.float32)
    out[mask] = (1 - OVERLAY_ALPHA) * out[mask] + OVERLAY_ALPHA * OVERLAY_COLOR
    return np.round(out).astype(np.uint8)


def write_prediction(
    scene: Scene,
    prob: np.ndarray,
    expression: str,
    output_dir: str,
    name: str,
    threshold: float = 0.5,
    min_area_px: float = 0.0,
    save_prob: bool = False,
) -> dict:
    """Threshold ``prob``, drop specks, and write ``<name>_mask.tif``, ``<name>_mask.png``,
    ``<name>_overlay.png``, ``<name>.geojson`` (and ``<name>_prob.tif`` with ``save_prob``) into
    ``output_dir``. Returns a summary record.

    The mask TIFF holds 1 (object) / 0; the PNG 255 / 0. Nodata pixels are 0 in the mask and probability map.
    """
    if prob.shape != scene.valid.shape:
        raise ValueError(
            f"Predictor returned a {prob.shape} map for a {scene.valid.shape} scene; it must be (H, W)"
        )
    prob = np.where(scene.valid, prob, 0.0).astype(np.float32)
    polygons = polygonize((prob > threshold) & scene.valid, prob, scene.transform, min_area_px)
    mask = polygons.mask.astype(np.uint8)
    score = float(prob[polygons.mask].mean()) if polygons.mask.any() else 0.0

    os.makedirs(output_dir, exist_ok=True)
    files = {
        "mask_tif": os.path.join(output_dir, f"{name}_mask.tif"),
        "mask_png": os.path.join(output_dir, f"{name}_mask.png"),
        "overlay_png": os.path.join(output_dir, f"{name}_overlay.png"),
        "geojson": os.path.join(output_dir, f"{name}.geojson"),
    }
    _write_raster(files["mask_tif"], mask, scene)
    _write_raster(files["mask_png"], mask * 255, scene, driver="PNG")
    _write_raster(
        files["overlay_png"], overlay(scene.rgb, polygons.mask).transpose(2, 0, 1), scene, driver="PNG"
    )
    if save_prob:
        files["prob_tif"] = os.path.join(output_dir, f"{name}_prob.tif")
        _write_raster(files["prob_tif"], prob, scene)

    properties = {"expression": expression, "image": scene.path}
    collection = feature_collection(polygons, properties, scene.transform, crs_name(scene.crs))
    collection["properties"] = {**properties, "score": score}  # foreign member: the whole-mask summary
    with open(files["geojson"], "w") as f:
        json.dump(collection, f)
    return {
        **properties,
        "name": name,
        "score": score,
        "mask_pixels": int(mask.sum()),
        "polygons": len(polygons.geometries),
        "files": files,
    }

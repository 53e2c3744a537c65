"""Mask polygons: vectorising with rasterio, speck removal and per-polygon scores."""

from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio import features
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry


@dataclass
class MaskPolygons:
    """The kept polygons of a mask (in CRS coordinates), the mask they cover and their mean probabilities."""

    geometries: list[BaseGeometry]
    scores: list[float]
    mask: np.ndarray  # bool (H, W): exactly the pixels of ``geometries``


def polygonize(mask: np.ndarray, prob: np.ndarray, transform: Affine, min_area_px: float) -> MaskPolygons:
    """Vectorise a boolean mask into 4-connected polygons with their holes; drop those under ``min_area_px``
    pixels.

    The returned mask is rasterised back from the kept polygons, so raster and vector outputs agree pixel for
    pixel.
    """
    pixel_area = abs(transform.determinant)
    geometries = [
        shape(geom)
        for geom, _ in features.shapes(mask.astype(np.uint8), mask=mask, transform=transform, connectivity=4)
    ]
    geometries = [g for g in geometries if g.area / pixel_area >= min_area_px]
    if not geometries:
        return MaskPolygons([], [], np.zeros(mask.shape, bool))
    labels = features.rasterize(
        ((g, i) for i, g in enumerate(geometries, start=1)),
        out_shape=mask.shape,
        transform=transform,
        dtype=np.int32,
    )
    counts = np.bincount(labels.ravel(), minlength=len(geometries) + 1)
    sums = np.bincount(labels.ravel(), weights=prob.ravel().astype(np.float64), minlength=len(geometries) + 1)
    scores = (sums[1:] / np.maximum(counts[1:], 1)).tolist()
    return MaskPolygons(geometries, scores, labels > 0)


def feature_collection(
    polygons: MaskPolygons, properties: dict, transform: Affine, crs_name: str | None
) -> dict:
    """GeoJSON FeatureCollection: one Feature per polygon with ``properties`` plus its score and areas.

    Coordinates are in the raster's CRS (pixel column/row when it has none). RFC 7946 asks for WGS 84; like
    GDAL, a non-WGS 84 CRS is named in the 2008 ``crs`` member, which QGIS and geopandas read.
    """
    pixel_area = abs(transform.determinant)
    feats = [
        {
            "type": "Feature",
            "id": i,
            "geometry": mapping(g),
            "properties": {**properties, "score": s, "area": g.area, "area_px": round(g.area / pixel_area)},
        }
        for i, (g, s) in enumerate(zip(polygons.geometries, polygons.scores))
    ]
    collection = {"type": "FeatureCollection", "features": feats}
    if crs_name is not None:
        collection["crs"] = {"type": "name", "properties": {"name": crs_name}}
    return collection

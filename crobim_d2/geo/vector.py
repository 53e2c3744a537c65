"""Mask polygons traced window by window, their CRS coordinates, GeoJSON and GeoPackage output.

Each window's mask is split into 4-connected components (OpenCV labels) and traced with
``rasterio.features.shapes`` in the scene's pixel coordinates, which are exact integers. Components that
touch across a window border (a mask pixel on each side of it) are joined by union-find on the border pixels
and their pieces merged with shapely's ``union_all``: no full-resolution mask is ever held, and a polygon is
the same whichever windows it was traced in. Coordinates go to the CRS at the end, as GDAL computes them.
Each window's pixels are also given the ids of their pieces, so that the mask of the polygons kept can be
written later without rasterising them.
"""

import json
from dataclasses import dataclass

import cv2
import numpy as np
import pyogrio.raw
import shapely
from affine import Affine
from rasterio import features
from rasterio.crs import CRS
from rasterio.windows import Window
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry


@dataclass
class Polygons:
    """Polygons (with holes) of a mask in the scene's pixel coordinates (column, row), with the number of mask
    pixels of each and the probability summed over them."""

    geometries: list[BaseGeometry]
    pixels: np.ndarray  # int64
    prob_sums: np.ndarray  # float64

    def select(self, keep: np.ndarray) -> "Polygons":
        return Polygons(
            [g for g, k in zip(self.geometries, keep) if k], self.pixels[keep], self.prob_sums[keep]
        )


@dataclass
class TracedPolygons(Polygons):
    piece_polygon: np.ndarray  # int64: the polygon of each traced piece (its id in ``add``'s output, minus 1)


class WindowedPolygonizer:
    """Trace a mask given as windows in row-major order (each window row spanning the scene's width)."""

    def __init__(self, width: int):
        self._pieces: list[BaseGeometry] = []
        self._pixels: list[int] = []
        self._sums: list[float] = []
        self._parent: list[int] = []
        self._above = np.zeros(width, np.int64)  # piece id + 1 of the pixel above each column, 0 = background
        self._left = np.zeros(0, np.int64)  # the same for the column left of the current window
        self._next_col = 0

    def _find(self, i: int) -> int:
        while self._parent[i] != i:
            self._parent[i] = self._parent[self._parent[i]]
            i = self._parent[i]
        return i

    def _join(self, a: np.ndarray, b: np.ndarray) -> None:
        touching = (a > 0) & (b > 0)
        for i, j in set(zip(a[touching].tolist(), b[touching].tolist())):
            ri, rj = self._find(i - 1), self._find(j - 1)
            if ri != rj:
                self._parent[max(ri, rj)] = min(ri, rj)

    def add(self, window: Window, mask: np.ndarray, prob: np.ndarray) -> np.ndarray:
        """Trace the window's mask; returns its pixels' piece ids + 1 (0: background), int32 (h, w)."""
        r0, c0 = int(window.row_off), int(window.col_off)
        c1 = c0 + int(window.width)
        n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
        ids = np.zeros(n, np.int64)
        if n > 1:
            counts = np.bincount(labels.ravel(), minlength=n)
            sums = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=n)
            pixel_grid = Affine.translation(c0, r0)
            for geom, value in features.shapes(labels, mask=mask, connectivity=4, transform=pixel_grid):
                v = int(value)
                ids[v] = len(self._pieces) + 1
                self._parent.append(len(self._pieces))
                self._pieces.append(shape(geom))
                self._pixels.append(int(counts[v]))
                self._sums.append(float(sums[v]))
        self._join(self._above[c0:c1], ids[labels[0]])
        if c0 > 0:
            if c0 != self._next_col:
                raise ValueError(
                    f"windows must come in row-major order; got column {c0} after {self._next_col}"
                )
            self._join(self._left, ids[labels[:, 0]])
        self._above[c0:c1] = ids[labels[-1]]
        self._left = ids[labels[:, -1]]
        self._next_col = c1
        return ids.astype(np.int32)[labels]

    def polygons(self) -> TracedPolygons:
        """Merged polygons, in the order of their first piece (for one window: GDAL's order)."""
        groups: dict[int, list[int]] = {}
        for i in range(len(self._pieces)):
            groups.setdefault(self._find(i), []).append(i)
        geometries, pixels, sums = [], [], []
        piece_polygon = np.zeros(len(self._pieces), np.int64)
        for k, members in enumerate(groups.values()):
            pieces = [self._pieces[i] for i in members]
            geometries.append(pieces[0] if len(pieces) == 1 else shapely.union_all(pieces))
            pixels.append(sum(self._pixels[i] for i in members))
            sums.append(sum(self._sums[i] for i in members))
            piece_polygon[members] = k
        return TracedPolygons(
            geometries, np.array(pixels, np.int64), np.array(sums, np.float64), piece_polygon
        )


def to_crs(geometry: BaseGeometry, transform: Affine) -> BaseGeometry:
    """Pixel (column, row) -> CRS coordinates with GDAL's arithmetic (as ``features.shapes`` gives them)."""
    a, b, c, d, e, f = transform[:6]

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.stack([c + x * a + y * b, f + x * d + y * e], axis=1)

    return shapely.transform(geometry, apply)


def crs_name(crs: CRS | None) -> str | None:
    """The CRS as an OGC URN when it has an EPSG code, else as WKT."""
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"urn:ogc:def:crs:EPSG::{epsg}" if epsg is not None else crs.to_wkt()


def write_geojson(path: str, geometries, properties: list[dict], crs: CRS | None, summary: dict) -> None:
    """A FeatureCollection with one Feature per polygon; ``summary`` as its foreign ``properties`` member.

    Coordinates are in the raster's CRS (pixel column/row when it has none). RFC 7946 asks for WGS 84; like
    GDAL, a non-WGS 84 CRS is named in the 2008 ``crs`` member, which QGIS and geopandas read.
    """
    feats = [
        {"type": "Feature", "id": i, "geometry": mapping(g), "properties": p}
        for i, (g, p) in enumerate(zip(geometries, properties))
    ]
    collection = {"type": "FeatureCollection", "features": feats}
    name = crs_name(crs)
    if name is not None:
        collection["crs"] = {"type": "name", "properties": {"name": name}}
    collection["properties"] = summary
    with open(path, "w") as f:
        json.dump(collection, f)


FIELDS = {"expression": object, "image": object, "score": np.float64, "area": np.float64, "area_px": np.int64}


def write_gpkg(path: str, layer: str, geometries, properties: list[dict], crs: CRS | None) -> None:
    """A GeoPackage with one Polygon layer (pyogrio); an empty result is an empty layer."""
    wkb = np.array([shapely.to_wkb(g) for g in geometries], dtype=object)
    columns = [np.array([p[k] for p in properties], dtype=t) for k, t in FIELDS.items()]
    pyogrio.raw.write(
        path,
        wkb,
        columns,
        fields=list(FIELDS),
        layer=layer,
        driver="GPKG",
        geometry_type="Polygon",
        crs=crs.to_wkt() if crs is not None else None,
    )

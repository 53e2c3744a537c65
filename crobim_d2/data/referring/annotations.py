"""Instance annotations of one raster, read into per-object masks in the raster's pixel grid.

Formats (by content): GeoJSON polygons in the raster's CRS or in pixel column/row, COCO JSON (polygons, RLE
or boxes), Pascal VOC XML boxes, CSV boxes (``xmin,ymin,xmax,ymax`` columns). Box corners and polygon
vertices are pixel edges (0 = the left/top edge of the raster); a pixel belongs to an object when its centre
is inside. Problems that make the file unusable raise :class:`ReferringInputError` naming the file and the
feature; features that lie outside the raster, have no geometry, cover no pixel centre or are COCO crowd
regions are dropped and counted.
"""

import csv
import json
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from affine import Affine
from pycocotools import mask as mask_utils
from rasterio import features
from rasterio.crs import CRS
from rasterio.errors import CRSError
from shapely.geometry import box as shapely_box
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from .source import ReferringInputError, Source

__all__ = ["Instance", "read_instances"]


@dataclass
class Instance:
    """One object: its mask over rows ``r0:r0+h`` and columns ``c0:c0+w`` of the raster, and its words."""

    category: str
    attribute: str | None
    mask_kind: str  # "polygon", "mask" (RLE / raster mask) or "box"
    mask: np.ndarray  # bool (h, w)
    offset: tuple[int, int]  # (r0, c0)
    full_area: float  # pixels, including any part beyond the raster
    clipped: bool  # extends beyond the raster, so it is cut in every crop
    where: str

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """(r0, c0, r1, c1) of the mask in the raster."""
        r0, c0 = self.offset
        return r0, c0, r0 + self.mask.shape[0], c0 + self.mask.shape[1]


@dataclass
class _Feature:
    where: str
    fields: Mapping[str, Any]
    geometry: BaseGeometry | None = None  # pixel coordinates
    rle: dict | None = None  # COCO RLE at the raster's size
    polygons: list | None = None  # COCO polygons, rasterized the COCO way
    kind: str = "polygon"
    default_category: Any = None


def _fail(path: str, problem: str) -> ReferringInputError:
    return ReferringInputError(f"{path}: {problem}")


def _load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise _fail(path, f"not valid JSON ({e}); give GeoJSON or COCO JSON") from None


def _geojson_features(
    path: str,
    data: dict,
    source: Source,
    crs: CRS | None,
    transform: Affine,
) -> Iterator[_Feature]:
    declared = (data.get("crs") or {}).get("properties", {}).get("name")
    if not source.pixel_coords:
        if crs is None:
            raise _fail(
                path,
                f"{source.raster} has no CRS, so coordinates cannot be placed on it; give pixel "
                "column/row coordinates and pixel_coords=True (--pixel-coords)",
            )
        if declared is not None:
            try:
                declared_crs = CRS.from_user_input(declared)
            except CRSError:
                raise _fail(path, f"unknown CRS {declared!r} in its 'crs' member") from None
            if declared_crs != crs:
                raise _fail(
                    path,
                    f"CRS mismatch: the file declares {declared_crs.to_string()} but "
                    f"{source.raster} is in {crs.to_string()}; reproject the annotations to the "
                    f"raster's CRS (e.g. ogr2ogr -t_srs {crs.to_string()} out.geojson {path})",
                )
    inverse = ~transform
    to_pixels = [inverse.a, inverse.b, inverse.d, inverse.e, inverse.c, inverse.f]
    for k, feat in enumerate(data.get("features") or []):
        where = f"{path} feature {k}" + (f" (id {feat['id']})" if feat.get("id") is not None else "")
        geometry = None
        if feat.get("geometry"):
            try:
                geometry = shape(feat["geometry"])
            except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException) as e:
                raise ReferringInputError(f"{where}: unreadable geometry ({e})") from None
            if not source.pixel_coords:
                geometry = shapely.affinity.affine_transform(geometry, to_pixels)
        yield _Feature(where, feat.get("properties") or {}, geometry=geometry)


def _coco_features(path: str, data: dict, source: Source, size: tuple[int, int]) -> Iterator[_Feature]:
    name = source.image_name or os.path.basename(source.raster)
    images = [im for im in data.get("images", []) if os.path.basename(str(im.get("file_name"))) == name]
    if len(images) != 1:
        listed = [im.get("file_name") for im in data.get("images", [])][:5]
        raise _fail(
            path,
            f"{len(images)} images named {name!r} (it lists {listed}...); give the raster's name "
            "in the file with image_name (--image-name)",
        )
    image = images[0]
    if (image.get("height"), image.get("width")) != size:
        raise _fail(
            path,
            f"image {name!r} is {image.get('height')}x{image.get('width')} but {source.raster} "
            f"is {size[0]}x{size[1]}; the annotations belong to another image",
        )
    names = {c["id"]: c.get("name") for c in data.get("categories", [])}
    for ann in data.get("annotations", []):
        if ann.get("image_id") != image.get("id"):
            continue
        where = f"{path} annotation {ann.get('id')}"
        fields = dict(ann.get("attributes") or {}, **ann)
        if ann.get("category_id") not in names:
            raise ReferringInputError(f"{where}: category_id {ann.get('category_id')} is not in 'categories'")
        default = names[ann["category_id"]]
        segm = ann.get("segmentation")
        if ann.get("iscrowd"):
            yield _Feature(where, fields, kind="crowd")
        elif isinstance(segm, dict):
            if list(segm.get("size", [])) != list(size) or "counts" not in segm:
                raise ReferringInputError(
                    f"{where}: an RLE needs 'counts' and 'size' {list(size)} (the raster's)"
                )
            yield _Feature(where, fields, rle=segm, kind="mask", default_category=default)
        elif isinstance(segm, list) and segm:
            if not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segm):
                raise ReferringInputError(f"{where}: polygons must be [[x0, y0, x1, y1, x2, y2, ...], ...]")
            yield _Feature(where, fields, polygons=segm, kind="polygon", default_category=default)
        elif ann.get("bbox"):
            x, y, w, h = (float(v) for v in ann["bbox"])
            yield _Feature(
                where, fields, geometry=_box(where, x, y, x + w, y + h), kind="box", default_category=default
            )
        else:
            yield _Feature(where, fields, default_category=default)


def _box(where: str, x0: Any, y0: Any, x1: Any, y1: Any) -> BaseGeometry:
    try:
        x0, y0, x1, y1 = (float(v) for v in (x0, y0, x1, y1))
    except (TypeError, ValueError):
        raise ReferringInputError(f"{where}: box corners {[x0, y0, x1, y1]} are not numbers") from None
    if not (x1 > x0 and y1 > y0):
        raise ReferringInputError(
            f"{where}: empty or inverted box (xmin {x0}, ymin {y0}, xmax {x1}, ymax {y1}); "
            "xmax must exceed xmin and ymax exceed ymin"
        )
    return shapely_box(x0, y0, x1, y1)


def _voc_features(path: str, source: Source, size: tuple[int, int]) -> Iterator[_Feature]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise _fail(path, f"not valid XML ({e}); give a Pascal VOC annotation") from None
    height, width = root.findtext("size/height"), root.findtext("size/width")
    if height and width and (int(float(height)), int(float(width))) != size:
        raise _fail(
            path, f"the annotation is for a {height}x{width} image but {source.raster} is {size[0]}x{size[1]}"
        )
    for k, obj in enumerate(root.iter("object")):
        where = f"{path} object {k}"
        fields = {child.tag: (child.text or "").strip() for child in obj if len(child) == 0}
        bnd = obj.find("bndbox")
        if bnd is None:
            raise ReferringInputError(f"{where}: no <bndbox>")
        corners = [bnd.findtext(t) for t in ("xmin", "ymin", "xmax", "ymax")]
        yield _Feature(
            where, fields, geometry=_box(where, *corners), kind="box", default_category=fields.get("name")
        )


def _csv_features(path: str, source: Source) -> Iterator[_Feature]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) if rows else []
    missing = [c for c in ("xmin", "ymin", "xmax", "ymax") if c not in columns]
    if missing:
        raise _fail(
            path, f"CSV boxes need columns xmin, ymin, xmax, ymax; missing {missing} (columns: {columns})"
        )
    if "image_path" in columns:
        name = source.image_name or os.path.basename(source.raster)
        listed = sorted({os.path.basename(r["image_path"]) for r in rows})
        rows_of = [(k, r) for k, r in enumerate(rows) if os.path.basename(r["image_path"]) == name]
        if not rows_of:
            raise _fail(
                path,
                f"no row has image_path {name!r} (it lists {listed[:5]}); give the raster's name in "
                "the file with image_name (--image-name)",
            )
    else:
        rows_of = list(enumerate(rows))
    for k, row in rows_of:
        where = f"{path} row {k + 2}"  # the header is line 1
        geometry = _box(where, row["xmin"], row["ymin"], row["xmax"], row["ymax"])
        yield _Feature(where, row, geometry=geometry, kind="box", default_category=row.get("label"))


def _features(source: Source, size: tuple[int, int], crs: CRS | None, transform: Affine) -> list[_Feature]:
    path = source.annotations
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Annotation file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".xml":
        return list(_voc_features(path, source, size))
    if ext == ".csv":
        return list(_csv_features(path, source))
    data = _load_json(path)
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return list(_geojson_features(path, data, source, crs, transform))
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        return list(_coco_features(path, data, source, size))
    raise _fail(
        path,
        "neither a GeoJSON FeatureCollection nor COCO JSON (with 'images' and 'annotations'); "
        "give GeoJSON, COCO JSON, Pascal VOC .xml or CSV boxes",
    )


def _word(feature: _Feature, field_name: str | None, default: Any, kind: str, fields_seen: set) -> str | None:
    """The value of ``field_name`` in the feature (else ``default``), stripped; None when it has none."""
    value = default
    if field_name is not None:
        if field_name not in feature.fields and kind == "category":
            raise ReferringInputError(
                f"{feature.where}: no field {field_name!r} for the category (its fields: "
                f"{sorted(feature.fields)}); fix category_field (--category-field) or give one category for "
                "all (--category)"
            )
        if field_name in feature.fields:
            fields_seen.add(field_name)
        value = feature.fields.get(field_name)
    if value is None or not str(value).strip():
        if kind == "category" and field_name is not None:
            raise ReferringInputError(f"{feature.where}: empty category in field {field_name!r}")
        return None
    return str(value).strip()


def _rasterize(
    feature: _Feature, size: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int], float, bool] | None:
    """The feature's mask over its bounds in the raster, its full area and whether the raster cuts it."""
    height, width = size
    if feature.rle is not None or feature.polygons is not None:
        rle = feature.rle
        if rle is None:
            rle = mask_utils.merge(mask_utils.frPyObjects(feature.polygons, height, width))
        elif isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, height, width)
        elif isinstance(rle["counts"], str):
            rle = dict(rle, counts=rle["counts"].encode("ascii"))
        full = mask_utils.decode(rle).astype(bool)
        rows, cols = np.nonzero(full)
        if not len(rows):
            return None
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        area, clipped = float(len(rows)), False
        if feature.polygons is not None:
            coords = np.concatenate([np.asarray(p, float) for p in feature.polygons])
            clipped = bool(
                (coords < 0).any() or (coords[0::2] > width).any() or (coords[1::2] > height).any()
            )
            area = max(area, sum(shapely.Polygon(np.reshape(p, (-1, 2))).area for p in feature.polygons))
        return full[r0:r1, c0:c1], (int(r0), int(c0)), area, clipped
    geometry = feature.geometry
    inside = geometry.intersection(shapely_box(0, 0, width, height))
    if inside.is_empty:
        return None
    x0, y0, x1, y1 = inside.bounds
    c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    c1, r1 = min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))
    mask = features.rasterize(
        [(inside, 1)], out_shape=(r1 - r0, c1 - c0), transform=Affine.translation(c0, r0), dtype=np.uint8
    ).astype(bool)
    if not mask.any():
        return None
    return mask, (r0, c0), max(float(mask.sum()), geometry.area), not inside.equals(geometry)


def read_instances(
    source: Source,
    size: tuple[int, int],
    crs: CRS | None,
    transform: Affine,
) -> tuple[list[Instance], Counter]:
    """The objects of ``source`` on a raster of ``size`` (height, width), and the count of dropped features
    per reason."""
    drops: Counter = Counter()
    instances: list[Instance] = []
    seen: set = set()
    feats = _features(source, size, crs, transform)
    for feat in feats:
        if feat.kind == "crowd":
            drops["COCO crowd region (several objects)"] += 1
            continue
        category = _word(
            feat, source.category_field, source.category or feat.default_category, "category", seen
        )
        if category is None:
            raise ReferringInputError(
                f"{feat.where}: no category; name the field with category_field "
                "(--category-field) or give one category for all (--category)"
            )
        attribute = _word(feat, source.attribute_field, None, "attribute", seen)
        if attribute is not None:
            attribute = source.attribute_words.get(attribute, attribute.lower())
        geometry = feat.geometry
        if feat.rle is None and feat.polygons is None:
            if geometry is None or geometry.is_empty:
                drops["empty geometry"] += 1
                continue
            if geometry.geom_type not in ("Polygon", "MultiPolygon"):
                raise ReferringInputError(
                    f"{feat.where}: a {geometry.geom_type}, not a polygon; objects need an "
                    "area (buffer points and lines into polygons first)"
                )
            if not geometry.is_valid:
                raise ReferringInputError(
                    f"{feat.where}: invalid polygon ({explain_validity(geometry)}); repair "
                    "it (shapely.make_valid, or QGIS 'Fix geometries')"
                )
        rasterized = _rasterize(feat, size)
        if rasterized is None:
            drops["outside the raster or covering no pixel centre"] += 1
            continue
        mask, offset, full_area, clipped = rasterized
        instances.append(
            Instance(category.lower(), attribute, feat.kind, mask, offset, full_area, clipped, feat.where)
        )
    if source.attribute_field is not None and feats and source.attribute_field not in seen:
        raise _fail(
            source.annotations,
            f"no feature has the attribute field {source.attribute_field!r}; fix "
            "attribute_field (--attribute-field)",
        )
    if (
        feats
        and not instances
        and drops
        and not drops.keys() - {"outside the raster or covering no pixel centre"}
    ):
        raise _fail(
            source.annotations,
            f"none of its {len(feats)} features lies on {source.raster}; are the "
            "coordinates in another CRS, or in pixels (pixel_coords, --pixel-coords)?",
        )
    return instances, drops

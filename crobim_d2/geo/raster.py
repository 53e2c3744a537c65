"""Reading remote-sensing rasters (PNG, JPEG, TIFF, GeoTIFF) into the uint8 RGB the model takes."""

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

DEFAULT_PERCENTILES = (2.0, 98.0)


class GeoInputError(ValueError):
    """An input (file, band list, expression, ...) crobim-predict cannot use; the message names the fix."""


@dataclass
class Scene:
    """A scene ready for the model, with what is needed to georeference its outputs."""

    path: str
    rgb: np.ndarray  # uint8 (H, W, 3); nodata pixels are 0
    valid: np.ndarray  # bool (H, W); False where any selected band is nodata (or NaN)
    crs: CRS | None
    transform: Affine  # pixel -> CRS coordinates; the identity when the file has none

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None or self.transform != Affine.identity()


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """Parse ``--bands`` ("3,2,1" or a single band "4"), 1-based as in GDAL."""
    if text is None or not text.strip():
        return None
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise GeoInputError(
            f"--bands {text!r} is not a comma-separated list of band numbers; e.g. --bands 3,2,1"
        ) from None
    if len(bands) not in (1, 3):
        raise GeoInputError(f"--bands {text!r} names {len(bands)} bands; give 3 (R,G,B) or 1 (grayscale)")
    return bands


def parse_percentiles(text: str) -> tuple[float, float]:
    """Parse ``--stretch-percentiles`` ("2,98")."""
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError:
        raise GeoInputError(f"--stretch-percentiles {text!r} must be two numbers, e.g. 2,98") from None
    if not 0.0 <= lo < hi <= 100.0:
        raise GeoInputError(f"--stretch-percentiles {text!r} must satisfy 0 <= low < high <= 100, e.g. 2,98")
    return lo, hi


def _open(path: str) -> rasterio.DatasetReader:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as e:
        raise GeoInputError(
            f"Cannot read {path} ({e}); give a PNG, JPEG, TIFF or GeoTIFF file that GDAL can open"
        ) from None


def _select_bands(src: rasterio.DatasetReader, bands: Sequence[int] | None) -> tuple[int, ...]:
    if bands is None:
        if src.count >= 3:
            return (1, 2, 3)
        if src.count == 1:
            return (1,)
        raise GeoInputError(f"{src.name} has {src.count} bands; choose them with --bands, e.g. --bands 1,2,1")
    for b in bands:
        if not 1 <= b <= src.count:
            raise GeoInputError(
                f"Band {b} is out of range for {src.name}, which has {src.count} band(s) "
                f"(numbered 1..{src.count}); fix --bands"
            )
    return tuple(bands)


def check_raster(path: str, bands: Sequence[int] | None = None) -> None:
    """Open the header only: raise :class:`GeoInputError` now rather than after the model is loaded."""
    with _open(path) as src:
        _select_bands(src, bands)


def stretch_to_uint8(band: np.ndarray, valid: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Linear stretch of one band from its [low, high] percentiles (over valid pixels only) to 0..255."""
    if not valid.any():
        return np.zeros(band.shape, np.uint8)
    lo, hi = np.percentile(band[valid], percentiles)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.clip((band.astype(np.float64) - lo) * scale, 0, 255)
    out[~valid] = 0
    return np.round(out).astype(np.uint8)


def read_scene(
    path: str,
    bands: Sequence[int] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> Scene:
    """Read a raster as uint8 RGB plus its validity mask, CRS and transform.

    Bands default to 1,2,3 (or band 1 as grayscale); ``bands`` are 1-based. uint8 data is used as is; other
    types (16-bit, float) are stretched per band between the given percentiles of the valid pixels. Pixels
    equal to the nodata value, masked by an alpha band or internal mask, or NaN are invalid: excluded from the
    statistics and set to 0.
    """
    with _open(path) as src:
        indexes = _select_bands(src, bands)
        data = src.read(list(indexes))
        valid = src.read_masks(list(indexes)).all(axis=0)
        palette = src.colormap(1) if indexes == (1,) and src.colorinterp[0] == ColorInterp.palette else None
        crs, transform = src.crs, src.transform
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    if palette is not None:
        lut = np.zeros((256, 3), np.uint8)
        for index, color in palette.items():
            lut[index] = color[:3]
        rgb = lut[data[0]]
    else:
        if data.dtype != np.uint8:
            data = np.stack([stretch_to_uint8(b, valid, percentiles) for b in data])
        if len(indexes) == 1:
            data = np.repeat(data, 3, axis=0)
        rgb = np.ascontiguousarray(data.transpose(1, 2, 0))
    rgb[~valid] = 0
    return Scene(path=path, rgb=rgb, valid=valid, crs=crs, transform=transform)

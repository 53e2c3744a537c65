"""Reading remote-sensing rasters (PNG, JPEG, TIFF, GeoTIFF) into the uint8 RGB the model takes.

A :class:`Scene` holds a raster's header, its stretch statistics and a preview of the whole scene read at
reduced resolution straight from the file (GDAL uses the file's overviews when it has them); full-resolution
pixels are only ever read window by window. This is the one image reader of ``crobim-predict`` and
``demo.py``.
"""

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

DEFAULT_PERCENTILES = (2.0, 98.0)
# The preview (model input of the whole-scene mode, stretch statistics, PNG previews) has at most this many
# pixels a side; a scene within it is read at full resolution, exactly as before windowed reading existed.
PREVIEW_MAX_SIDE = 2048
RASTER_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".img", ".vrt")
# GDAL's block cache defaults to 5% of the machine's memory; windowed reading and writing need little.
GDAL_CACHE_MB = 64


class GeoInputError(ValueError):
    """An input (file, band list, expression, ...) crobim-predict cannot use; the message names the fix."""


def gdal_env() -> rasterio.Env:
    """The GDAL settings of every read and write here (a bounded block cache)."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB)


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


def list_rasters(folder: str) -> list[str]:
    """The rasters directly inside ``folder`` (by extension), sorted by name."""
    paths = sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if f.lower().endswith(RASTER_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))
    )
    if not paths:
        raise GeoInputError(f"Folder {folder} holds no rasters ({', '.join(RASTER_EXTENSIONS)}); give files")
    return paths


@contextlib.contextmanager
def _open(path: str) -> Iterator[rasterio.DatasetReader]:
    """Open ``path``; a file GDAL cannot open, or pixels it cannot decode, raise :class:`GeoInputError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioError as e:
        raise GeoInputError(
            f"Cannot read {path} ({e}); give a PNG, JPEG, TIFF or GeoTIFF file that GDAL can open"
        ) from None
    try:
        with src:
            yield src
    except RasterioError as e:
        reason = e.__cause__ or e  # GDAL's own message ("Premature end of JPEG file") when there is one
        raise GeoInputError(
            f"Cannot decode the pixels of {path} ({reason}); the file is damaged or truncated: "
            "export or copy it again"
        ) from None


def _select_bands(src: rasterio.DatasetReader, bands: Sequence[int] | None) -> tuple[int, ...]:
    """``bands`` checked against the file; by default the first three colour bands, or the only one (bands
    whose colour interpretation is alpha are transparency, not colour)."""
    if bands is None:
        colour = [i for i, ci in enumerate(src.colorinterp, start=1) if ci != ColorInterp.alpha]
        if len(colour) >= 3:
            return tuple(colour[:3])
        if len(colour) == 1:
            return (colour[0],)
        raise GeoInputError(
            f"{src.name} has {len(colour)} colour band(s) besides {src.count - len(colour)} alpha band(s); "
            "choose them with --bands, e.g. --bands 1,2,1"
        )
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


def decimated_shape(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(height, width) scaled so that the longer side is at most ``max_side`` (unchanged if it already is)."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def band_range(band: np.ndarray, valid: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The band's [low, high] percentiles over its valid pixels ((0, 0) when none is valid)."""
    if not valid.any():
        return 0.0, 0.0
    lo, hi = np.percentile(band[valid], percentiles)
    return float(lo), float(hi)


def stretch_band(band: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear stretch of one band from [lo, hi] to 0..255 (all 0 when hi <= lo)."""
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.nan_to_num(
        np.clip((band.astype(np.float64) - lo) * scale, 0, 255)
    )  # NaN: invalid, set to 0 later
    return np.round(out).astype(np.uint8)


@dataclass(frozen=True)
class Scene:
    """A raster ready for the model: header, band choice, stretch and a preview of the whole scene."""

    path: str
    height: int
    width: int
    bands: tuple[int, ...]
    crs: CRS | None
    transform: Affine  # pixel -> CRS coordinates; the identity when the file has none
    ranges: (
        tuple[tuple[float, float], ...] | None
    )  # per band [low, high] stretched to 0..255; None: uint8 as is
    palette: np.ndarray | None  # (256, 3) uint8 colours of a palette band
    floating: bool
    preview: np.ndarray  # uint8 (h, w, 3): the scene, at most PREVIEW_MAX_SIDE a side, nodata 0
    preview_valid: np.ndarray  # bool (h, w)

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None or self.transform != Affine.identity()

    @property
    def full_window(self) -> Window:
        return Window(0, 0, self.width, self.height)

    def read(
        self, window: Window | None = None, max_side: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 (h, w, 3) and validity (h, w) of ``window`` (default: the whole scene), at full
        resolution or decimated (GDAL's average; overviews when the file has them) to at most ``max_side`` a side."""
        window = window or self.full_window
        out_shape = decimated_shape(int(window.height), int(window.width), max_side)
        with gdal_env(), _open(self.path) as src:
            data, valid = _read_bands(src, self.bands, window, out_shape, self.palette is not None)
        return _to_rgb(data, valid, self.ranges, self.palette), valid

    def read_valid(self, window: Window) -> np.ndarray:
        """Validity (h, w) at full resolution: rasterio's ``dataset_mask()`` (nodata, alpha band or internal
        mask), and for floating-point rasters also finite in every selected band."""
        with gdal_env(), _open(self.path) as src:
            valid = src.dataset_mask(window=window) > 0
            if self.floating:
                valid &= np.isfinite(src.read(list(self.bands), window=window)).all(axis=0)
        return valid


def _read_bands(
    src: rasterio.DatasetReader,
    bands: tuple[int, ...],
    window: Window,
    out_shape: tuple[int, int],
    palette: bool,
) -> tuple[np.ndarray, np.ndarray]:
    resampling = Resampling.nearest if palette else Resampling.average
    data = src.read(list(bands), window=window, out_shape=(len(bands), *out_shape), resampling=resampling)
    valid = src.dataset_mask(window=window, out_shape=out_shape) > 0
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    return data, valid


def _to_rgb(data: np.ndarray, valid: np.ndarray, ranges, palette: np.ndarray | None) -> np.ndarray:
    if palette is not None:
        rgb = palette[data[0]]
    else:
        if ranges is not None:
            data = np.stack([stretch_band(b, lo, hi) for b, (lo, hi) in zip(data, ranges)])
        if len(data) == 1:
            data = np.repeat(data, 3, axis=0)
        rgb = np.ascontiguousarray(data.transpose(1, 2, 0))
    rgb[~valid] = 0
    return rgb


def _palette(src: rasterio.DatasetReader, bands: tuple[int, ...]) -> np.ndarray | None:
    if len(bands) != 1 or src.colorinterp[bands[0] - 1] != ColorInterp.palette:
        return None
    lut = np.zeros((256, 3), np.uint8)
    for index, color in src.colormap(bands[0]).items():
        lut[index] = color[:3]
    return lut


def read_scene(
    path: str,
    bands: Sequence[int] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> Scene:
    """Open a raster: its header, the band choice, the stretch statistics and the preview.

    Bands default to the first three colour bands (or the only one, as grayscale); ``bands`` are 1-based.
    uint8 data is used as is; other types (16-bit, float) are stretched per band between the given
    percentiles of the valid pixels of the preview (a decimated read: the statistics never need the whole
    scene in memory). Invalid pixels (see :meth:`Scene.read_valid`) are left out of the statistics and are 0.
    """
    with gdal_env(), _open(path) as src:
        indexes = _select_bands(src, bands)
        palette = _palette(src, indexes)
        shape = decimated_shape(src.height, src.width, PREVIEW_MAX_SIDE)
        data, valid = _read_bands(
            src, indexes, Window(0, 0, src.width, src.height), shape, palette is not None
        )
        header = {"height": src.height, "width": src.width, "crs": src.crs, "transform": src.transform}
    ranges = None
    if palette is None and data.dtype != np.uint8:
        ranges = tuple(band_range(b, valid, percentiles) for b in data)
    return Scene(
        path=path,
        bands=indexes,
        ranges=ranges,
        palette=palette,
        floating=bool(np.issubdtype(data.dtype, np.floating)),
        preview=_to_rgb(data, valid, ranges, palette),
        preview_valid=valid,
        **header,
    )

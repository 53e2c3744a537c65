"""The request handler of ``crobim-serve``: one uploaded scene and expression through crobim-predict's path.

:meth:`SceneService.segment` checks the upload (size, format), builds the :class:`PredictOptions` from the
page's fields with crobim-predict's parsers and defaults, reads the scene with :func:`read_scene` and runs
:func:`predict_scene` into a fresh folder per request. Requests run one at a time (a lock around reading and
prediction: the model and the memory a scene needs are shared); request folders older than ``keep_s`` are
removed when a new request starts. Every bad input raises :class:`GeoInputError` with crobim-predict's
message, the upload named by its file name instead of its path on the server.
"""

import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from ..geo.cli import get_parser
from ..geo.options import PredictOptions
from ..geo.pipeline import check_expression, default_name, predict_scene
from ..geo.probability import ScenePredictor
from ..geo.raster import (
    PREVIEW_MAX_SIDE,
    GeoInputError,
    Scene,
    gdal_env,
    parse_bands,
    parse_percentiles,
    read_scene,
)

DEFAULT_MAX_UPLOAD_MB = 100.0
DEFAULT_KEEP_S = 900.0
# A small file can hold a huge scene (compressed): its pixels are limited too.
DEFAULT_MAX_MEGAPIXELS = 400.0
# The first bytes of the formats the page takes (PNG, JPEG, classic and BigTIFF in both byte orders). Other
# formats GDAL opens (a VRT, for one) can make it read any file on the server's disk, so uploads are refused
# by content, not by name.
SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
FORMATS_TEXT = "a PNG, JPEG, TIFF or GeoTIFF file"


def cli_default(dest: str):
    """crobim-predict's default for a flag, so that the page and the command give the same result."""
    return get_parser().get_default(dest)


@dataclass(frozen=True)
class ServeResult:
    record: dict  # predict_scene's record (score, mask_pixels, polygons, files, mode, ...)
    overlay: str  # the scene with the mask tinted (crobim-predict's <name>_overlay.png)
    heatmap: str  # the foreground probability, colour-mapped, at the overlay's resolution
    mask: str  # download: the mask GeoTIFF for georeferenced (or larger than preview) scenes, else the PNG
    polygons: str  # download: the GeoJSON
    georeferenced: bool

    def summary(self) -> str:
        r = self.record
        return (
            f"score {r['score']:.3f} · {r['polygons']} polygon(s) · {r['mask_pixels']} mask pixel(s) · "
            f"{r['mode']}"
        )


def _has_signature(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(8).startswith(SIGNATURES)


def _heatmap(prob_tif: str, scene: Scene, path: str) -> str:
    """The probability GeoTIFF read at the preview's size (GDAL's average), colour-mapped (inferno)."""
    with gdal_env(), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(prob_tif) as src:
            prob = src.read(1, out_shape=scene.preview.shape[:2], resampling=Resampling.average)
    colours = cv2.applyColorMap(np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    if not cv2.imwrite(path, colours):
        raise OSError(f"Cannot write {path}; check that the server's temporary folder is writable")
    return path


class SceneService:
    """``service.segment(upload, expression, ...)`` -> :class:`ServeResult`; safe to call from many
    threads. Uploads over ``max_upload_mb`` (file) or ``max_megapixels`` (scene) are refused."""

    def __init__(
        self,
        predictor: ScenePredictor,
        work_dir: str,
        max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
        keep_s: float = DEFAULT_KEEP_S,
    ):
        self.predictor = predictor
        self.work_dir = work_dir
        self.max_upload_mb = max_upload_mb
        self.max_megapixels = max_megapixels
        self.keep_s = keep_s
        self.lock = threading.Lock()
        os.makedirs(work_dir, exist_ok=True)

    def check_upload(self, path: str | None) -> None:
        if not path:
            raise GeoInputError(f"No scene: upload {FORMATS_TEXT}, or pick an example")
        name = os.path.basename(path)
        if not os.path.isfile(path):
            raise GeoInputError(
                f"{name} is no longer on the server (uploads are kept for a while); upload it again"
            )
        size_mb = os.path.getsize(path) / 2**20
        if size_mb > self.max_upload_mb:
            raise GeoInputError(
                f"{name} is {size_mb:.3g} MB, over this server's upload limit of {self.max_upload_mb:g} MB; "
                "crop or compress it, or start crobim-serve with a larger --max-upload-mb"
            )
        if not _has_signature(path):
            raise GeoInputError(
                f"Cannot read {name} (not a PNG, JPEG or TIFF file by its content); give {FORMATS_TEXT}"
            )

    def options(
        self,
        bands: str | None = None,
        percentiles: str | None = None,
        threshold: float | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
    ) -> PredictOptions:
        """The page's fields (as crobim-predict's flags take them; None: the flag's default)."""
        options = PredictOptions(
            bands=parse_bands(bands),
            percentiles=parse_percentiles(percentiles or cli_default("stretch_percentiles")),
            threshold=cli_default("threshold") if threshold is None else float(threshold),
            min_area_px=cli_default("min_area_px"),
            save_prob=True,  # for the heat map
            tile_size=int(tile_size) if tile_size else None,
            tile_overlap=int(tile_overlap or 0),
        )
        options.check()
        return options

    def segment(self, path: str | None, expression: str | None, **fields) -> ServeResult:
        """Check, read and predict one upload (``fields``: see :meth:`options`); raises
        :class:`GeoInputError`."""
        self.check_upload(path)
        name = os.path.basename(path)
        try:
            expression = check_expression(expression)
            options = self.options(**fields)
            with self.lock:
                return self._predict(path, expression, options)
        except GeoInputError as e:
            raise GeoInputError(str(e).replace(path, name)) from None

    def _predict(self, path: str, expression: str, options: PredictOptions) -> ServeResult:
        self._prune()
        scene = read_scene(path, options.bands, options.percentiles)  # a preview: bounded, whatever the size
        megapixels = scene.height * scene.width / 1e6
        if megapixels > self.max_megapixels:
            raise GeoInputError(
                f"{path} is {scene.width} x {scene.height} pixels ({megapixels:.3g} Mpx), over this server's "
                f"limit of {self.max_megapixels:g} Mpx; crop it, or start crobim-serve with a larger "
                "--max-megapixels"
            )
        out = tempfile.mkdtemp(prefix="request-", dir=self.work_dir)
        try:
            stem = default_name(path, expression)
            record = predict_scene(self.predictor, scene, expression, out, stem, options)
            files = record["files"]
            heatmap = _heatmap(files["prob_tif"], scene, os.path.join(out, f"{stem}_heatmap.png"))
        except Exception:
            shutil.rmtree(out, ignore_errors=True)
            raise
        tif_mask = scene.georeferenced or max(scene.height, scene.width) > PREVIEW_MAX_SIDE
        return ServeResult(
            record=record,
            overlay=files["overlay_png"],
            heatmap=heatmap,
            mask=files["mask_tif"] if tif_mask else files["mask_png"],
            polygons=files["geojson"],
            georeferenced=scene.georeferenced,
        )

    def _prune(self) -> None:
        """Remove the folders of requests older than ``keep_s`` (the page has fetched their files by then)."""
        now = time.time()
        for entry in os.scandir(self.work_dir):
            if entry.is_dir() and now - entry.stat().st_mtime > self.keep_s:
                shutil.rmtree(entry.path, ignore_errors=True)

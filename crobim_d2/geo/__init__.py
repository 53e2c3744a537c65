"""Inference on remote-sensing files: rasters in (rasterio), georeferenced masks and GeoJSON polygons out."""

from .raster import GeoInputError, Scene, read_scene  # noqa: F401
from .writer import write_prediction  # noqa: F401

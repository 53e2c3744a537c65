import csv
import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.config import get_cfg
from pycocotools import mask as mask_utils

from crobim_d2.config import add_crobim_config
from crobim_d2.evaluation import RRSISEvaluator


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _sample(gt, pred, sent_id, category=None):
    record = {"file_name": f"{sent_id}.png", "height": gt.shape[0], "width": gt.shape[1],
              "segmentation": _rle(gt), "sent_id": sent_id, "sentence": "x", "category": category}
    return record, {"ref_seg": torch.from_numpy(pred.astype(np.float32))}


def _hand_samples():
    gt = np.zeros((4, 4), bool)
    gt[0:2, 0:2] = True
    partial = np.zeros((4, 4))
    partial[0:2, 1:3] = 0.9
    partial[3, 3] = 0.5  # exactly 0.5 is background
    one_pixel = np.zeros((4, 4))
    one_pixel[2, 2] = 0.7
    empty = np.zeros((4, 4), bool)
    return [
        _sample(gt, partial, 0, "tank"),  # I=2, U=6
        _sample(empty, np.zeros((4, 4)), 1, "tank"),  # I=0, U=0: IoU 0 by convention
        _sample(empty, one_pixel, 2, "ship"),  # I=0, U=1
        _sample(gt, gt * 0.8, 3, "ship"),  # I=4, U=4
    ]


def test_hand_computed_metrics(tmp_path):
    ev = RRSISEvaluator("hand", distributed=False, output_dir=str(tmp_path))
    ev.reset()
    for inp, out in _hand_samples():
        ev.process([inp], [out])
    res = ev.evaluate()["rrsis"]
    assert res["oIoU"] == pytest.approx(100 * 6 / 11)
    assert res["mIoU"] == pytest.approx(100 * (1 / 3 + 1) / 4)
    for t in ("0.5", "0.6", "0.7", "0.8", "0.9"):
        assert res[f"Pr@{t}"] == pytest.approx(25.0)
    assert res["mIoU-tank"] == pytest.approx(100 / 6) and res["mIoU-ship"] == pytest.approx(50.0)
    with open(tmp_path / "rrsis_hand.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["I"], r["U"]) for r in rows] == [("2", "6"), ("0", "0"), ("0", "1"), ("4", "4")]
    assert json.loads((tmp_path / "rrsis_hand.json").read_text())[3]["IoU"] == 1.0


def test_metrics_per_value_of_a_record_field():
    ev = RRSISEvaluator("hand", distributed=False, group_by=("category", "template"))
    ev.reset()
    for k, (inp, out) in enumerate(_hand_samples()):
        if k != 1:  # a record without the field is left out of its groups
            inp["template"] = "relative" if k == 0 else "color"
        ev.process([inp], [out])
    res = ev.evaluate()["rrsis"]
    assert res["mIoU-template:relative"] == pytest.approx(100 / 3) and res["n-template:relative"] == 1
    assert res["mIoU-template:color"] == pytest.approx(50.0) and res["n-template:color"] == 2
    assert res["Pr@0.5-template:color"] == pytest.approx(50.0) and res["Pr@0.5-template:relative"] == 0
    assert res["mIoU-tank"] == pytest.approx(100 / 6)  # category keeps its short key


def test_eval_size_from_config_and_shape_check():
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.TEST.RRSIS_EVAL_SIZE = 4
    ev = RRSISEvaluator(cfg, "sized", distributed=False)
    assert ev.eval_size == 4
    gt = np.zeros((8, 12), bool)
    gt[:, :6] = True
    ev.process(*map(list, zip(_sample(gt, gt * 1.0, 0))))
    ev.process(*map(list, zip(_sample(gt, np.zeros((8, 12)), 1))))
    assert ev._samples[0]["I"] == ev._samples[0]["U"] == 8  # counted at 4x4
    assert ev.evaluate()["rrsis"]["mIoU"] == pytest.approx(50.0)
    full = RRSISEvaluator("full", distributed=False)
    with pytest.raises(ValueError, match="record's height x width"):
        full.process([_sample(gt, gt, 0)[0]], [{"ref_seg": torch.zeros(8, 8)}])
    assert full.evaluate() == {}


def _random_samples(n=30):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        h, w = rng.integers(5, 20, size=2)
        gt = rng.random((h, w)) < rng.random() * (i % 5 != 0)  # some empty masks
        samples.append(_sample(gt, rng.random((h, w)), i, ["a", "b", "c"][i % 3]))
    return samples


def _worker(rank, init_file, out_file):
    torch.set_num_threads(1)  # a forked child must not reuse the parent's intra-op thread pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    ev = RRSISEvaluator("dist", distributed=True)
    ev.reset()
    for inp, out in _random_samples()[rank::2]:
        ev.process([inp], [out])
    res = ev.evaluate()
    with open(f"{out_file}.{rank}", "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()


def test_two_process_gloo_equals_one_process(tmp_path):
    # fork: the children reuse the imported modules (spawning would import torch and detectron2 twice more)
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path / "res")), nprocs=2, join=True,
                       start_method="fork")
    ev = RRSISEvaluator("single", distributed=True)
    for inp, out in _random_samples():
        ev.process([inp], [out])
    single = ev.evaluate()
    assert 0 < single["rrsis"]["mIoU"] < 100 and "mIoU-c" in single["rrsis"]
    assert json.loads((tmp_path / "res.0").read_text()) == json.loads(json.dumps(single))
    assert json.loads((tmp_path / "res.1").read_text()) == {}

import json
import logging
import os
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from crobim_d2.data import load_gt_mask
from crobim_d2.data.datasets import load_refs_pickle, load_refsegrs, load_risbench, load_rrsisd


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


@pytest.fixture
def rrsisd_root(tmp_path):
    """Two 8x10 images; refs in train, val, testA and testB; masks as polygons, an RLE and a list of RLEs."""
    img_dir = tmp_path / "images" / "rrsisd" / "JPEGImages"
    img_dir.mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        Image.fromarray(np.full((8, 10, 3), 128, np.uint8)).save(img_dir / name)
    m1 = np.zeros((8, 10), bool)
    m1[2:5, 3:7] = True
    m2 = np.zeros((8, 10), bool)
    m2[6:8, :] = True
    annotations = [
        {"id": 11, "image_id": 1, "categories_id": 3, "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]},
        {"id": 12, "image_id": 1, "categories_id": 4, "segmentation": _rle(m1)},
        {"id": 13, "image_id": 2, "categories_id": 3, "segmentation": [_rle(m2), _rle(m1)]},
        {"id": 14, "image_id": 2, "categories_id": 4, "segmentation": _rle(m2)},
    ]
    instances = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 10},
                   {"id": 2, "file_name": "b.jpg", "height": 8, "width": 10}],
        "annotations": annotations,
        "categories": [{"id": 3, "name": "airplane"}, {"id": 4, "name": "vehicle"}],
    }

    def ref(ref_id, ann_id, image_id, split, sentences):
        return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id":
                next(a["categories_id"] for a in annotations if a["id"] == ann_id), "file_name": "x.jpg",
                "sentences": [{"raw": s, "sent": s.lower(), "tokens": s.split(), "sent_id": 100 * ref_id + i}
                              for i, s in enumerate(sentences)]}

    refs = [ref(1, 11, 1, "train", ["The plane on the left", "a grey plane"]),
            ref(2, 12, 1, "val", ["the car"]),
            ref(3, 13, 2, "testA", ["the bottom plane"]),
            ref(4, 14, 2, "testB", ["bottom vehicle", "  "])]
    (tmp_path / "rrsisd").mkdir()
    with open(tmp_path / "rrsisd" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    (tmp_path / "rrsisd" / "instances.json").write_text(json.dumps(instances))
    return tmp_path, m1, m2


def test_rrsisd_records_and_masks(rrsisd_root, caplog):
    root, m1, m2 = rrsisd_root
    train = load_rrsisd(str(root), "train")
    assert [r["sentence"] for r in train] == ["The plane on the left", "a grey plane"]
    assert [r["sent_id"] for r in train] == [100, 101]
    r = train[0]
    assert (r["height"], r["width"], r["ref_id"], r["ann_id"], r["image_id"]) == (8, 10, 1, 11, 1)
    assert r["category"] == "airplane" and r["file_name"].endswith("JPEGImages/a.jpg")
    poly = load_gt_mask(r)
    assert poly.shape == (8, 10) and poly[3, 3] and not poly[7, 9]
    (val,) = load_rrsisd(str(root), "val")
    assert (load_gt_mask(val) == m1).all() and val["category"] == "vehicle"
    with caplog.at_level(logging.WARNING):
        test = load_rrsisd(str(root), "test")  # testA and testB
    assert [r["sentence"] for r in test] == ["the bottom plane", "bottom vehicle"]
    assert "skipped 1 expression(s) with an empty expression" in caplog.text
    assert (load_gt_mask(test[0]) == (m1 | m2)).all() and (load_gt_mask(test[1]) == m2).all()
    assert test[1]["origin"] == f"{root / 'rrsisd' / 'refs(unc).p'}: ref_id 4, sent_id 400"


@pytest.mark.parametrize("polygon, skipped", [
    ([[1, 1, 5, 1, 5]], "has 5 coordinates, an odd number"),
    ([[20, 20, 30, 20, 30, 30]], "lies wholly outside the 8x10 image"),
    ([[-4, 1, 5, 1, 5, 5, -4, 5]], None),
])
def test_rrsisd_polygons_are_checked(rrsisd_root, caplog, polygon, skipped):
    root, _, _ = rrsisd_root
    instances = json.loads((root / "rrsisd" / "instances.json").read_text())
    instances["annotations"][0]["segmentation"] = polygon  # ann 11: the train ref's two sentences
    (root / "rrsisd" / "instances.json").write_text(json.dumps(instances))
    with caplog.at_level(logging.WARNING):
        if skipped:
            with pytest.raises(ValueError, match="rrsisd_train: no usable expression"):
                load_rrsisd(str(root), "train")
            assert "with an invalid polygon mask" in caplog.text
            assert f"ann_id 11: the polygon {skipped}" in caplog.text
        else:
            (record, _) = load_rrsisd(str(root), "train")
            assert "1 polygon mask(s) extend beyond their image and are clipped to it, e.g. ann_id [11]" \
                in caplog.text
            mask = load_gt_mask(record)
            assert mask[1:5, 0:5].all() and mask.sum() == 20


def test_rrsisd_missing_files(rrsisd_root, tmp_path, caplog):
    root, _, _ = rrsisd_root
    missing = r"RRSIS-D annotation file not found at .*nowhere/rrsisd/refs\(unc\).p; .*DETECTRON2_DATASETS"
    with pytest.raises(FileNotFoundError, match=missing):
        load_rrsisd(str(tmp_path / "nowhere"), "train")
    os.remove(root / "images" / "rrsisd" / "JPEGImages" / "b.jpg")
    with caplog.at_level(logging.WARNING):
        assert len(load_rrsisd(str(root), "train")) == 2
        with pytest.raises(ValueError, match="rrsisd_test: no usable expression"):
            load_rrsisd(str(root), "test")
    assert "with a missing image" in caplog.text and "b.jpg" in caplog.text


class _RunsCode:
    def __reduce__(self):
        return os.system, ("touch pwned",)


def test_crafted_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"sentences": [], "payload": _RunsCode()}]))
    with pytest.raises(pickle.UnpicklingError, match=r"asks to import (posix|os)\.system.*refused"):
        load_refs_pickle(str(path))
    assert not (tmp_path / "pwned").exists()
    path.write_bytes(pickle.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="is not a REFER refs file"):
        load_refs_pickle(str(path))


def _phrase_dataset(folder, image_dir, mask_dir, names, suffix, fg_value, lines):
    for sub in (image_dir, mask_dir):
        (folder / sub).mkdir(parents=True)
    masks = {}
    for i, name in enumerate(names):
        Image.fromarray(np.full((6, 9, 3), 40 * i, np.uint8)).save(folder / image_dir / (name + suffix))
        mask = np.zeros((6, 9), np.uint8)
        mask[i : i + 2, 1:4] = fg_value
        mask[5, 8] = 30  # noise below RefSegRS's threshold
        Image.fromarray(mask).save(folder / mask_dir / (name + suffix))
        masks[name] = mask
    (folder / "output_phrase_train.txt").write_text("".join(f"{line}\n" for line in lines))
    return masks


def test_refsegrs(tmp_path, caplog):
    folder = tmp_path / "refsegrs"
    masks = _phrase_dataset(folder, "images", "masks", ["0", "1"], ".tif", 255,
                            ["0 the road on the left", "1 a white car", "1 ", "7 a missing image"])
    with caplog.at_level(logging.WARNING):
        records = load_refsegrs(str(tmp_path), "train")
    expected = [("0", "the road on the left"), ("1", "a white car")]
    assert [(r["image_id"], r["sentence"]) for r in records] == expected
    assert records[1]["file_name"].endswith("refsegrs/images/1.tif") and records[1]["height"] == 6
    for r in records:
        assert (load_gt_mask(r) == (masks[r["image_id"]] > 50)).all()
    assert records[1]["origin"] == f"{folder / 'output_phrase_train.txt'}:2"
    assert "empty expression" in caplog.text and "7.tif" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"refsegrs phrase list not found at .*output_phrase_val.txt"):
        load_refsegrs(str(tmp_path), "val")


def test_risbench(tmp_path):
    folder = tmp_path / "risbench"
    masks = _phrase_dataset(folder, "img_rgb", "mask", ["x_1.png", "x_2.png"], "", 1,
                            ["x_1.png the tank at the top", "x_2.png the small ship near the pier"])
    records = load_risbench(str(tmp_path), "train")
    assert [r["sentence"] for r in records] == ["the tank at the top", "the small ship near the pier"]
    assert (load_gt_mask(records[0]) == (masks["x_1.png"] > 0)).all()
    with pytest.raises(FileNotFoundError, match="risbench image folder not found"):
        os.rename(folder / "img_rgb", folder / "images")
        load_risbench(str(tmp_path), "train")


def _reregister(root):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from crobim_d2.data.datasets import builtin

    builtin_names = ("rrsisd", "refsegrs", "risbench", "synrrsis")
    for name in [n for n in DatasetCatalog.list() if n.split("_")[0] in builtin_names]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    builtin.register_all_public(root)
    builtin.register_all_synrrsis(root)


def test_builtin_names_are_registered_lazily(tmp_path, monkeypatch):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from crobim_d2.data.datasets import builtin

    monkeypatch.delenv("CROBIM_GENERATE_SYNRRSIS", raising=False)
    root = tmp_path / "absent"
    try:
        _reregister(str(root))
        for dataset in ("rrsisd", "refsegrs", "risbench", "synrrsis"):
            for split in ("train", "val", "test"):
                assert MetadataCatalog.get(f"{dataset}_{split}").evaluator_type == "rrsis"
        assert not root.exists()  # registering reads nothing
        with pytest.raises(FileNotFoundError, match=f"{root}/refsegrs/output_phrase_val.txt"):
            DatasetCatalog.get("refsegrs_val")
        # a root other than the default ./datasets (a mistyped DETECTRON2_DATASETS): an error, nothing written
        with pytest.raises(FileNotFoundError, match=f"synrrsis not found at {root}/synrrsis"):
            DatasetCatalog.get("synrrsis_val")
        assert not root.exists()
    finally:
        _reregister(builtin._root)

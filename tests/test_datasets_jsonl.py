import json

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools import mask as mask_utils

from crobim_d2.data import load_gt_mask, load_rrsis_jsonl, register_rrsis_dataset


def _write_jsonl(path, entries):
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


@pytest.fixture
def user_dataset(tmp_path):
    """Two 6x8 images and three expressions whose masks are a PNG, a compressed RLE and a polygon."""
    (tmp_path / "img").mkdir()
    Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.full((6, 8), 40, np.uint8)).save(tmp_path / "img" / "b.png")  # grayscale
    png = np.zeros((6, 8), np.uint8)
    png[1:3, 2:5] = 255
    Image.fromarray(png).save(tmp_path / "a_mask.png")
    rle_mask = np.zeros((6, 8), np.uint8, order="F")
    rle_mask[4:6, 0:8] = 1
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode("ascii")
    entries = [
        {"image": "img/a.png", "expression": "the grey roof", "mask": "a_mask.png", "category": "building"},
        {"image": "img/a.png", "expression": "the bottom strip", "mask": rle, "source": "manual"},
        {"image": "img/b.png", "expression": " the square ", "mask": [[1, 1, 4, 1, 4, 4, 1, 4]]},
    ]
    return _write_jsonl(tmp_path / "ds.jsonl", entries), png > 0, rle_mask > 0


def test_records_and_masks(user_dataset):
    path, png_mask, rle_mask = user_dataset
    records = load_rrsis_jsonl(str(path))
    assert [r["sentence"] for r in records] == ["the grey roof", "the bottom strip", "the square"]
    assert all((r["height"], r["width"]) == (6, 8) for r in records)
    assert [r["image_id"] for r in records] == [0, 0, 1] and [r["sent_id"] for r in records] == [0, 1, 2]
    assert records[0]["category"] == "building" and records[1]["source"] == "manual"
    assert records[0]["file_name"] == str(path.parent / "img" / "a.png")
    assert (load_gt_mask(records[0]) == png_mask).all()
    assert (load_gt_mask(records[1]) == rle_mask).all()
    poly = load_gt_mask(records[2])
    assert poly.dtype == bool and poly.shape == (6, 8) and poly[2, 2] and not poly[0, 0] and not poly[5, 7]


def test_uncompressed_rle_and_image_root(user_dataset, tmp_path):
    m = np.zeros((6, 8), bool)
    m[:, 0] = True  # column-major runs: 6 foreground pixels then 42 background
    entry = {"image": "a.png", "expression": "left column", "mask": {"size": [6, 8], "counts": [0, 6, 42]}}
    other = _write_jsonl(tmp_path / "other.jsonl", [entry])
    (record,) = load_rrsis_jsonl(str(other), image_root=str(tmp_path / "img"))
    assert (load_gt_mask(record) == m).all()


def test_register_is_lazy_and_removable(tmp_path, user_dataset):
    path, _, _ = user_dataset
    missing = tmp_path / "nope.jsonl"
    register_rrsis_dataset("_test_jsonl_missing", str(missing))  # registering does not touch disk
    register_rrsis_dataset("_test_jsonl_ok", str(path))
    try:
        assert MetadataCatalog.get("_test_jsonl_ok").evaluator_type == "rrsis"
        assert len(DatasetCatalog.get("_test_jsonl_ok")) == 3
        with pytest.raises(FileNotFoundError, match="nope.jsonl"):
            DatasetCatalog.get("_test_jsonl_missing")
    finally:
        for name in ("_test_jsonl_missing", "_test_jsonl_ok"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


@pytest.mark.parametrize(
    "entry, error, match",
    [
        ({"image": "img/a.png", "expression": "  ", "mask": "a_mask.png"}, ValueError,
         r"ds2.jsonl:1: empty expression"),
        ({"image": "img/zz.png", "expression": "x", "mask": "a_mask.png"}, FileNotFoundError,
         r"image .*zz.png not found"),
        ({"image": "img/a.png", "expression": "x", "mask": "zz.png"}, FileNotFoundError,
         r"mask file .*zz.png not found"),
        ({"image": "img/a.png", "expression": "x", "mask": "small.png"}, ValueError,
         r"small.png is 3x3 but the image is 6x8"),
        ({"image": "img/a.png", "expression": "x", "mask": {"size": [5, 5], "counts": "00"}}, ValueError,
         "RLE size"),
        ({"image": "img/a.png", "expression": "x", "mask": 3}, ValueError, "'mask' must be"),
        ({"image": "img/a.png", "mask": "a_mask.png"}, ValueError, r"missing key\(s\) \['expression'\]"),
    ],
)
def test_bad_lines_name_the_problem(user_dataset, tmp_path, entry, error, match):
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "small.png")
    bad = _write_jsonl(tmp_path / "ds2.jsonl", [entry])
    with pytest.raises(error, match=match):
        load_rrsis_jsonl(str(bad))


def test_invalid_json_and_unreadable_mask(user_dataset, tmp_path):
    bad = tmp_path / "ds3.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"ds3.jsonl:1: invalid JSON"):
        load_rrsis_jsonl(str(bad))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    record = {"file_name": "x.png", "height": 6, "width": 8, "mask_file": str(tmp_path / "broken.png")}
    with pytest.raises(ValueError, match="Cannot read mask .*broken.png"):
        load_gt_mask(record)
    with pytest.raises(KeyError, match="neither 'mask_file' nor 'segmentation'"):
        load_gt_mask({"file_name": "x.png", "height": 6, "width": 8})
    record = {"file_name": "x.png", "height": 6, "width": 9, "mask_file": str(tmp_path / "a_mask.png")}
    with pytest.raises(ValueError, match="a_mask.png is 6x8 but its image x.png is 6x9"):
        load_gt_mask(record)

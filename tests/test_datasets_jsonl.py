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


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def test_a_line_with_two_mask_sources_is_refused(user_dataset, tmp_path):
    """A stray 'mask_file' used to win over the RLE in 'mask' (resolved against the working directory)."""
    rle = _rle(np.ones((6, 8), bool))
    for stray in ({"mask_file": "a_mask.png"}, {"segmentation": [[1, 1, 4, 1, 4, 4]]}):
        bad = _write_jsonl(tmp_path / "two.jsonl", [
            {"image": "img/a.png", "expression": "the roof", "mask": "a_mask.png"},
            {"image": "img/a.png", "expression": "the pool", "mask": rle, **stray},
        ])
        with pytest.raises(ValueError, match=rf"two.jsonl:2: the line names its mask twice, in 'mask' and in "
                                             rf"\['{next(iter(stray))}'\]"):
            load_rrsis_jsonl(str(bad))
    with pytest.raises(KeyError, match="has both 'mask_file' and 'segmentation'"):
        load_gt_mask({"file_name": "x.png", "height": 6, "width": 8, "mask_file": "m.png",
                      "segmentation": rle})
    only_alias = _write_jsonl(tmp_path / "alias.jsonl", [{"image": "img/a.png", "sentence": "x",
                                                         "mask_file": "a_mask.png"}])
    with pytest.raises(ValueError, match=r"missing key\(s\) \['expression', 'mask'\] \(found 'sentence': the "
                                         r"loader reads 'expression'; found 'mask_file': the loader reads "
                                         r"'mask'\)"):
        load_rrsis_jsonl(str(only_alias))


@pytest.mark.parametrize(
    "polygon, match",
    [
        ([[1, 1, 5, 1, 5, 5, 1]], "the polygon has 7 coordinates, an odd number"),
        ([[1, 1, 5, 1]], r"the polygon has 2 point\(s\); a polygon needs at least 3"),
        ([[1, 1, 5, 1, 5, 5], [1, 1, 2, 2, 3, 3]], "polygon 1 has no area: its points lie on one line"),
        ([[20, 1, 30, 1, 30, 5]], r"the polygon lies wholly outside the 6x8 image \(x in \[20, 30\]"),
        ([[-9, -9, -1, -9, -1, -1]], "the polygon lies wholly outside"),
        # pycocotools wraps coordinates beyond ~4e8 around: unchecked, this one filled the whole image
        ([[0, 3e8, 8, 3e8, 8, 5e8, 0, 5e8]], "the polygon lies wholly outside"),
        ([[1, 1, "5", 1, 5, 5]], "the polygon is not a list of numbers"),
        ([[1, 1, float("nan"), 1, 5, 5]], "the polygon has a coordinate that is not a finite number"),
    ],
)
def test_bad_polygons_name_the_line(user_dataset, tmp_path, polygon, match):
    bad = _write_jsonl(tmp_path / "poly.jsonl", [{"image": "img/a.png", "expression": "x", "mask": polygon}])
    with pytest.raises(ValueError, match=rf"poly.jsonl:1: {match}"):
        load_rrsis_jsonl(str(bad))


def test_polygons_beyond_the_image_are_clipped_and_counted(user_dataset, tmp_path, caplog):
    entries = [{"image": "img/a.png", "expression": "inside", "mask": [[1, 1, 4, 1, 4, 4, 1, 4]]},
               {"image": "img/a.png", "expression": "left part", "mask": [[-3, 0, 2, 0, 2, 6, -3, 6]]},
               {"image": "img/a.png", "expression": "far", "mask": [[4, 2, 4e8, 2, 4e8, 4, 4, 4]]}]
    path = _write_jsonl(tmp_path / "clip.jsonl", entries)
    with caplog.at_level("WARNING", logger="crobim_d2.data.datasets.jsonl"):
        records = load_rrsis_jsonl(str(path))
    assert len(caplog.records) == 1
    expected = "2 polygon mask(s) extend beyond their image and are clipped to it"
    assert f"{expected}, e.g. ['{path}:2', '{path}:3']" in caplog.text
    left = np.zeros((6, 8), bool)
    left[:, :2] = True
    far = np.zeros((6, 8), bool)
    far[2:4, 4:] = True
    assert (load_gt_mask(records[1]) == left).all() and (load_gt_mask(records[2]) == far).all()


def test_jpeg_masks_are_thresholded_with_a_warning(user_dataset, tmp_path, caplog):
    """JPEG noise around a 0/255 mask: > 0 takes it as foreground, > 127 keeps the mask that was saved."""
    mask = np.zeros((6, 8), np.uint8)
    mask[1:5, 2:6] = 255
    Image.fromarray(mask).save(tmp_path / "m.jpg", quality=60)
    assert (np.asarray(Image.open(tmp_path / "m.jpg")) > 0).sum() > (mask > 0).sum()  # the noise is there
    Image.fromarray(mask).save(tmp_path / "jpeg_named.png", format="JPEG", quality=60)
    entries = [{"image": "img/a.png", "expression": "a", "mask": "m.jpg"},
               {"image": "img/a.png", "expression": "b", "mask": "jpeg_named.png"},
               {"image": "img/a.png", "expression": "c", "mask": "m.jpg", "mask_threshold": 0}]
    path = _write_jsonl(tmp_path / "jpeg.jsonl", entries)
    with caplog.at_level("WARNING", logger="crobim_d2.data.datasets.jsonl"):
        records = load_rrsis_jsonl(str(path))
    assert len(caplog.records) == 1
    assert f"2 mask(s) are JPEG files (lossy), e.g. ['{path}:1', '{path}:2']" in caplog.text
    assert "foreground = value > 127" in caplog.text and "mask_threshold" in caplog.text
    assert records[0]["mask_threshold"] == 127 and records[2]["mask_threshold"] == 0
    assert (load_gt_mask(records[0]) == (mask > 0)).all() and (load_gt_mask(records[1]) == (mask > 0)).all()
    assert load_gt_mask(records[2]).sum() > (mask > 0).sum()  # the user's own threshold is kept


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"height": 600}, r"'height' is 600 but the loader computes 6"),
        ({"width": 8.5}, r"'width' is 8.5 but the loader computes 8"),
        ({"sentence": "another text"}, r"'sentence' is 'another text' but the loader computes 'the roof'"),
        ({"file_name": "img/b.png"}, r"'file_name' is 'img/b.png' but the loader computes '.*img/a.png'"),
        ({"origin": "mine"}, "'origin' is set by the loader"),
        ({"mask": {"size": [6, 8], "counts": [48]}, "mask_threshold": 3},
         "mask_threshold applies to mask image"),
        ({"mask_threshold": -1}, "mask_threshold -1 must be a number >= 0"),
    ],
)
def test_fields_the_loader_computes_must_agree(user_dataset, tmp_path, extra, match):
    entry = {"image": "img/a.png", "expression": "the roof", "mask": "a_mask.png", **extra}
    bad = _write_jsonl(tmp_path / "fields.jsonl", [entry])
    with pytest.raises(ValueError, match=rf"fields.jsonl:1: {match}"):
        load_rrsis_jsonl(str(bad))


def test_agreeing_computed_fields_and_origin(user_dataset, tmp_path):
    entry = {"image": "img/a.png", "expression": " the roof ", "mask": "a_mask.png", "height": 6, "width": 8,
             "sentence": "the roof", "file_name": "img/./a.png"}
    path = _write_jsonl(tmp_path / "ok.jsonl", [entry])
    (record,) = load_rrsis_jsonl(str(path))
    assert record["origin"] == f"{path}:1" and record["file_name"] == str(tmp_path / "img" / "a.png")
    assert (record["height"], record["width"], record["sentence"]) == (6, 8, "the roof")

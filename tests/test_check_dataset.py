"""crobim-check-dataset and DATASETS.CHECK_AT_START on a small dataset with one of each problem."""
import json
import os
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools import mask as mask_utils

from crobim_d2.data import load_rrsis_jsonl, register_rrsis_dataset
from crobim_d2.data.check import check_records, main
from crobim_d2.data.synrrsis import SynRRSISParams, generate_synrrsis
from crobim_d2.data.tokenization import build_tokenizer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "projects", "CroBIM"))
import train_net
from _tiny_train_config import CONFIG, TINY_OPTS

LONG = "the small white storage tank " * 4  # 22 tokens with [CLS] and [SEP]


def _truncated_png(path, array):
    Image.fromarray(array).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def broken(tmp_path):
    """Eight lines: fine, truncated image, empty mask, no known word, too long, polygon beyond the image,
    truncated mask file, an image whose size differs from another line's record."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    _truncated_png(tmp_path / "cut.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    _truncated_png(tmp_path / "cut_mask.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    empty = mask_utils.encode(np.zeros((16, 16), np.uint8, order="F"))
    empty["counts"] = empty["counts"].decode("ascii")
    lines = [
        {"image": "a.png", "expression": "the tank", "mask": "m.png"},
        {"image": "cut.png", "expression": "the ship", "mask": "m.png"},
        {"image": "a.png", "expression": "the pool", "mask": empty},
        {"image": "a.png", "expression": "🚢🚢", "mask": "m.png"},
        {"image": "a.png", "expression": LONG, "mask": "m.png"},
        {"image": "b.png", "expression": "the road", "mask": [[-4, 2, 6, 2, 6, 9, -4, 9]]},
        {"image": "b.png", "expression": "the roof", "mask": "cut_mask.png"},
    ]
    path = tmp_path / "broken.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_report_names_every_problem_with_its_line(broken):
    records = load_rrsis_jsonl(str(broken))  # headers only: the truncated files pass registration
    report = check_records("broken", records, build_tokenizer(""), max_tokens=20, workers=2)
    p = str(broken)
    assert (report.expressions, report.images) == (7, 3)
    assert len(report.errors) == 2
    cut_image = next(e for e in report.errors if "cut.png" in e)
    assert "Cannot read image" in cut_image and "truncated" in cut_image and f"used by {p}:2" in cut_image
    cut_mask = next(e for e in report.errors if "cut_mask.png" in e)
    assert "Cannot read mask" in cut_mask and f"used by {p}:7" in cut_mask
    assert report.empty_masks == [f"{p}:3: empty mask"]
    assert report.no_known_word == [f"{p}:4: '🚢🚢'"]
    assert report.truncated == [f"{p}:5: 22 tokens"]
    assert report.clipped_polygons == [f"{p}:6: polygon beyond the image"]
    text = report.format()
    for line in ("broken: 7 expressions, 3 images", "errors (unreadable or inconsistent files): 2",
                 "empty masks: 1", "expressions with no known word (every token [UNK] or punctuation): 1",
                 "expressions cut by INPUT.MAX_TOKENS=20: 1", "polygon masks clipped to their image: 1"):
        assert f"  {line}" in text or text.startswith(line)


def test_image_size_differing_from_its_record_is_an_error(broken, tmp_path):
    records = load_rrsis_jsonl(str(broken))[:1]
    Image.fromarray(np.zeros((16, 12, 3), np.uint8)).save(tmp_path / "a.png")  # replaced after loading
    report = check_records("resized", records, build_tokenizer(""), max_tokens=20)
    assert report.errors == [f"{tmp_path / 'a.png'} is 16x12 but its records say 16x16 (used by {broken}:1)"]


def test_cli_on_a_jsonl_path_exits_1_and_prints_the_report(broken, capsys):
    assert main([str(broken), "--examples", "1"]) == 1
    out = capsys.readouterr().out
    assert "errors (unreadable or inconsistent files): 2" in out and "... and 1 more" in out
    assert f"{broken}:4: '🚢🚢'" in out
    # the config's INPUT.MAX_TOKENS decides what is cut
    assert main([str(broken), "--config-file", CONFIG, "--opts", "INPUT.MAX_TOKENS", "30"]) == 1
    assert "expressions cut by INPUT.MAX_TOKENS=30: 0" in capsys.readouterr().out


def test_cli_on_a_registered_name_and_a_clean_dataset(tmp_path, capsys):
    generate_synrrsis(str(tmp_path), SynRRSISParams(image_size=32, num_train=1, num_val=1, num_test=2))
    register_rrsis_dataset("_check_clean", str(tmp_path / "synrrsis" / "test.jsonl"))
    try:
        assert main(["_check_clean", str(tmp_path / "synrrsis" / "val.jsonl")]) == 0
    finally:
        DatasetCatalog.remove("_check_clean")
        MetadataCatalog.remove("_check_clean")
    out = capsys.readouterr().out
    assert "_check_clean: " in out and "errors (unreadable or inconsistent files): 0" in out
    assert main(["no_such_dataset"]) == 1
    assert "neither a registered dataset nor a JSON Lines file" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert main([str(bad)]) == 1
    assert f"cannot load: {bad}:1: invalid JSON" in capsys.readouterr().out


def test_cli_help_says_how_to_name_a_dataset(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "registered dataset name" in out and "JSON Lines file" in out and "--config-file" in out


def _train_args(tmp_path, name, *opts):
    args = ["--config-file", CONFIG, "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)",
            *TINY_OPTS, "OUTPUT_DIR", str(tmp_path / "out"), *opts]
    return train_net.argument_parser().parse_args(args)


def test_training_on_unreadable_files_stops_before_the_first_iteration(broken, tmp_path, monkeypatch):
    register_rrsis_dataset("_check_broken", str(broken))

    def no_trainer(cfg):
        raise AssertionError("the trainer must not be built")

    monkeypatch.setattr(train_net, "Trainer", no_trainer)
    try:
        with pytest.raises(ValueError, match=r"\['_check_broken'\] have unreadable or inconsistent files.*"
                                             "DATASETS.CHECK_AT_START False"):
            train_net.main(_train_args(tmp_path, "_check_broken"))
        cfg = train_net.setup(_train_args(tmp_path, "_check_broken", "DATASETS.CHECK_AT_START", "False"))
        assert not cfg.DATASETS.CHECK_AT_START  # skipped: setup returns and training would start
    finally:
        DatasetCatalog.remove("_check_broken")
        MetadataCatalog.remove("_check_broken")

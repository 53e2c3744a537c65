import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from PIL import Image

from crobim_d2.config import add_crobim_config
from crobim_d2.data import RRSISDatasetMapper
from crobim_d2.data.tokenization import build_tokenizer


def _cfg(size=32):
    cfg = get_cfg()
    add_crobim_config(cfg)
    cfg.INPUT.IMAGE_SIZE = size
    cfg.INPUT.MAX_TOKENS = 12
    return cfg


@pytest.fixture
def record(tmp_path):
    img = np.zeros((20, 40), np.uint8)
    img[:, 20:] = 200
    Image.fromarray(img).save(tmp_path / "gray.tif")  # grayscale TIFF
    mask = np.zeros((20, 40), np.uint8)
    mask[:, 20:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return {
        "file_name": str(tmp_path / "gray.tif"), "height": 20, "width": 40, "sentence": "the right half",
        "mask_file": str(tmp_path / "mask.png"), "sent_id": 7, "category": "court",
    }


def test_train_output_contract(record):
    out = RRSISDatasetMapper(_cfg(), is_train=True)(record)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 32, 32)
    assert (out["image"][:, :, :14] == 0).all() and (out["image"][:, :, 18:] == 200).all()
    assert out["lang_tokens"].dtype == torch.int64 and out["lang_tokens"].shape == (12,)
    assert out["lang_mask"].tolist()[:5] == [1, 1, 1, 1, 1] and out["lang_mask"][5:].sum() == 0
    assert (out["height"], out["width"]) == (20, 40)
    assert out["gt_mask"].dtype == torch.uint8 and out["gt_mask"].shape == (32, 32)
    assert set(out["gt_mask"].unique().tolist()) == {0, 1}
    assert out["gt_mask"][:, 16:].all() and not out["gt_mask"][:, :16].any()
    assert out["sent_id"] == 7 and out["category"] == "court" and out["mask_file"] == record["mask_file"]
    assert "image" not in record  # the dataset record is not modified


def test_test_mode_has_no_mask_and_rgba_is_converted(record, tmp_path):
    rgba = np.zeros((20, 40, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = RRSISDatasetMapper(_cfg(), is_train=False)(dict(record, file_name=str(tmp_path / "rgba.png")))
    assert "gt_mask" not in out and out["image"].shape == (3, 32, 32)
    assert (out["image"][0] == 255).all() and (out["image"][1:] == 0).all()


def test_plain_kwargs_and_black_boxes(record):
    mapper = RRSISDatasetMapper(True, tokenizer=build_tokenizer(""), image_size=64, max_tokens=8,
                                black_boxes_prob=1.0, black_boxes_max=2, black_boxes_max_size=0.25)
    image = np.full((64, 64, 3), 255, np.uint8)
    boxed = mapper._black_boxes(image, np.random.default_rng(0))
    zeros = (boxed == 0).all(axis=2)
    assert 0 < zeros.sum() <= 2 * 16 * 16 and (image == 255).all()
    out = mapper(record)
    assert out["image"].shape == (3, 64, 64) and out["lang_tokens"].shape == (8,)
    assert not RRSISDatasetMapper(False, tokenizer=build_tokenizer(""), black_boxes_prob=1.0).black_boxes_prob


def test_config_enables_black_boxes():
    cfg = _cfg()
    assert RRSISDatasetMapper(cfg, True).black_boxes_prob == 0.0
    cfg.INPUT.RANDOM_BLACK_BOXES.ENABLED = True
    assert RRSISDatasetMapper(cfg, True).black_boxes_prob == cfg.INPUT.RANDOM_BLACK_BOXES.PROB


def test_bad_records_name_the_file(record, tmp_path):
    mapper = RRSISDatasetMapper(_cfg(), is_train=True)
    with pytest.raises(ValueError, match="gray.tif is 20x40 but its record says 20x41"):
        mapper(dict(record, width=41))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        mapper(dict(record, file_name=str(tmp_path / "missing.png")))
    with pytest.raises(ValueError, match="Empty referring expression"):
        mapper(dict(record, sentence=" "))


def test_flip_expression_swaps_spatial_words_only():
    from crobim_d2.data.spatial_flip import flip_expression

    s = "The tank left of the Top-Right ship, above the leftmost upper court in the northwest"
    assert flip_expression(s, True, False) == (
        "The tank right of the Top-Left ship, above the rightmost upper court in the northeast"
    )
    assert flip_expression(s, False, True) == (
        "The tank left of the Bottom-Right ship, below the leftmost lower court in the southwest"
    )
    assert flip_expression(s, True, True) == (
        "The tank right of the Bottom-Left ship, below the rightmost lower court in the southeast"
    )
    assert flip_expression(s, False, False) == s
    # Whole words only; words that merely contain a spatial word are kept.
    assert flip_expression("the leftover bright stopper", True, True) == "the leftover bright stopper"
    assert flip_expression("LEFT", True, False) == "RIGHT"


def test_spatial_flip_moves_mask_and_rewrites_expression(record):
    cfg = _cfg()
    cfg.INPUT.SPATIAL_FLIP.ENABLED = True
    cfg.INPUT.SPATIAL_FLIP.HORIZONTAL_PROB = 1.0
    cfg.INPUT.SPATIAL_FLIP.VERTICAL_PROB = 0.0
    out = RRSISDatasetMapper(cfg, is_train=True)(record)
    assert out["sentence"] == "the left half" and record["sentence"] == "the right half"
    assert out["gt_mask"][:, :16].all() and not out["gt_mask"][:, 16:].any()  # the bright half moved left
    assert (out["image"][:, :, :14] == 200).all() and (out["image"][:, :, 18:] == 0).all()
    tokenizer = build_tokenizer(cfg.MODEL.TEXT_ENCODER.WEIGHTS)
    assert out["lang_tokens"][1] == tokenizer.convert_tokens_to_ids("the")
    assert tokenizer.convert_tokens_to_ids("left") in out["lang_tokens"].tolist()
    # Evaluation never flips, and the flip probabilities must be probabilities.
    test = RRSISDatasetMapper(cfg, is_train=False)(record)
    assert test["sentence"] == "the right half" and (test["image"][:, :, 18:] == 200).all()
    cfg.INPUT.SPATIAL_FLIP.VERTICAL_PROB = 1.5
    with pytest.raises(ValueError, match="vflip_prob=1.5 is not a probability"):
        RRSISDatasetMapper(cfg, is_train=True)


def test_spatial_flip_probability_is_used(record):
    torch.manual_seed(0)
    mapper = RRSISDatasetMapper(True, tokenizer=build_tokenizer(""), image_size=16, max_tokens=8,
                                hflip_prob=0.5, vflip_prob=0.0)
    flipped = sum(mapper(record)["sentence"] == "the left half" for _ in range(200))
    assert 70 < flipped < 130

"""Turns an RRSIS record into the model's input: resized image, tokens, and (training) the resized mask."""
import copy
from typing import Any

import numpy as np
import torch
from detectron2.config import configurable
from PIL import Image

from .images import read_image_rgb
from .masks import load_gt_mask
from .spatial_flip import flip_array, flip_expression
from .tokenization import build_tokenizer, encode_expression

__all__ = ["RRSISDatasetMapper", "prepare_test_input", "resize_image"]


def resize_image(image: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> (S, S, 3), bilinear (PIL's, antialiased when shrinking)."""
    return np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR))


def _model_input(image: np.ndarray, expression: str, tokenizer, max_tokens: int) -> dict[str, Any]:
    """A resized (S, S, 3) image and an expression in the model's layout: uint8 (3, S, S) and int64 tokens."""
    tokens, mask = encode_expression(tokenizer, expression, max_tokens)
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        "lang_tokens": tokens,
        "lang_mask": mask,
    }


def prepare_test_input(
    image: np.ndarray, expression: str, *, tokenizer, image_size: int, max_tokens: int
) -> dict[str, Any]:
    """The test-time input of CroBIM for an RGB uint8 (H, W, 3) image: ``image`` uint8 (3, S, S) resized with
    :func:`resize_image`, ``lang_tokens`` / ``lang_mask`` (T,), and ``height`` / ``width`` = H, W (the size the
    model returns the probability at). The mapper (evaluation) and ``RRSISPredictor`` both call it.
    """
    height, width = image.shape[:2]
    inputs = _model_input(resize_image(image, image_size), expression, tokenizer, max_tokens)
    return {**inputs, "height": height, "width": width}


class RRSISDatasetMapper:
    """Read the image as RGB, resize it to ``image_size`` squared (bilinear), tokenize the expression.

    Output: the record's fields plus ``image`` uint8 (3, S, S), ``lang_tokens`` / ``lang_mask`` int64 (T,),
    ``height`` / ``width`` of the original image, and in training ``gt_mask`` uint8 (S, S) resized with
    nearest neighbour. Augmentation is off by default as in the paper; two kinds can be enabled for training:
    RMSIN's random black boxes (zeroed rectangles on the image, the mask unchanged), and flips that swap the
    expression's spatial words (left/right, top/bottom, above/below, ...; ``spatial_flip.flip_expression``)
    so that the flipped image and mask still match it.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        tokenizer,
        image_size: int = 480,
        max_tokens: int = 20,
        black_boxes_prob: float = 0.0,
        black_boxes_max: int = 3,
        black_boxes_max_size: float = 0.2,
        hflip_prob: float = 0.0,
        vflip_prob: float = 0.0,
    ):
        self.is_train = is_train
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.max_tokens = max_tokens
        self.black_boxes_prob = black_boxes_prob if is_train else 0.0
        self.black_boxes_max = black_boxes_max
        self.black_boxes_max_size = black_boxes_max_size
        for name, p in (("hflip_prob", hflip_prob), ("vflip_prob", vflip_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}={p} is not a probability (INPUT.SPATIAL_FLIP); use a value in [0, 1].")
        self.hflip_prob = hflip_prob if is_train else 0.0
        self.vflip_prob = vflip_prob if is_train else 0.0

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict[str, Any]:
        boxes = cfg.INPUT.RANDOM_BLACK_BOXES
        flip = cfg.INPUT.SPATIAL_FLIP
        return {
            "is_train": is_train,
            "tokenizer": build_tokenizer(cfg.MODEL.TEXT_ENCODER.WEIGHTS),
            "image_size": cfg.INPUT.IMAGE_SIZE,
            "max_tokens": cfg.INPUT.MAX_TOKENS,
            "black_boxes_prob": boxes.PROB if boxes.ENABLED else 0.0,
            "black_boxes_max": boxes.MAX_BOXES,
            "black_boxes_max_size": boxes.MAX_SIZE,
            "hflip_prob": flip.HORIZONTAL_PROB if flip.ENABLED else 0.0,
            "vflip_prob": flip.VERTICAL_PROB if flip.ENABLED else 0.0,
        }

    def _black_boxes(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = rng or np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        if rng.random() >= self.black_boxes_prob:
            return image
        image = image.copy()
        size = image.shape[0]
        max_side = max(1, int(self.black_boxes_max_size * size))
        for _ in range(int(rng.integers(1, self.black_boxes_max + 1))):
            h, w = rng.integers(1, max_side + 1, size=2)
            y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            image[y : y + h, x : x + w] = 0
        return image

    def _draw_flips(self) -> tuple[bool, bool]:
        """Whether to flip horizontally / vertically (Detectron2 seeds torch's generator per worker)."""
        if self.hflip_prob == 0 and self.vflip_prob == 0:
            return False, False
        u = torch.rand(2).tolist()
        return u[0] < self.hflip_prob, u[1] < self.vflip_prob

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        record = copy.deepcopy(dataset_dict)
        image = read_image_rgb(record["file_name"])
        height, width = image.shape[:2]
        if (record.get("height", height), record.get("width", width)) != (height, width):
            raise ValueError(
                f"{record['file_name']} is {height}x{width} but its record says "
                f"{record['height']}x{record['width']}; fix the dataset's height/width."
            )
        record["height"], record["width"] = height, width
        if not self.is_train:
            record.update(
                prepare_test_input(
                    image,
                    record["sentence"],
                    tokenizer=self.tokenizer,
                    image_size=self.image_size,
                    max_tokens=self.max_tokens,
                )
            )
            return record
        image = resize_image(image, self.image_size)
        if self.black_boxes_prob > 0:
            image = self._black_boxes(image)
        hflip, vflip = self._draw_flips()
        if hflip or vflip:
            image = flip_array(image, hflip, vflip)
            record["sentence"] = flip_expression(record["sentence"], hflip, vflip)
        record.update(_model_input(image, record["sentence"], self.tokenizer, self.max_tokens))
        size = (self.image_size, self.image_size)
        mask = Image.fromarray(load_gt_mask(record).astype(np.uint8)).resize(size, Image.NEAREST)
        record["gt_mask"] = torch.from_numpy(flip_array(np.array(mask, dtype=np.uint8), hflip, vflip))
        return record

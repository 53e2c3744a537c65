"""Inference on one image and one expression with a trained CroBIM."""
import logging
import os

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from PIL import Image

from .checkpoint import load_inference_weights
from .data.tokenization import build_tokenizer, encode_expression
from .engine.allocator import apply_cpu_malloc_reuse


class RRSISPredictor:
    """``predictor(image, expression)`` -> foreground probability (H, W) float32 at the image's resolution.

    Builds ``cfg.MODEL.META_ARCHITECTURE`` on ``cfg.MODEL.DEVICE``, loads ``cfg.MODEL.WEIGHTS``, and prepares
    inputs as ``RRSISDatasetMapper`` does at test time (bilinear resize to ``INPUT.IMAGE_SIZE``, the config's
    tokenizer and ``INPUT.MAX_TOKENS``).
    """

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg.clone()
        apply_cpu_malloc_reuse(self.cfg)
        self.model = build_model(self.cfg)
        self.model.eval()
        weights = cfg.MODEL.WEIGHTS
        if not weights:
            logging.getLogger(__name__).warning("MODEL.WEIGHTS is empty: predicting with an untrained model.")
        elif "://" not in weights and not os.path.isfile(weights):
            raise FileNotFoundError(
                f"MODEL.WEIGHTS={weights!r} does not exist; give a checkpoint written by train_net.py "
                "(e.g. output/.../model_final.pth)."
            )
        load_inference_weights(self.model, weights, allow_partial=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS)
        self.tokenizer = build_tokenizer(cfg.MODEL.TEXT_ENCODER.WEIGHTS)
        self.image_size = cfg.INPUT.IMAGE_SIZE
        self.max_tokens = cfg.INPUT.MAX_TOKENS

    def __call__(self, image: np.ndarray, expression: str) -> np.ndarray:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(
                f"RRSISPredictor needs an RGB uint8 array (H, W, 3), got {got}; convert e.g. with "
                "crobim_d2.data.read_image_rgb(path) or np.asarray(PIL.Image.open(path).convert('RGB'))."
            )
        if not isinstance(expression, str) or not expression.strip():
            raise ValueError(f"RRSISPredictor needs a non-empty referring expression, got {expression!r}.")
        height, width = image.shape[:2]
        size = (self.image_size, self.image_size)
        resized = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        tokens, mask = encode_expression(self.tokenizer, expression, self.max_tokens)
        inputs = {
            "image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))),
            "lang_tokens": tokens,
            "lang_mask": mask,
            "height": height,
            "width": width,
        }
        with torch.no_grad():
            prob = self.model([inputs])[0]["ref_seg"]
        return prob.to("cpu", torch.float32).numpy()

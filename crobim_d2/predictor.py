"""Inference on one image and one expression with a trained CroBIM."""

import logging
from collections.abc import Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from .checkpoint import load_inference_weights
from .data.dataset_mapper import prepare_test_input
from .data.tokenization import build_tokenizer
from .inference import check_inference_config, load_inference_config


class RRSISPredictor:
    """``predictor(image, expression)`` -> foreground probability (H, W) float32 at the image's resolution.

    Builds ``cfg.MODEL.META_ARCHITECTURE`` on ``cfg.MODEL.DEVICE``, loads ``cfg.MODEL.WEIGHTS``, and prepares
    inputs with :func:`crobim_d2.data.prepare_test_input`, as ``RRSISDatasetMapper`` does at test time, so a
    prediction equals the evaluation loop's on the same image and expression. Process-wide settings
    (``CPU_MALLOC_REUSE``) are left to the program: entry points apply them, a library class does not.
    """

    def __init__(self, cfg: CfgNode):
        check_inference_config(cfg)
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        weights = cfg.MODEL.WEIGHTS
        if not weights:
            logging.getLogger(__name__).warning("MODEL.WEIGHTS is empty: predicting with an untrained model.")
        load_inference_weights(self.model, weights, allow_partial=cfg.MODEL.ALLOW_PARTIAL_WEIGHTS)
        self.tokenizer = build_tokenizer(cfg.MODEL.TEXT_ENCODER.WEIGHTS)
        self.image_size = cfg.INPUT.IMAGE_SIZE
        self.max_tokens = cfg.INPUT.MAX_TOKENS

    @classmethod
    def from_config_file(
        cls,
        config_file: str,
        opts: Sequence[str] = (),
        *,
        weights: str | None = None,
        device: str | None = None,
    ) -> "RRSISPredictor":
        """A predictor for :func:`crobim_d2.inference.load_inference_config` of these arguments."""
        return cls(load_inference_config(config_file, opts, weights=weights, device=device))

    def __call__(self, image: np.ndarray, expression: str) -> np.ndarray:
        return self._predict(image, expression, full_resolution=True)

    def predict_at_model_size(self, image: np.ndarray, expression: str) -> np.ndarray:
        """Foreground probability (S, S) float32 at ``INPUT.IMAGE_SIZE``, before the resize to the image's
        size (which large-scene callers do window by window)."""
        return self._predict(image, expression, full_resolution=False)

    def _predict(self, image: np.ndarray, expression: str, full_resolution: bool) -> np.ndarray:
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
        ):
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(
                f"RRSISPredictor needs an RGB uint8 array (H, W, 3), got {got}; read files with "
                "crobim_d2.geo.read_scene(path).read() (any raster crobim-predict reads) or "
                "crobim_d2.data.read_image_rgb(path)."
            )
        if not isinstance(expression, str) or not expression.strip():
            raise ValueError(f"RRSISPredictor needs a non-empty referring expression, got {expression!r}.")
        inputs = prepare_test_input(
            image,
            expression,
            tokenizer=self.tokenizer,
            image_size=self.image_size,
            max_tokens=self.max_tokens,
        )
        if not full_resolution:
            inputs["height"] = inputs["width"] = self.image_size
        with torch.no_grad():
            prob = self.model([inputs])[0]["ref_seg"]
        return prob.to("cpu", torch.float32).numpy()

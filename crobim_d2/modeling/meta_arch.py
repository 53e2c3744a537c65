"""CroBIM meta-architecture (Dong et al., arXiv 2410.08613, Sec. IV, Fig. 5).

images -> backbone -> V_1..V_4 -> CAPM -> prompts P_v -> BERT([T; P_v]) -> L_v -> LGFA -> MID -> mask logits.
Any Detectron2 backbone whose ``output_shape()`` has the four ``MODEL.CROBIM.IN_FEATURES`` works.
"""

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from torch import nn

from ..precision import PRECISIONS, autocast_dtype
from .capm import ContextAwarePromptModulation
from .layers.linear import set_onednn_policy
from .lgfa import LanguageGuidedFeatureAggregation
from .loss import crobim_loss
from .mid import MutualInteractionDecoder
from .text_encoder import TextEncoder

LGFA_LANGUAGES = ("words_and_prompts", "words")


@META_ARCH_REGISTRY.register()
class CroBIM(nn.Module):
    """Cross-modal bidirectional interaction model for referring remote sensing image segmentation."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        text_encoder: TextEncoder,
        capm: ContextAwarePromptModulation,
        lgfa: LanguageGuidedFeatureAggregation,
        mid: MutualInteractionDecoder,
        in_features: list[str],
        pixel_mean: list[float],
        pixel_std: list[float],
        image_size: int = 480,
        loss_lambda: float = 0.9,
        inference_dtype: str = "auto",
        lgfa_language: str = "words_and_prompts",
        onednn_linear: str = "auto",
    ):
        """``inference_dtype``: one of ``crobim_d2.precision.PRECISIONS``; "auto" lets the device decide.
        ``lgfa_language``: what LGFA's keys and values read, "words_and_prompts" (all of L_v) or "words"
        (L_v without the N_p prompt tokens, Eq. 4's L); MID always reads all of L_v. ``onednn_linear``: where
        the CPU runs linear layers on oneDNN, one of ``layers.linear.POLICIES`` (``layers/linear.py``)."""
        super().__init__()
        if inference_dtype not in PRECISIONS:
            raise ValueError(
                f"MODEL.CROBIM.INFERENCE_DTYPE={inference_dtype!r}; use one of {list(PRECISIONS)}."
            )
        if not 0.0 <= loss_lambda <= 1.0:
            raise ValueError(f"MODEL.CROBIM.LOSS_LAMBDA={loss_lambda} must lie in [0, 1] (Eq. 18).")
        if lgfa_language not in LGFA_LANGUAGES:
            raise ValueError(f"MODEL.CROBIM.LGFA_LANGUAGE={lgfa_language!r}; use one of {LGFA_LANGUAGES}.")
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError("MODEL.PIXEL_MEAN and MODEL.PIXEL_STD need 3 values (RGB).")
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.capm = capm
        self.lgfa = lgfa
        self.mid = mid
        self.in_features = list(in_features)
        self.image_size = image_size
        self.loss_lambda = loss_lambda
        self.inference_dtype = inference_dtype
        self.lgfa_language = lgfa_language
        set_onednn_policy(self, onednn_linear)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg) -> dict:
        backbone = build_backbone(cfg)
        input_shape = backbone_features(backbone, cfg.MODEL.CROBIM.IN_FEATURES)
        in_channels = [input_shape[f].channels for f in cfg.MODEL.CROBIM.IN_FEATURES]  # C_1..C_4
        text_encoder = TextEncoder(cfg)
        text_dim = text_encoder.hidden_size
        return {
            "backbone": backbone,
            "text_encoder": text_encoder,
            "capm": ContextAwarePromptModulation(cfg, in_channels, text_dim),
            "lgfa": LanguageGuidedFeatureAggregation(cfg, in_channels, text_dim),
            "mid": MutualInteractionDecoder(cfg, in_channels, text_dim),
            "in_features": cfg.MODEL.CROBIM.IN_FEATURES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "image_size": cfg.INPUT.IMAGE_SIZE,
            "loss_lambda": cfg.MODEL.CROBIM.LOSS_LAMBDA,
            "inference_dtype": cfg.MODEL.CROBIM.INFERENCE_DTYPE,
            "lgfa_language": cfg.MODEL.CROBIM.LGFA_LANGUAGE,
            "onednn_linear": cfg.MODEL.CROBIM.ONEDNN_LINEAR,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: list[dict]):
        """Training: {"loss_ce", "loss_dice"} (Eq. 18). Eval: [{"ref_seg": probability (height, width)}]."""
        images = self.preprocess_images(batched_inputs)
        lang_tokens = torch.stack([x["lang_tokens"] for x in batched_inputs]).to(self.device)
        lang_mask = torch.stack([x["lang_mask"] for x in batched_inputs]).to(self.device)
        if self.training:
            logits = self.predict_logits(images, lang_tokens, lang_mask)
            targets = self.preprocess_masks(batched_inputs)
            return crobim_loss(logits, targets, self.loss_lambda)  # Eq. 18, on upsampled logits
        dtype = autocast_dtype(self.device, self.inference_dtype)
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with autocast:
            logits = self.predict_logits(images, lang_tokens, lang_mask)
        logits = F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        probs = logits.sigmoid()
        return [
            {"ref_seg": resize_probability(prob, (int(x["height"]), int(x["width"])))}
            for prob, x in zip(probs, batched_inputs)
        ]

    def predict_logits(
        self, images: torch.Tensor, lang_tokens: torch.Tensor, lang_mask: torch.Tensor
    ) -> torch.Tensor:
        """Normalized images (N,3,S,S), tokens (N,T) -> mask logits (N,1,S/4,S/4)."""
        features = self.backbone(images)
        features = [features[f] for f in self.in_features]  # V_1..V_4
        prompts = self.capm(features)  # P_v, Eq. 1-2
        lang, mask = self.text_encoder(lang_tokens, lang_mask, prompts)  # L_v
        words = lang.shape[1] if self.lgfa_language == "words_and_prompts" else lang_tokens.shape[1]
        features = self.lgfa(features, lang[:, :words], mask[:, :words])  # Eq. 3-13
        return self.mid(features, lang, mask)  # Eq. 14-17

    def preprocess_images(self, batched_inputs: list[dict]) -> torch.Tensor:
        """uint8 RGB (3,S,S) -> normalized float (N,3,S,S); other sizes are refused, not resized a second time."""
        images = []
        for x in batched_inputs:
            image = x["image"]
            if tuple(image.shape) != (3, self.image_size, self.image_size):
                raise ValueError(
                    f"CroBIM takes images of shape (3, {self.image_size}, {self.image_size}) "
                    f"(INPUT.IMAGE_SIZE={self.image_size}), got {tuple(image.shape)}; prepare them with "
                    "crobim_d2.data.prepare_test_input (RRSISDatasetMapper and RRSISPredictor do)."
                )
            image = image.to(self.device).float()
            images.append((image - self.pixel_mean) / self.pixel_std)
        return torch.stack(images)

    def preprocess_masks(self, batched_inputs: list[dict]) -> torch.Tensor:
        if "gt_mask" not in batched_inputs[0]:
            raise KeyError(
                "CroBIM training needs 'gt_mask' in each input; use RRSISDatasetMapper(cfg, is_train=True)."
            )
        masks = []
        for x in batched_inputs:
            mask = x["gt_mask"].to(self.device).float()
            if mask.shape[-2:] != (self.image_size, self.image_size):
                mask = F.interpolate(mask[None, None], size=(self.image_size,) * 2, mode="nearest")[0, 0]
            masks.append(mask)
        return torch.stack(masks)


def backbone_features(backbone: Backbone, in_features: list[str]) -> dict:
    """The backbone's ShapeSpecs of V_1..V_4, checked against MODEL.CROBIM.IN_FEATURES."""
    shapes = backbone.output_shape()
    missing = [f for f in in_features if f not in shapes]
    if len(in_features) != 4 or missing:
        raise ValueError(
            f"MODEL.CROBIM.IN_FEATURES={list(in_features)} must name 4 of the backbone's outputs "
            f"{sorted(shapes)} (strides 4/8/16/32 for V_1..V_4); set the backbone's OUT_FEATURES accordingly."
        )
    strides = [shapes[f].stride for f in in_features]
    if strides != sorted(strides):
        raise ValueError(
            f"MODEL.CROBIM.IN_FEATURES={list(in_features)} must go from fine to coarse, got strides {strides}."
        )
    return {f: shapes[f] for f in in_features}


def resize_probability(prob: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1,S,S) probability -> (height, width) float32."""
    if prob.shape[-2:] != size:
        prob = F.interpolate(prob[None], size=size, mode="bilinear", align_corners=False)[0]
    return prob[0]

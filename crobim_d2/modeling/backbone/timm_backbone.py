"""Any timm architecture as a Detectron2 backbone: four of its feature levels become ``res2..res5``.

``MODEL.TIMM.NAME`` is the timm model (``mobilenetv2_100``, ``tf_efficientnet_lite0``, ``resnet50``, ...),
``MODEL.TIMM.OUT_INDICES`` the four timm feature levels (``features_only`` indices) that become V_1..V_4,
``MODEL.TIMM.WEIGHTS`` its pretrained weights (``timm_weights.py``). Weights load strictly: the file must match
the whole timm model (its classifier included), and every parameter of the feature extractor must come from
it; anything else is an error listing the keys. State-dict layout under the meta-arch prefix ``backbone.``:
``timm.<timm features_only key>``.
"""
import logging
from collections.abc import Sequence

import timm
import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .timm_weights import OFFLINE_IMAGE_WEIGHTS, read_timm_state_dict

STAGE_NAMES = ("res2", "res3", "res4", "res5")
logger = logging.getLogger(__name__)


def _key_list(keys: Sequence[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_pretrained_features(features: nn.Module, name: str, weights: str) -> None:
    """Load ``weights`` (see ``timm_weights.read_timm_state_dict``) into a timm ``features_only`` model.

    The state dict must load into the whole classification model ``name`` with no key missing, unexpected or
    of another shape, and must cover every entry of ``features``; otherwise ``ValueError`` lists the keys.
    """
    state = read_timm_state_dict(weights, name)
    full = timm.create_model(name, pretrained=False).state_dict()
    missing, unexpected = set(full) - set(state), set(state) - set(full)
    shapes = [k for k in set(full) & set(state) if full[k].shape != state[k].shape]
    own = features.state_dict()
    uncovered = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if missing or unexpected or shapes or uncovered:
        problems = [
            f"{label}: {_key_list(keys)}"
            for label, keys in (
                ("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes),
                ("feature entries not in the file", uncovered),
            )
            if keys
        ]
        raise ValueError(
            f"MODEL.TIMM.WEIGHTS={weights!r} does not match the timm model {name!r} ("
            + "; ".join(problems)
            + "). Check MODEL.TIMM.NAME, or convert the checkpoint to timm's key names."
        )
    features.load_state_dict({k: state[k] for k in own}, strict=True)


@BACKBONE_REGISTRY.register()
class D2TimmBackbone(Backbone):
    """A timm ``features_only`` model with NCHW outputs ``res2..res5`` at its levels' strides."""

    @configurable
    def __init__(
        self,
        *,
        name: str,
        out_indices: Sequence[int] = (1, 2, 3, 4),
        weights: str = "",
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        freeze_bn: bool = True,
        channels_last: bool = False,
    ):
        """``freeze_bn``: batch norms keep their (pretrained) statistics in training; their affine
        parameters still learn. Small per-process batches give poor batch statistics.
        ``channels_last``: run the model in NHWC memory layout, which oneDNN's depthwise and pointwise
        convolutions run faster on CPUs; the outputs are NCHW either way."""
        super().__init__()
        if len(out_indices) != 4:
            raise ValueError(f"MODEL.TIMM.OUT_INDICES={list(out_indices)} must name 4 timm feature levels.")
        kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate > 0 else {}
        try:
            self.timm = timm.create_model(
                name, pretrained=False, features_only=True, out_indices=tuple(out_indices), in_chans=in_chans,
                **kwargs,
            )
        except RuntimeError as e:  # unknown model name
            raise ValueError(f"MODEL.TIMM.NAME={name!r}: {e}. List names with timm.list_models().") from e
        except (IndexError, AssertionError) as e:
            raise ValueError(
                f"MODEL.TIMM.OUT_INDICES={list(out_indices)} are not feature levels of {name!r} ({e})."
            ) from e
        if weights:
            load_pretrained_features(self.timm, name, weights)
        self.freeze_bn = freeze_bn
        self.channels_last = channels_last
        if channels_last:
            self.timm.to(memory_format=torch.channels_last)
        info = self.timm.feature_info
        self._out_features = list(STAGE_NAMES)
        self._out_feature_channels = dict(zip(STAGE_NAMES, info.channels()))
        self._out_feature_strides = dict(zip(STAGE_NAMES, info.reduction()))

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        t = cfg.MODEL.TIMM
        offline = OFFLINE_IMAGE_WEIGHTS.get(t.WEIGHTS)
        if offline is not None and (
            tuple(cfg.MODEL.PIXEL_MEAN) != offline.pixel_mean or tuple(cfg.MODEL.PIXEL_STD) != offline.pixel_std
        ):
            logger.warning(
                f"MODEL.TIMM.WEIGHTS={t.WEIGHTS!r} was trained on inputs normalised with mean {offline.pixel_mean} "
                f"and std {offline.pixel_std} (RGB, 0-255), but MODEL.PIXEL_MEAN / PIXEL_STD are "
                f"{list(cfg.MODEL.PIXEL_MEAN)} / {list(cfg.MODEL.PIXEL_STD)}."
            )
        return {
            "name": t.NAME,
            "out_indices": t.OUT_INDICES,
            "weights": t.WEIGHTS,
            "in_chans": input_shape.channels,
            "drop_path_rate": t.DROP_PATH_RATE,
            "freeze_bn": t.FREEZE_BN,
            "channels_last": t.CHANNELS_LAST,
        }

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs = {}
        for name, feature in zip(STAGE_NAMES, self.timm(x)):
            channels = self._out_feature_channels[name]
            if feature.shape[1] != channels and feature.shape[-1] == channels:  # NHWC (e.g. Swin in timm)
                feature = feature.permute(0, 3, 1, 2)
            outs[name] = feature.contiguous()
        return outs

    @property
    def size_divisibility(self) -> int:
        return max(self._out_feature_strides.values())

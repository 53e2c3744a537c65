"""ConvNeXt backbone (timm) returning ``res2..res5`` for Detectron2.

State-dict layout (what checkpoint converters must produce, under the meta-arch prefix ``backbone.``):

- ``convnext.<key>``: the timm ``ConvNeXt``'s own keys (``stem.*``, ``stages.{i}.downsample.*``,
  ``stages.{i}.blocks.{j}.*``). Official ConvNeXt checkpoints (``downsample_layers.*``, ``stages.{i}.{j}.*``)
  convert with ``timm.models.convnext.checkpoint_filter_fn``. timm's ``head`` (and its norm) is removed.
- ``norm{i}.{weight,bias}``: one channels-first LayerNorm per returned stage ``i`` (as in ConvNeXt's
  detection/segmentation backbone); new (ones/zeros) when converting an ImageNet classification checkpoint.
"""

from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from timm.layers import LayerNorm2d
from timm.models.convnext import ConvNeXt
from torch import nn

from ..layers.conv import use_fast_depthwise
from ..layers.linear import use_onednn_linears

STAGE_NAMES = ("res2", "res3", "res4", "res5")


@BACKBONE_REGISTRY.register()
class D2ConvNeXt(Backbone):
    """timm ConvNeXt (ConvNeXt-B by default) with NCHW outputs at strides 4/8/16/32."""

    @configurable
    def __init__(
        self,
        *,
        in_chans: int = 3,
        depths: Sequence[int] = (3, 3, 27, 3),
        dims: Sequence[int] = (128, 256, 512, 1024),
        drop_path_rate: float = 0.3,
        out_features: Sequence[str] = STAGE_NAMES,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(
                f"MODEL.CONVNEXT.DEPTHS and MODEL.CONVNEXT.DIMS need 4 entries, got {list(depths)} and {list(dims)}."
            )
        unknown = [f for f in out_features if f not in STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(
                f"MODEL.CONVNEXT.OUT_FEATURES={list(out_features)} must be a non-empty subset of {STAGE_NAMES}."
            )
        self._out_features = [f for f in STAGE_NAMES if f in out_features]
        self._stage_ids = [STAGE_NAMES.index(f) for f in self._out_features]
        self.convnext = ConvNeXt(
            in_chans=in_chans,
            num_classes=0,
            depths=tuple(depths),
            dims=tuple(dims),
            drop_path_rate=drop_path_rate,
        )
        # Only the stages up to the deepest returned one exist: no parameter goes without a gradient.
        self.convnext.stages = self.convnext.stages[: max(self._stage_ids) + 1]
        self.convnext.head = nn.Identity()
        self.convnext.set_grad_checkpointing(use_checkpoint)
        use_onednn_linears(self.convnext)  # CPU speed only; the same parameters and outputs
        use_fast_depthwise(self.convnext)  # the 7x7 depthwise convolutions: a faster CPU backward, same gradients
        for i in self._stage_ids:
            self.add_module(f"norm{i}", LayerNorm2d(dims[i], eps=1e-6))
        self._out_feature_channels = {STAGE_NAMES[i]: dims[i] for i in self._stage_ids}
        self._out_feature_strides = {STAGE_NAMES[i]: 4 * 2**i for i in self._stage_ids}

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        return {
            "in_chans": input_shape.channels,
            "depths": cfg.MODEL.CONVNEXT.DEPTHS,
            "dims": cfg.MODEL.CONVNEXT.DIMS,
            "drop_path_rate": cfg.MODEL.CONVNEXT.DROP_PATH_RATE,
            "out_features": cfg.MODEL.CONVNEXT.OUT_FEATURES,
            "use_checkpoint": cfg.MODEL.CONVNEXT.USE_CHECKPOINT,
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.convnext.stem(x)
        outs = {}
        for i, stage in enumerate(self.convnext.stages):
            x = stage(x)
            if i in self._stage_ids:
                outs[STAGE_NAMES[i]] = getattr(self, f"norm{i}")(x)
        return outs

    @property
    def size_divisibility(self) -> int:
        return 32

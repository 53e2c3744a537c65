"""Swin Transformer backbone (timm) returning ``res2..res5`` for Detectron2.

State-dict layout (what checkpoint converters must produce, under the meta-arch prefix ``backbone.``):

- ``swin.<key>``: the timm ``SwinTransformer``'s own keys (``patch_embed.*``, ``layers.{i}.downsample.*``,
  ``layers.{i}.blocks.{j}.*``). timm puts patch merging at the *start* of stage ``i >= 1``; official Swin
  checkpoints put it at the end of stage ``i - 1``: convert them with
  ``timm.models.swin_transformer.checkpoint_filter_fn``. timm's final ``norm`` and ``head`` are removed.
- ``norm{i}.{weight,bias}``: one LayerNorm per returned stage ``i`` (as in Swin's detection backbone, which
  LAVT-style RRSIS models inherit); new (ones/zeros) when converting an ImageNet classification checkpoint.

Window size: timm pads a stage whose side is not a multiple of the window (at 480 input, window 12: sides
120/60/30/15, so stages 3 and 4 are padded to 36 and 24) and shrinks the window to the side where the side
is not larger than the window (small test images), dropping the shift there. The image side must be a
multiple of 32 (patch 4, then three 2x patch mergings).
"""

from collections.abc import Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from ..layers.linear import use_onednn_linears

STAGE_NAMES = ("res2", "res3", "res4", "res5")


@BACKBONE_REGISTRY.register()
class D2SwinTransformer(Backbone):
    """timm Swin Transformer (Swin-B, window 12 by default) with NCHW outputs at strides 4/8/16/32."""

    @configurable
    def __init__(
        self,
        *,
        img_size: int = 480,
        in_chans: int = 3,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_size: int = 12,
        drop_path_rate: float = 0.3,
        out_features: Sequence[str] = STAGE_NAMES,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(
                f"MODEL.SWIN.DEPTHS and MODEL.SWIN.NUM_HEADS need 4 entries, got {list(depths)} and "
                f"{list(num_heads)}."
            )
        if img_size % 32 != 0:
            raise ValueError(
                f"INPUT.IMAGE_SIZE={img_size} must be a multiple of 32 for D2SwinTransformer "
                "(patch size 4 and three 2x patch mergings), e.g. 480."
            )
        unknown = [f for f in out_features if f not in STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(
                f"MODEL.SWIN.OUT_FEATURES={list(out_features)} must be a non-empty subset of {STAGE_NAMES}."
            )
        self.img_size = img_size
        self._out_features = [f for f in STAGE_NAMES if f in out_features]
        self._stage_ids = [STAGE_NAMES.index(f) for f in self._out_features]
        self.swin = SwinTransformer(
            img_size=img_size,
            in_chans=in_chans,
            num_classes=0,
            embed_dim=embed_dim,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            drop_path_rate=drop_path_rate,
        )
        # Only the stages up to the deepest returned one exist: no parameter goes without a gradient.
        self.swin.layers = self.swin.layers[: max(self._stage_ids) + 1]
        self.swin.norm = nn.Identity()
        self.swin.head = nn.Identity()
        self.swin.set_grad_checkpointing(use_checkpoint)
        use_onednn_linears(self.swin)  # CPU speed only; the same parameters and outputs
        dims = [embed_dim * 2**i for i in range(4)]
        for i in self._stage_ids:
            self.add_module(f"norm{i}", nn.LayerNorm(dims[i]))
        self._out_feature_channels = {STAGE_NAMES[i]: dims[i] for i in self._stage_ids}
        self._out_feature_strides = {STAGE_NAMES[i]: 4 * 2**i for i in self._stage_ids}

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        return {
            "img_size": cfg.INPUT.IMAGE_SIZE,
            "in_chans": input_shape.channels,
            "embed_dim": cfg.MODEL.SWIN.EMBED_DIM,
            "depths": cfg.MODEL.SWIN.DEPTHS,
            "num_heads": cfg.MODEL.SWIN.NUM_HEADS,
            "window_size": cfg.MODEL.SWIN.WINDOW_SIZE,
            "drop_path_rate": cfg.MODEL.SWIN.DROP_PATH_RATE,
            "out_features": cfg.MODEL.SWIN.OUT_FEATURES,
            "use_checkpoint": cfg.MODEL.SWIN.USE_CHECKPOINT,
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"D2SwinTransformer was built for {self.img_size}x{self.img_size} inputs (INPUT.IMAGE_SIZE), "
                f"got {tuple(x.shape[-2:])}; resize the images or change INPUT.IMAGE_SIZE."
            )
        x = self.swin.patch_embed(x)  # NHWC
        outs = {}
        for i, stage in enumerate(self.swin.layers):
            x = stage(x)
            if i in self._stage_ids:
                outs[STAGE_NAMES[i]] = getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous()
        return outs

    @property
    def size_divisibility(self) -> int:
        return 32

"""Detectron2 backbones built from timm (registered on import)."""

from .convnext import D2ConvNeXt
from .swin import D2SwinTransformer

__all__ = ["D2ConvNeXt", "D2SwinTransformer"]

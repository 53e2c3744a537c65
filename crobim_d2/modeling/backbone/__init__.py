"""Detectron2 backbones built from timm (registered on import)."""

from .convnext import D2ConvNeXt
from .swin import D2SwinTransformer
from .timm_backbone import D2TimmBackbone

__all__ = ["D2ConvNeXt", "D2SwinTransformer", "D2TimmBackbone"]

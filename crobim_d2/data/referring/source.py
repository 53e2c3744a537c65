"""What crobim-make-referring takes: a raster, its annotation file, how to read the objects' words and how to
crop it."""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["CropLayout", "ReferringInputError", "Source"]


class ReferringInputError(ValueError):
    """An input crobim-make-referring cannot use; the message names the file, the feature and the fix."""


@dataclass(frozen=True)
class CropLayout:
    """Square crops of ``crop_size`` pixels, starting ``stride`` apart within blocks of >= ``block_size``."""

    crop_size: int = 256
    stride: int = 128
    block_size: int = 512

    def __post_init__(self):
        if not (0 < self.stride and 0 < self.crop_size <= self.block_size):
            raise ReferringInputError(f"{self}: need 0 < stride and 0 < crop_size <= block_size")


@dataclass(frozen=True)
class Source:
    """One raster and its annotation file, and how to read the objects' words from it.

    ``category``: the category of every object (for files without one); ``category_field``: the field that
    holds it (GeoJSON property, COCO annotation key, VOC ``<object>`` child, CSV column; default: COCO's
    category name, VOC's ``name``, CSV's ``label``); ``attribute_field``: a field with an attribute word
    ("dead"); ``attribute_words``: value -> word in expressions ({"Alive": "living"}); ``image_name``: the
    raster's name in COCO/CSV files that list several images (default: the raster's file name);
    ``pixel_coords``: GeoJSON coordinates are pixel column/row rather than the raster's CRS; ``name``: names
    the crops (default: the raster's file stem); ``layout``: its crops, instead of the run's (rasters of
    different resolution).
    """

    raster: str
    annotations: str
    category: str | None = None
    category_field: str | None = None
    attribute_field: str | None = None
    attribute_words: Mapping[str, str] = field(default_factory=dict)
    image_name: str | None = None
    pixel_coords: bool = False
    name: str | None = None
    layout: CropLayout | None = None

    @property
    def crop_name(self) -> str:
        return self.name or os.path.splitext(os.path.basename(self.raster))[0]

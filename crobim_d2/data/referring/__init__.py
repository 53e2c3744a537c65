"""Referring datasets generated from object annotations, with one expression grammar for every generator
(``grammar``); ``make_referring`` / ``crobim-make-referring`` turn rasters with instance annotations into the
JSON Lines RRSIS format."""

from .source import CropLayout, ReferringInputError, Source

_MAKE = ("REFERRING_GRAMMAR", "ReferringParams", "make_referring")


def __getattr__(name: str):
    # The maker imports rasterio and shapely; importing crobim_d2 (which registers realrs_*) should not.
    if name in _MAKE:
        from . import make

        return getattr(make, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "REFERRING_GRAMMAR",
    "CropLayout",
    "ReferringInputError",
    "ReferringParams",
    "Source",
    "make_referring",
]

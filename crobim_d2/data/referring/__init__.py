"""Referring datasets generated from object annotations, with one expression grammar for every generator
(``grammar``); ``make_referring`` / ``crobim-make-referring`` turn rasters with instance annotations into the
JSON Lines RRSIS format."""

from .make import REFERRING_GRAMMAR, ReferringParams, make_referring
from .source import CropLayout, ReferringInputError, Source

__all__ = [
    "REFERRING_GRAMMAR",
    "CropLayout",
    "ReferringInputError",
    "ReferringParams",
    "Source",
    "make_referring",
]

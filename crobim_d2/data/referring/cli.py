"""crobim-make-referring: an RRSIS dataset (JSON Lines) from rasters with instance annotations.

    crobim-make-referring --input scene.tif buildings.geojson --category building --output-dir data/mine
    crobim-make-referring --input a.png a.xml --input b.png b.xml --attribute-field name \\
        --attribute-word Dead=dead --attribute-word Alive=living --crop-size 128 --output-dir data/trees

Writes ``{train,val,test}.jsonl`` for ``register_rrsis_dataset``, with ``images/``, ``masks/`` and
``info.json``.
"""

import argparse
import sys
from collections.abc import Sequence

from ...geo.raster import GeoInputError, parse_bands, parse_percentiles
from .make import ReferringParams, make_referring
from .source import CropLayout, ReferringInputError, Source


def get_parser() -> argparse.ArgumentParser:
    defaults, layout = ReferringParams(), CropLayout()
    p = argparse.ArgumentParser(
        prog="crobim-make-referring",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--input",
        nargs=2,
        action="append",
        required=True,
        metavar=("RASTER", "ANNOTATIONS"),
        help="a raster (GeoTIFF, PNG, JPEG) and its annotations (GeoJSON, COCO JSON, VOC .xml, CSV); "
        "repeat for more rasters",
    )
    p.add_argument("--output-dir", required=True)
    p.add_argument("--category", help="the category of every object (for files without one)")
    p.add_argument("--category-field", help="the field holding each object's category")
    p.add_argument("--attribute-field", help="the field holding an attribute word (e.g. dead)")
    p.add_argument(
        "--attribute-word",
        action="append",
        default=[],
        metavar="VALUE=WORD",
        help="write WORD for attribute VALUE (e.g. Alive=living); repeatable",
    )
    p.add_argument("--image-name", help="the raster's name in COCO / CSV files that list several images")
    p.add_argument("--pixel-coords", action="store_true", help="GeoJSON coordinates are pixel column/row")
    p.add_argument(
        "--crop-size", type=int, default=layout.crop_size, help="crop side in pixels (%(default)s)"
    )
    p.add_argument(
        "--stride", type=int, default=layout.stride, help="step between crops of a block (%(default)s)"
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=layout.block_size,
        help="least side of the blocks that go to one split each (%(default)s)",
    )
    p.add_argument(
        "--splits",
        default=",".join(str(s) for s in defaults.splits),
        help="shares of blocks for train,val,test (%(default)s)",
    )
    p.add_argument("--expressions-per-crop", type=int, default=defaults.expressions_per_crop)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--bands", help="1-based bands as R,G,B or one gray band (default 1,2,3 or 1)")
    p.add_argument("--stretch-percentiles", default="2,98", help="for 16-bit and float rasters (%(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --output-dir")
    return p


def _parse(args: argparse.Namespace) -> tuple[list[Source], ReferringParams]:
    words = {}
    for item in args.attribute_word:
        value, sep, word = item.partition("=")
        if not sep or not value or not word:
            raise ReferringInputError(f"--attribute-word {item!r} must be VALUE=WORD, e.g. Alive=living")
        words[value] = word
    try:
        splits = tuple(float(s) for s in args.splits.split(","))
    except ValueError:
        raise ReferringInputError(
            f"--splits {args.splits!r} must be three numbers, e.g. 0.6,0.2,0.2"
        ) from None
    params = ReferringParams(
        layout=CropLayout(args.crop_size, args.stride, args.block_size),
        splits=splits,
        expressions_per_crop=args.expressions_per_crop,
        seed=args.seed,
        bands=parse_bands(args.bands),
        percentiles=parse_percentiles(args.stretch_percentiles),
    )
    sources = [
        Source(
            raster,
            annotations,
            category=args.category,
            category_field=args.category_field,
            attribute_field=args.attribute_field,
            attribute_words=words,
            image_name=args.image_name,
            pixel_coords=args.pixel_coords,
        )
        for raster, annotations in args.input
    ]
    return sources, params


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        sources, params = _parse(args)
        info = make_referring(sources, args.output_dir, params, overwrite=args.overwrite)
    except (ReferringInputError, GeoInputError, FileNotFoundError) as e:
        parser.exit(2, f"crobim-make-referring: error: {e}\n")
    for source in info["sources"]:
        dropped = ", ".join(f"{n} {reason}" for reason, n in source["dropped"].items()) or "none"
        print(f"{source['name']}: {source['objects']} objects, dropped: {dropped}")
    for split, counts in info["splits"].items():
        print(f"{split}: {counts['crops']} crops, {counts['expressions']} expressions")
    print(f"wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

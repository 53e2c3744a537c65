"""One prediction of a scene: read it, run the expression (whole scene or tiles), write the outputs.

:func:`predict_scene` is the one inference path of ``crobim-predict`` (once per job) and of a server (once per
request, with a predictor loaded at start-up); it raises :class:`GeoInputError` with the message the CLI
prints.
"""

import os
import re

from .options import DEFAULT_OPTIONS, PredictOptions
from .probability import ScenePredictor, TiledProbability, WholeSceneProbability
from .raster import GeoInputError, Scene, read_scene
from .writer import write_prediction

SLUG_MAX_CHARS = 40


def slugify(expression: str) -> str:
    """Lowercase ASCII words of ``expression`` joined by "-", cut to at most 40 characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", expression.lower()).strip("-")
    return slug[:SLUG_MAX_CHARS].rstrip("-") or "expression"


def default_name(image: str, expression: str) -> str:
    """``<image stem>_<slug of the expression>``."""
    return f"{os.path.splitext(os.path.basename(image))[0]}_{slugify(expression)}"


def check_expression(expression, where: str = "") -> str:
    if not isinstance(expression, str) or not expression.strip():
        raise GeoInputError(
            f'Empty expression{where}; describe the object to segment, e.g. "the lake in the north"'
        )
    return expression.strip()


def predict_scene(
    predictor: ScenePredictor,
    image: str | Scene,
    expression: str,
    output_dir: str,
    name: str | None = None,
    options: PredictOptions = DEFAULT_OPTIONS,
) -> dict:
    """Segment what ``expression`` describes in ``image`` (a path, or a :class:`Scene` already read with
    ``options.bands`` / ``options.percentiles``) and write the outputs as ``<name>_*`` into ``output_dir``.

    Whole-scene mode (default): the model sees the scene's preview once. Tiled mode (``options.tile_size``):
    it sees each tile at its input size and the tiles are blended. Returns the summary record (image,
    expression, name, score, mask_pixels, polygons, files, mode); nothing found is a valid result (score 0).
    """
    options.check()
    expression = check_expression(expression)
    scene = image if isinstance(image, Scene) else read_scene(image, options.bands, options.percentiles)
    if options.tile_size is None:
        source, mode = WholeSceneProbability(predictor, scene, expression), "whole-scene"
    else:
        source = TiledProbability(
            predictor, scene, expression, options.tile_size, options.tile_overlap, options.progress
        )
        mode = f"tiled {options.tile_size}/{options.tile_overlap}"
    try:
        record = write_prediction(
            scene, source, expression, output_dir, name or default_name(scene.path, expression), options
        )
    finally:
        source.close()
    return {**record, "mode": mode}

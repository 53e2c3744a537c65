"""The page of ``crobim-serve`` (Gradio): upload a scene, type an expression, see and download the result.

The page holds no logic of its own: :class:`~crobim_d2.serve.service.SceneService` does every step, and its
:class:`GeoInputError` messages are shown in the page's status line.
"""

import html
import json
import os
from collections.abc import Sequence

import gradio as gr
from detectron2.data import MetadataCatalog

from ..geo.raster import GeoInputError
from .service import SceneService, cli_default

EXAMPLES_PER_DATASET = 3
# The SpaceNet Atlanta tile realrs is built from (one uint16 panchromatic band: it shows the stretch).
SPACENET_SAMPLE = os.path.join(".realrs-cache", "samples", "solaris", "data", "sample_geotiff.tif")
SPACENET_EXPRESSION = "the building at the top left"
# System fonts: the default theme would fetch web fonts, and the server may have no internet.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)


def _first_expressions(folder: str, split: str = "test") -> list[list[str]]:
    """[image, expression] of the first expression of the first scenes of ``folder/<split>.jsonl``."""
    path = os.path.join(folder, f"{split}.jsonl")
    if not os.path.isfile(path):
        return []
    examples, seen = [], set()
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            image = os.path.join(folder, record["image"])
            if image not in seen and os.path.isfile(image):
                seen.add(image)
                examples.append([image, record["expression"]])
            if len(examples) == EXAMPLES_PER_DATASET:
                break
    return examples


def dataset_examples(root: str | None = None) -> list[list[str]]:
    """Scenes of the datasets already under ``root`` (default: the registered datasets' root,
    ``$DETECTRON2_DATASETS``; nothing is generated or fetched for the page): synrrsis and realrs test scenes
    with one of their expressions, and the SpaceNet GeoTIFF realrs is built from."""
    root = root or os.path.dirname(MetadataCatalog.get("synrrsis_test").image_root)
    examples = [
        example
        for dataset in ("synrrsis", "realrs")
        for example in _first_expressions(os.path.join(root, dataset))
    ]
    spacenet = os.path.join(root, SPACENET_SAMPLE)
    if os.path.isfile(spacenet):
        examples.append([spacenet, SPACENET_EXPRESSION])
    return examples


def _status(text: str, error: bool = False) -> str:
    kind = "error" if error else "ok"
    return f'<p class="crobim-{kind}" id="crobim-{kind}">{html.escape(text)}</p>'


# Results are PNG files already: shown as they are, downloadable, not shared.
IMAGE = {"type": "filepath", "format": "png", "height": 320, "buttons": ["download", "fullscreen"]}
# Small scenes are scaled up to the image boxes, pixel by pixel.
CSS = """
.crobim-error { color: #b00020; font-weight: 600; }
.crobim-ok { font-weight: 600; }
#overlay img, #heatmap img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
"""


def build_page(service: SceneService, examples: Sequence[Sequence[str]] = ()) -> gr.Blocks:
    """The page; ``examples`` are [image path, expression] pairs shown under the inputs."""

    def run(path, expression, bands, percentiles, threshold, tile_size, tile_overlap):
        try:
            result = service.segment(
                path,
                expression,
                bands=bands,
                percentiles=percentiles,
                threshold=threshold,
                tile_size=tile_size,
                tile_overlap=tile_overlap,
            )
        except GeoInputError as e:
            return _status(str(e), error=True), None, None, None, None
        return _status(result.summary()), result.overlay, result.heatmap, result.mask, result.polygons

    keep_s = int(service.keep_s)  # Gradio's copies of uploads and results are kept as long as the results
    with gr.Blocks(
        title="CroBIM: referring segmentation", analytics_enabled=False, delete_cache=(keep_s, keep_s)
    ) as page:
        gr.Markdown(
            "## CroBIM referring segmentation\nUpload a PNG, JPEG or GeoTIFF scene, describe one object in "
            "English, and get its mask (GeoTIFF for georeferenced scenes, else PNG) and polygons (GeoJSON): "
            "the same result as `crobim-predict`."
        )
        with gr.Row():
            with gr.Column():
                scene = gr.File(label="Scene (PNG, JPEG, TIFF, GeoTIFF)", type="filepath", elem_id="scene")
                expression = gr.Textbox(
                    label="Expression", placeholder="the blue plane at the top left", elem_id="expression"
                )
                with gr.Accordion(
                    "Bands, stretch, threshold, tiles (as crobim-predict's flags)",
                    open=False,
                    elem_id="options",
                ):
                    bands = gr.Textbox(
                        label="--bands: 1-based R,G,B or one gray band (empty: the first colour bands)",
                        elem_id="bands",
                    )
                    percentiles = gr.Textbox(
                        label="--stretch-percentiles of 16-bit and float bands",
                        value=cli_default("stretch_percentiles"),
                        elem_id="percentiles",
                    )
                    threshold = gr.Number(
                        label="--threshold", value=cli_default("threshold"), elem_id="threshold"
                    )
                    tile_size = gr.Number(label="--tile-size (0: whole scene)", value=0, precision=0)
                    tile_overlap = gr.Number(label="--tile-overlap", value=0, precision=0)
                submit = gr.Button("Segment", variant="primary", elem_id="submit")
            with gr.Column():
                status = gr.HTML(elem_id="status")
                with gr.Row():
                    overlay = gr.Image(label="Overlay", elem_id="overlay", **IMAGE)
                    heatmap = gr.Image(label="Probability", elem_id="heatmap", **IMAGE)
                mask = gr.File(
                    label="Mask (GeoTIFF, or PNG for a scene without georeferencing)", elem_id="mask-file"
                )
                polygons = gr.File(label="Polygons (GeoJSON)", elem_id="polygons-file")
        if examples:
            gr.Examples([list(e) for e in examples], inputs=[scene, expression], label="Examples")
        gr.on(
            [submit.click, expression.submit],
            run,
            inputs=[scene, expression, bands, percentiles, threshold, tile_size, tile_overlap],
            outputs=[status, overlay, heatmap, mask, polygons],
        )
    return page

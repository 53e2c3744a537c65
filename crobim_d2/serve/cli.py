"""``crobim-serve``: a web page for one model, loaded once: upload a scene, type an expression, see and
download the result (crobim-predict's inference path).

    crobim-serve --config-file C.yaml --weights model_final.pth [--host 127.0.0.1] [--port 7860]

Listens on 127.0.0.1 (this machine only) unless ``--host`` says otherwise. Uploads, results and Gradio's
cache live in a temporary folder that is removed when the server stops.
"""

import argparse
import atexit
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence

from ..geo.cli import add_model_arguments, build_predictor
from ..geo.raster import GeoInputError
from ..inference import ConfigError
from .service import DEFAULT_KEEP_S, DEFAULT_MAX_MEGAPIXELS, DEFAULT_MAX_UPLOAD_MB, SceneService


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crobim-serve",
        description="Serve a web page that segments the object an English expression describes in an "
        "uploaded PNG/JPEG/GeoTIFF scene, with crobim-predict's outputs to download.",
    )
    add_model_arguments(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: every network)"
    )
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest scene file accepted, in MB (default {DEFAULT_MAX_UPLOAD_MB:g})",
    )
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=DEFAULT_MAX_MEGAPIXELS,
        help=f"largest scene accepted, in millions of pixels (default {DEFAULT_MAX_MEGAPIXELS:g})",
    )
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ... (last)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    for flag, value in (("--max-upload-mb", args.max_upload_mb), ("--max-megapixels", args.max_megapixels)):
        if not value > 0:
            parser.error(f"{flag} {value} must be > 0")
    partial = ["MODEL.ALLOW_PARTIAL_WEIGHTS", "True"] if args.allow_partial_weights else []
    try:
        predictor = build_predictor(args.config_file, args.weights, [*args.opts, *partial], args.device)
    except (GeoInputError, ConfigError) as e:
        parser.error(str(e))
    work_dir = tempfile.mkdtemp(prefix="crobim-serve-")
    atexit.register(shutil.rmtree, work_dir, True)
    # SIGTERM (kill, systemd, a test) ends the server as Ctrl-C does, so that the folder is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"crobim-serve: uploads and results in {work_dir} (removed when the server stops)", flush=True)
    # Process-wide, before Gradio builds the page: uploads and served copies go to the temporary folder too.
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(work_dir, "gradio")
    from .page import CSS, THEME, build_page, dataset_examples

    results = os.path.join(work_dir, "results")
    service = SceneService(predictor, results, args.max_upload_mb, args.max_megapixels, DEFAULT_KEEP_S)
    page = build_page(service, dataset_examples())
    page.queue(default_concurrency_limit=1)
    page.launch(
        server_name=args.host,
        server_port=args.port,
        max_file_size=int(args.max_upload_mb * 2**20),
        theme=THEME,
        css=CSS,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write synrrsis to disk in the JSON Lines format of ``register_rrsis_dataset``, deterministically.

Layout under ``<root>/synrrsis/``: ``{split}.jsonl``, ``images/{split}/<scene>.png``,
``masks/{split}/<scene>_<object>.png`` (1-bit) and ``info.json`` (version, parameters, counts).
Each scene has its own seeded generator, so the same version and parameters give byte-identical files.
"""
import dataclasses
import json
import logging
import os
import time

import cv2
import numpy as np

from ..referring.store import build_once, may_build, read_info, refuse_foreign
from .expressions import scene_expressions
from .scene import generate_scene

SYNRRSIS_VERSION = 2
SPLITS = ("train", "val", "test")
GENERATE_ENV = "CROBIM_GENERATE_SYNRRSIS"

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SynRRSISParams:
    image_size: int = 256
    num_train: int = 1500  # scenes; 2-3 expressions each
    num_val: int = 150
    num_test: int = 150
    seed: int = 0

    def num_scenes(self, split: str) -> int:
        return getattr(self, f"num_{split}")


def _write_png(path: str, array: np.ndarray, bilevel: bool = False) -> None:
    flags = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_BILEVEL, int(bilevel)]
    ok, buf = cv2.imencode(".png", array, flags)
    if not ok:
        raise OSError(f"Could not encode {path} as PNG.")
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def write_split(out_dir: str, split: str, params: SynRRSISParams) -> int:
    """Generate one split into ``out_dir``; return its number of expressions."""
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(out_dir, sub, split), exist_ok=True)
    split_index = SPLITS.index(split)
    lines = []
    for scene_id in range(params.num_scenes(split)):
        rng = np.random.default_rng([params.seed, split_index, scene_id])
        scene = generate_scene(rng, params.image_size)
        image = f"images/{split}/{scene_id:05d}.png"
        _write_png(os.path.join(out_dir, image), scene.image[:, :, ::-1])
        for target, spec, text in scene_expressions(scene, rng, int(rng.integers(2, 4))):
            obj = scene.objects[target]
            mask = f"masks/{split}/{scene_id:05d}_{target}.png"
            if not os.path.exists(os.path.join(out_dir, mask)):
                _write_png(os.path.join(out_dir, mask), obj.mask.astype(np.uint8) * 255, bilevel=True)
            entry = {
                "image": image, "expression": text, "mask": mask, "category": obj.category,
                "color": obj.color, "size": obj.size, "position": obj.position, "template": spec["template"],
                "image_id": scene_id, "object_id": target, "sent_id": len(lines),
            }
            lines.append(json.dumps(entry) + "\n")
    with open(os.path.join(out_dir, f"{split}.jsonl"), "w") as f:
        f.writelines(lines)
    return len(lines)


def generate_synrrsis(root: str, params: SynRRSISParams = SynRRSISParams(), force: bool = True) -> dict:
    """Generate ``<root>/synrrsis`` (replacing it when ``force``), atomically and under a file lock so
    concurrent processes do not clash. Returns the content of ``info.json``."""

    def build(tmp: str) -> dict:
        start = time.perf_counter()
        counts = {split: write_split(tmp, split, params) for split in SPLITS}
        return {"version": SYNRRSIS_VERSION, "params": dataclasses.asdict(params), "expressions": counts,
                "seconds": round(time.perf_counter() - start, 2)}

    return build_once(root, "synrrsis", lambda info: info.get("version") == SYNRRSIS_VERSION, build, force)


def ensure_synrrsis(
    root: str, params: SynRRSISParams = SynRRSISParams(), generate: bool | None = None
) -> str:
    """Return ``<root>/synrrsis``, generating it with ``params`` if it is absent or was made by another
    generator version (a dataset made with other parameters by prepare_synrrsis.py is kept).

    An absent dataset is generated only if ``generate``; ``None`` means: when ``root`` is the default
    ``./datasets`` or ``CROBIM_GENERATE_SYNRRSIS=1`` (``0`` never). Otherwise it is a ``FileNotFoundError``
    that names the path and how to generate it.
    """
    path = os.path.join(root, "synrrsis")
    info = read_info(path)
    if info.get("version") == SYNRRSIS_VERSION:
        return path
    refuse_foreign(root, "synrrsis", info, "datasets/prepare_synrrsis.py")
    if not info and not (
        may_build(root, GENERATE_ENV, "generate synrrsis") if generate is None else generate
    ):
        raise FileNotFoundError(
            f"synrrsis not found at {os.path.abspath(path)}. It is generated on first use only under the "
            f"default root ./datasets; to generate it here, run python datasets/prepare_synrrsis.py --root "
            f"{root} or set {GENERATE_ENV}=1. If it is elsewhere, set DETECTRON2_DATASETS to that root (now "
            f"{os.environ.get('DETECTRON2_DATASETS', 'unset')})."
        )
    action = "Regenerating (another generator version)" if info else "Generating"
    logger.warning(f"{action} synrrsis in {os.path.abspath(path)} (once; see datasets/README.md).")
    generate_synrrsis(root, params, force=False)
    return path

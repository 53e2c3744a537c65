"""Write an RRSIS dataset (JSON Lines) from rasters with instance annotations: crops, masks, expressions.

Objects cut by a crop's border (or by the raster's edge) are **never targets and never anchors, but always
distractors**: their extent is unclear in the crop, so no expression is about them, yet every expression must
be false for them under any reading (their visible part, and their full size for size words). Dropping them
would let "the largest building" describe a building while a larger, half-visible one stands beside it.
"""

import dataclasses
import json
import os
import shutil
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds
from rasterio.windows import Window as PixelWindow

from ...geo.raster import DEFAULT_PERCENTILES, Scene, read_scene
from .annotations import Instance, read_instances
from .crops import SPLITS, Window, split_windows
from .grammar import BoxReferent, Grammar
from .source import CropLayout, ReferringInputError, Source

__all__ = ["REFERRING_GRAMMAR", "ReferringParams", "make_referring"]

IMAGE_RELATIONS = {
    "left of": (0, -1),
    "right of": (0, 1),
    "above": (-1, 0),
    "below": (1, 0),
    "closest to": (0, 0),
}
COMPASS_RELATIONS = {"west of": (0, -1), "east of": (0, 1), "north of": (-1, 0), "south of": (1, 0)}
IMAGE_EXTREMES = {"leftmost": (0, -1), "rightmost": (0, 1), "topmost": (-1, 0), "bottommost": (1, 0)}
COMPASS_EXTREMES = {
    "westernmost": (0, -1),
    "easternmost": (0, 1),
    "northernmost": (-1, 0),
    "southernmost": (1, 0),
}
REFERRING_GRAMMAR = Grammar(
    name="crobim-make-referring",
    weights={
        "category": 0.1,
        "attribute": 0.2,
        "position": 0.25,
        "size": 0.1,
        "superlative": 0.15,
        "relative": 0.2,
    },
    relations=IMAGE_RELATIONS,
    extremes=IMAGE_EXTREMES,
    anchor_templates=("attribute", "superlative", "position"),
)
_OUTPUTS = ("images", "masks", "info.json", *(f"{s}.jsonl" for s in SPLITS))


@dataclass(frozen=True)
class ReferringParams:
    """``splits``: shares of each raster's blocks for train, val, test; ``bands`` / ``percentiles``: how
    rasters become 8-bit RGB (as in crobim-predict: 16-bit and float bands are stretched)."""

    layout: CropLayout = field(default_factory=CropLayout)
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2)
    expressions_per_crop: int = 3
    seed: int = 0
    bands: tuple[int, ...] | None = None
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES

    def __post_init__(self):
        if len(self.splits) != 3 or min(self.splits) < 0 or abs(sum(self.splits) - 1) > 1e-6:
            raise ReferringInputError(
                f"splits {self.splits} must be three shares (train, val, test) summing to 1"
            )
        if self.expressions_per_crop < 1:
            raise ReferringInputError(f"expressions_per_crop {self.expressions_per_crop} must be at least 1")


def _grammar(scene: Scene) -> Grammar:
    """North-up georeferenced rasters also get compass words ("south of")."""
    t = scene.transform
    if scene.crs is not None and t.b == 0 and t.d == 0 and t.e < 0 < t.a:
        return dataclasses.replace(
            REFERRING_GRAMMAR,
            relations={**IMAGE_RELATIONS, **COMPASS_RELATIONS},
            extremes={**IMAGE_EXTREMES, **COMPASS_EXTREMES},
        )
    return REFERRING_GRAMMAR


def _in_window(instances: list[Instance], window: Window) -> list[tuple[int, np.ndarray, bool]]:
    """(instance index, visible mask in the crop, whole) of every instance with a pixel in the window."""
    x0, y0, x1, y1 = window.bounds
    seen = []
    for k, inst in enumerate(instances):
        r0, c0, r1, c1 = inst.bounds
        if r1 <= y0 or r0 >= y1 or c1 <= x0 or c0 >= x1:
            continue
        crop = np.zeros((window.size, window.size), bool)
        ra, rb, ca, cb = max(r0, y0), min(r1, y1), max(c0, x0), min(c1, x1)
        crop[ra - y0 : rb - y0, ca - x0 : cb - x0] = inst.mask[ra - r0 : rb - r0, ca - c0 : cb - c0]
        if crop.any():
            whole = not inst.clipped and r0 >= y0 and c0 >= x0 and r1 <= y1 and c1 <= x1
            seen.append((k, crop, whole))
    return seen


def _footprint(scene: Scene) -> tuple | None:
    """(CRS, west, south, east, north) of a georeferenced raster."""
    if scene.crs is None:
        return None
    return (scene.crs, *array_bounds(scene.height, scene.width, scene.transform))


def _check_apart(name: str, footprint: tuple | None, earlier: dict[str, tuple]) -> None:
    """Rasters that overlap on the ground would put the same place into several splits."""
    if footprint is None:
        return
    crs, west, south, east, north = footprint
    for other_name, (other_crs, *bounds) in earlier.items():
        ow, os_, oe, on = transform_bounds(other_crs, crs, *bounds)
        if min(east, oe) > max(west, ow) and min(north, on) > max(south, os_):
            raise ReferringInputError(
                f"rasters {other_name} and {name} overlap on the ground, so a geographic split could put one "
                "place in train and test; mosaic them into one raster (gdalbuildvrt) or give disjoint rasters"
            )


class _Writer:
    """Writes crops, masks and JSON Lines under ``out``, counting what it wrote."""

    def __init__(self, out: str):
        self.out = out
        self.lines: dict[str, list[str]] = {s: [] for s in SPLITS}
        self.crops: Counter = Counter()
        self.counts: dict[str, dict[str, Counter]] = {s: {} for s in SPLITS}
        for split in SPLITS:
            for sub in ("images", "masks"):
                os.makedirs(os.path.join(out, sub, split), exist_ok=True)

    def crop(
        self,
        source: Source,
        scene: Scene,
        window: Window,
        instances: list[Instance],
        seen: list[tuple[int, np.ndarray, bool]],
        chosen: list[tuple[int, dict, str]],
    ) -> None:
        split, (x0, y0, x1, y1) = window.split, window.bounds
        name = f"{source.crop_name}_{x0}_{y0}"
        image = f"images/{split}/{name}.png"
        rgb, _ = scene.read(PixelWindow(x0, y0, x1 - x0, y1 - y0))
        Image.fromarray(rgb).save(os.path.join(self.out, image), compress_level=1)
        for target, spec, text in chosen:
            k, mask, _ = seen[target]
            inst = instances[k]
            mask_path = f"masks/{split}/{name}_{k}.png"
            if not os.path.exists(os.path.join(self.out, mask_path)):
                Image.fromarray(mask).save(os.path.join(self.out, mask_path))
            entry = {
                "image": image,
                "expression": text,
                "mask": mask_path,
                "category": inst.category,
                "attribute": inst.attribute,
                "template": spec["template"],
                "mask_kind": inst.mask_kind,
                "source": source.crop_name,
                "window": [x0, y0, x1, y1],
                "image_id": self.crops[split],
                "object_id": k,
                "sent_id": len(self.lines[split]),
            }
            self.lines[split].append(json.dumps(entry) + "\n")
            for key in ("category", "template", "mask_kind", "attribute"):
                self.counts[split].setdefault(key, Counter())[str(entry[key])] += 1
        self.crops[split] += 1

    def close(self) -> dict:
        for split, lines in self.lines.items():
            with open(os.path.join(self.out, f"{split}.jsonl"), "w") as f:
                f.writelines(lines)
        return {
            split: {
                "crops": self.crops[split],
                "expressions": len(self.lines[split]),
                **{f"by_{key}": dict(sorted(c.items())) for key, c in self.counts[split].items()},
            }
            for split in SPLITS
        }


def _prepare_output(out: str, overwrite: bool) -> None:
    present = [p for p in _OUTPUTS if os.path.exists(os.path.join(out, p))]
    if present and not overwrite:
        raise ReferringInputError(
            f"{out} already holds a dataset ({', '.join(present)}); choose another folder "
            "or overwrite it (overwrite=True, --overwrite)"
        )
    for p in present:
        path = os.path.join(out, p)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def make_referring(
    sources: Sequence[Source],
    output_dir: str,
    params: ReferringParams = ReferringParams(),
    overwrite: bool = False,
) -> dict:
    """Crop every raster of ``sources``, generate expressions for the objects of each crop and write the
    dataset under ``output_dir``: ``{train,val,test}.jsonl`` (the format of ``register_rrsis_dataset``),
    ``images/<split>/``, ``masks/<split>/`` and ``info.json`` (parameters, sources, dropped features, counts).
    The same inputs and parameters give byte-identical files. Returns the content of ``info.json``."""
    names = [s.crop_name for s in sources]
    if not sources or len(set(names)) != len(names):
        raise ReferringInputError(f"sources need distinct names, got {names}; set Source.name")
    _prepare_output(output_dir, overwrite)
    writer = _Writer(output_dir)
    earlier: dict[str, tuple] = {}
    report = []
    for source in sources:
        scene = read_scene(source.raster, params.bands, params.percentiles)
        footprint = _footprint(scene)
        _check_apart(source.crop_name, footprint, earlier)
        height, width = scene.height, scene.width
        instances, drops = read_instances(source, (height, width), scene.crs, scene.transform)
        layout = source.layout or params.layout
        windows = split_windows(source.crop_name, height, width, layout, params.splits, params.seed)
        grammar = _grammar(scene)
        for window in windows:
            seen = _in_window(instances, window)
            referents = [
                BoxReferent.from_mask(
                    mask,
                    instances[k].category,
                    {"attribute": instances[k].attribute},
                    instances[k].full_area,
                    whole,
                )
                for k, mask, whole in seen
            ]
            rng = np.random.default_rng(
                [params.seed, zlib.crc32(source.crop_name.encode()), window.x0, window.y0]
            )
            chosen = grammar.choose(referents, rng, params.expressions_per_crop)
            if chosen:
                writer.crop(source, scene, window, instances, seen, chosen)
        if footprint is not None:
            earlier[source.crop_name] = footprint
        report.append(
            {
                "name": source.crop_name,
                "raster": source.raster,
                "annotations": source.annotations,
                "size": [height, width],
                "crs": scene.crs.to_string() if scene.crs else None,
                "layout": dataclasses.asdict(layout),
                "objects": len(instances),
                "dropped": dict(sorted(drops.items())),
                "windows": dict(sorted(Counter(w.split for w in windows).items())),
            }
        )
    params_dict = dataclasses.asdict(params)
    info = {
        "generator": "crobim-make-referring",
        "params": params_dict,
        "sources": report,
        "splits": writer.close(),
    }
    with open(os.path.join(output_dir, "info.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info

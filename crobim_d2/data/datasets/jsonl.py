"""User RRSIS datasets in JSON Lines: one referring expression per line.

``{"image": "<path>", "expression": "<text>", "mask": <mask image path | COCO RLE dict | list of polygons>}``
plus an optional ``"category"``, an optional ``"mask_threshold"`` (mask image files only) and any other
fields, which are kept in the record. Relative paths resolve against ``image_root``, else the folder of the
JSONL file. The mask comes from ``mask`` only: a line that also names ``mask_file`` or ``segmentation`` is an
error, and so are fields the loader computes (``file_name``, ``height``, ``width``, ``sentence``) when they
disagree with what it computes. JPEG mask files are read with foreground = value > 127 (see
``JPEG_MASK_THRESHOLD``) and reported in one warning per file.
"""
import json
import logging
import os
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..images import read_image_header
from ..masks import check_polygons

__all__ = ["JPEG_MASK_THRESHOLD", "load_rrsis_jsonl", "register_rrsis_dataset"]

logger = logging.getLogger(__name__)

_REQUIRED = ("image", "expression", "mask")
# Keys a user may write instead of the required ones, named in the error.
_ALIASES = {"image": ("file_name", "img"), "expression": ("sentence", "text", "caption"),
            "mask": ("mask_file", "segmentation")}
_OTHER_MASK_SOURCES = ("mask_file", "segmentation")
# JPEG's compression noise turns 0/255 masks into 0..~30 / ~225..255: foreground = value > 127 keeps the
# mask that was saved, where the default > 0 would add the noise around every edge.
JPEG_MASK_THRESHOLD = 127
_LOSSY_FORMATS = ("JPEG", "MPO")


def _fail(where: str, problem: str) -> ValueError:
    return ValueError(f"{where}: {problem}. See the JSON Lines format in datasets/README.md.")


class _FileNotes:
    """Lines of one JSONL file that get one warning each kind at the end of loading (JPEG masks, clipping)."""

    def __init__(self, path: str):
        self.path = path
        self.jpeg_masks: list[str] = []
        self.clipped: list[str] = []

    def warn(self) -> None:
        if self.jpeg_masks:
            logger.warning(
                f"{self.path}: {len(self.jpeg_masks)} mask(s) are JPEG files (lossy), e.g. "
                f"{self.jpeg_masks[:3]}; they are read as foreground = value > {JPEG_MASK_THRESHOLD}. Save "
                "masks as PNG, or set \"mask_threshold\" on the line to choose the threshold."
            )
        if self.clipped:
            logger.warning(
                f"{self.path}: {len(self.clipped)} polygon mask(s) extend beyond their image and are clipped "
                f"to it, e.g. {self.clipped[:3]}."
            )


def _mask_file_fields(entry: dict, path: str, size: tuple[int, int], where: str, notes: _FileNotes) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: mask file {path} not found; fix the path or the image_root.")
    header = read_image_header(path)
    if (header.height, header.width) != size:
        raise _fail(
            where, f"mask {path} is {header.height}x{header.width} but the image is {size[0]}x{size[1]}"
        )
    fields: dict[str, Any] = {"mask_file": path}
    if "mask_threshold" in entry:
        threshold = entry["mask_threshold"]
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or threshold < 0:
            raise _fail(where, f"mask_threshold {threshold!r} must be a number >= 0 (foreground: value > it)")
        fields["mask_threshold"] = threshold
    elif header.format in _LOSSY_FORMATS:
        notes.jpeg_masks.append(where)
        fields["mask_threshold"] = JPEG_MASK_THRESHOLD
    return fields


def _mask_fields(entry: dict, base: str, size: tuple[int, int], where: str, notes: _FileNotes) -> dict:
    """The record's one mask source, from the line's ``mask``."""
    others = [k for k in _OTHER_MASK_SOURCES if k in entry]
    if others:
        raise _fail(
            where, f"the line names its mask twice, in 'mask' and in {others}; the mask is read from 'mask' "
            f"only (a mask image path, a COCO RLE or polygons): remove {others}"
        )
    mask = entry["mask"]
    if isinstance(mask, str):
        return _mask_file_fields(entry, os.path.join(base, os.path.expanduser(mask)), size, where, notes)
    if "mask_threshold" in entry:
        raise _fail(where, "mask_threshold applies to mask image files only; remove it or make 'mask' a path")
    if isinstance(mask, dict):
        if "counts" not in mask or "size" not in mask:
            raise _fail(where, "an RLE mask needs 'size' [height, width] and 'counts'")
        if list(mask["size"]) != list(size):
            raise _fail(where, f"RLE size {mask['size']} differs from the image size {list(size)}")
        return {"segmentation": mask}
    if isinstance(mask, list) and mask and all(isinstance(p, list) for p in mask):
        try:
            _, clipped = check_polygons(mask, *size)
        except ValueError as e:
            raise _fail(where, str(e).rstrip(".")) from None
        if clipped:
            notes.clipped.append(where)
        return {"segmentation": mask}
    raise _fail(where, "'mask' must be a mask image path, a COCO RLE dict, or polygons [[x0, y0, ...]]")


def _check_computed(entry: dict, computed: dict[str, Any], base: str, where: str) -> None:
    """A line may repeat a field the loader computes only with the same value."""
    if "origin" in entry:
        raise _fail(where, "'origin' is set by the loader (the line's file:line); rename that field")
    for key, value in computed.items():
        if key not in entry:
            continue
        given = entry[key]
        if key == "file_name" and isinstance(given, str):
            given = os.path.normpath(os.path.join(base, os.path.expanduser(given)))
            value = os.path.normpath(value)
        elif key == "sentence" and isinstance(given, str):
            given = given.strip()
        if given != value:
            raise _fail(
                where, f"'{key}' is {entry[key]!r} but the loader computes {value!r} (from the image or "
                "'expression'); remove the field or make it agree"
            )


def _missing_keys_error(entry: dict, where: str) -> ValueError | None:
    missing = [k for k in _REQUIRED if k not in entry]
    if not missing:
        return None
    hints = [f"found '{alias}': the loader reads '{k}'"
             for k in missing for alias in _ALIASES[k] if alias in entry]
    return _fail(where, f"missing key(s) {missing}" + (f" ({'; '.join(hints)})" if hints else ""))


def load_rrsis_jsonl(jsonl_path: str, image_root: str | None = None) -> list[dict[str, Any]]:
    """Read a JSON Lines RRSIS file into Detectron2 records (see the module docstring for the format).

    Each record has ``origin`` = ``"<jsonl_path>:<line>"``, named by later errors and by crobim-check-dataset.
    """
    if not os.path.isfile(jsonl_path):
        raise FileNotFoundError(
            f"RRSIS JSON Lines file not found: {jsonl_path}. Pass an existing file to register_rrsis_dataset "
            "(format in datasets/README.md)."
        )
    base = image_root if image_root is not None else os.path.dirname(os.path.abspath(jsonl_path))
    records: list[dict[str, Any]] = []
    sizes: dict[str, tuple[int, int]] = {}
    image_ids: dict[str, int] = {}
    notes = _FileNotes(jsonl_path)
    with open(jsonl_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{jsonl_path}:{lineno}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise _fail(where, f"invalid JSON ({e})") from None
            if not isinstance(entry, dict):
                raise _fail(where, "each line must be a JSON object")
            error = _missing_keys_error(entry, where)
            if error:
                raise error
            expression = entry["expression"]
            if not isinstance(expression, str) or not expression.strip():
                raise _fail(where, f"empty expression {expression!r}; write a non-empty 'expression'")
            file_name = os.path.join(base, os.path.expanduser(entry["image"]))
            if file_name not in sizes:
                if not os.path.isfile(file_name):
                    raise FileNotFoundError(
                        f"{where}: image {file_name} not found; fix the path or the image_root."
                    )
                header = read_image_header(file_name)
                sizes[file_name] = header.height, header.width
                image_ids[file_name] = len(image_ids)
            height, width = sizes[file_name]
            computed = {"file_name": file_name, "height": height, "width": width,
                        "sentence": expression.strip()}
            _check_computed(entry, computed, base, where)
            record = {k: v for k, v in entry.items() if k not in _REQUIRED}
            record.update(computed, origin=where, **_mask_fields(entry, base, (height, width), where, notes))
            record.setdefault("image_id", image_ids[file_name])
            record.setdefault("sent_id", len(records))
            records.append(record)
    if not records:
        raise ValueError(f"{jsonl_path} has no expressions; write one JSON object per line.")
    notes.warn()
    return records


def register_rrsis_dataset(name: str, jsonl_path: str, image_root: str | None = None) -> None:
    """Register a JSON Lines RRSIS dataset as ``name`` (lazy: the file is read when the dataset is used)."""
    DatasetCatalog.register(name, lambda: load_rrsis_jsonl(jsonl_path, image_root))
    MetadataCatalog.get(name).set(
        json_file=jsonl_path, image_root=image_root or os.path.dirname(os.path.abspath(jsonl_path)),
        evaluator_type="rrsis",
    )

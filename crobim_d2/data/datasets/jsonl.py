"""User RRSIS datasets in JSON Lines: one referring expression per line.

``{"image": "<path>", "expression": "<text>", "mask": <mask image path | COCO RLE dict | list of polygons>}``
plus an optional ``"category"`` and any other fields, which are kept in the record. Relative paths resolve
against ``image_root``, else the folder of the JSONL file.
"""
import json
import os
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..images import read_image_size

__all__ = ["load_rrsis_jsonl", "register_rrsis_dataset"]

_REQUIRED = ("image", "expression", "mask")


def _fail(where: str, problem: str) -> ValueError:
    return ValueError(f"{where}: {problem}. See the JSON Lines format in datasets/README.md.")


def _mask_fields(mask: Any, base: str, size: tuple[int, int], where: str) -> dict[str, Any]:
    if isinstance(mask, str):
        path = os.path.join(base, os.path.expanduser(mask))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{where}: mask file {path} not found; fix the path or the image_root.")
        mask_size = read_image_size(path)
        if mask_size != size:
            raise _fail(
                where, f"mask {path} is {mask_size[0]}x{mask_size[1]} but the image is {size[0]}x{size[1]}"
            )
        return {"mask_file": path}
    if isinstance(mask, dict):
        if "counts" not in mask or "size" not in mask:
            raise _fail(where, "an RLE mask needs 'size' [height, width] and 'counts'")
        if list(mask["size"]) != list(size):
            raise _fail(where, f"RLE size {mask['size']} differs from the image size {list(size)}")
        return {"segmentation": mask}
    if isinstance(mask, list) and mask and all(isinstance(p, list) and len(p) >= 6 for p in mask):
        return {"segmentation": mask}
    raise _fail(where, "'mask' must be a mask image path, a COCO RLE dict, or polygons [[x0, y0, ...]]")


def load_rrsis_jsonl(jsonl_path: str, image_root: str | None = None) -> list[dict[str, Any]]:
    """Read a JSON Lines RRSIS file into Detectron2 records (see the module docstring for the format)."""
    if not os.path.isfile(jsonl_path):
        raise FileNotFoundError(
            f"RRSIS JSON Lines file not found: {jsonl_path}. Pass an existing file to register_rrsis_dataset "
            "(format in datasets/README.md)."
        )
    base = image_root if image_root is not None else os.path.dirname(os.path.abspath(jsonl_path))
    records: list[dict[str, Any]] = []
    sizes: dict[str, tuple[int, int]] = {}
    image_ids: dict[str, int] = {}
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
            missing = [k for k in _REQUIRED if k not in entry]
            if missing:
                raise _fail(where, f"missing key(s) {missing}")
            expression = entry["expression"]
            if not isinstance(expression, str) or not expression.strip():
                raise _fail(where, f"empty expression {expression!r}; write a non-empty 'expression'")
            file_name = os.path.join(base, os.path.expanduser(entry["image"]))
            if file_name not in sizes:
                if not os.path.isfile(file_name):
                    raise FileNotFoundError(
                        f"{where}: image {file_name} not found; fix the path or the image_root."
                    )
                sizes[file_name] = read_image_size(file_name)
                image_ids[file_name] = len(image_ids)
            height, width = sizes[file_name]
            record = {k: v for k, v in entry.items() if k not in _REQUIRED}
            record.update(
                file_name=file_name,
                height=height,
                width=width,
                sentence=expression.strip(),
                **_mask_fields(entry["mask"], base, (height, width), where),
            )
            record.setdefault("image_id", image_ids[file_name])
            record.setdefault("sent_id", len(records))
            records.append(record)
    if not records:
        raise ValueError(f"{jsonl_path} has no expressions; write one JSON object per line.")
    return records


def register_rrsis_dataset(name: str, jsonl_path: str, image_root: str | None = None) -> None:
    """Register a JSON Lines RRSIS dataset as ``name`` (lazy: the file is read when the dataset is used)."""
    DatasetCatalog.register(name, lambda: load_rrsis_jsonl(jsonl_path, image_root))
    MetadataCatalog.get(name).set(
        json_file=jsonl_path, image_root=image_root or os.path.dirname(os.path.abspath(jsonl_path)),
        evaluator_type="rrsis",
    )

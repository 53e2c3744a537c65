"""RRSIS-D (Liu et al., RMSIN) in the REFER layout, one record per expression.

``<root>/rrsisd/refs(unc).p`` (refs: image_id, split, sentences, ann_id, ref_id, category_id),
``<root>/rrsisd/instances.json`` (COCO-like; polygons or RLE; category under ``categories_id``) and
``<root>/images/rrsisd/JPEGImages/``. REFER split semantics: ``train``/``val`` match exactly, ``test``
matches every split whose name contains "test".
"""
import json
import logging
import os
import pickle

from ..masks import check_polygons
from .common import SkipLog, missing_path_error

logger = logging.getLogger(__name__)

__all__ = ["load_refs_pickle", "load_rrsisd"]


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds only what pickle makes without importing anything: lists, dicts, tuples, str, numbers."""

    def __init__(self, file, path: str):
        super().__init__(file, encoding="utf-8")
        self.path = path

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(
            f"{self.path} asks to import {module}.{name}; a REFER refs file holds only lists, dicts, strings "
            "and numbers, so it is refused (it may be corrupted or crafted to run code). Re-download it."
        )


def load_refs_pickle(path: str) -> list[dict]:
    """Read a REFER ``refs(*).p`` without executing code (see ``_PlainDataUnpickler``)."""
    with open(path, "rb") as f:
        refs = _PlainDataUnpickler(f, path).load()
    if not isinstance(refs, list) or not all(isinstance(r, dict) and "sentences" in r for r in refs):
        raise ValueError(
            f"{path} is not a REFER refs file (a list of dicts with 'sentences'); download it again."
        )
    return refs


def _split_matches(ref_split: str, split: str) -> bool:
    return split in ref_split if split == "test" else ref_split == split


def _polygon_problem(ann: dict, image: dict) -> tuple[str | None, bool]:
    """(why the annotation's polygons are unusable or None, whether they extend beyond the image)."""
    segm = ann["segmentation"]
    if not isinstance(segm, list) or not segm or isinstance(segm[0], dict):
        return None, False  # RLE: its size is checked when it is decoded
    try:
        return None, check_polygons(segm, image["height"], image["width"])[1] > 0
    except ValueError as e:
        return f"ann_id {ann['id']}: {e}", False


def load_rrsisd(root: str, split: str) -> list[dict]:
    ann_dir = os.path.join(root, "rrsisd")
    refs_path = os.path.join(ann_dir, "refs(unc).p")
    inst_path = os.path.join(ann_dir, "instances.json")
    image_dir = os.path.join(root, "images", "rrsisd", "JPEGImages")
    for what, path in (("RRSIS-D annotation file", refs_path), ("RRSIS-D annotation file", inst_path),
                       ("RRSIS-D image folder", image_dir)):
        if not os.path.exists(path):
            raise missing_path_error(what, path, "rrsisd")
    refs = load_refs_pickle(refs_path)
    with open(inst_path) as f:
        instances = json.load(f)
    images = {img["id"]: img for img in instances["images"]}
    anns = {ann["id"]: ann for ann in instances["annotations"]}
    categories = {c["id"]: c["name"] for c in instances.get("categories", [])}
    skipped = SkipLog(f"rrsisd_{split}")
    exists: dict[str, bool] = {}
    polygons: dict[int, tuple[str | None, bool]] = {}
    records = []
    for ref in refs:
        if not _split_matches(ref["split"], split):
            continue
        ann, image = anns.get(ref["ann_id"]), images.get(ref["image_id"])
        if ann is None or image is None:
            skipped.add("an annotation or image id absent from instances.json", f"ref_id {ref.get('ref_id')}")
            continue
        file_name = os.path.join(image_dir, image["file_name"])
        if file_name not in exists:
            exists[file_name] = os.path.isfile(file_name)
        if not exists[file_name]:
            skipped.add("a missing image", file_name)
            continue
        if ann["id"] not in polygons:
            polygons[ann["id"]] = _polygon_problem(ann, image)
        problem, _ = polygons[ann["id"]]
        if problem:
            skipped.add("an invalid polygon mask", problem)
            continue
        category_id = ref.get("category_id", ann.get("categories_id", ann.get("category_id")))
        for sent in ref["sentences"]:
            text = (sent.get("raw") or sent.get("sent") or "").strip()
            if not text:
                skipped.add("an empty expression", f"sent_id {sent.get('sent_id')}")
                continue
            records.append({
                "file_name": file_name, "height": image["height"], "width": image["width"],
                "image_id": ref["image_id"], "ref_id": ref["ref_id"], "ann_id": ref["ann_id"],
                "sent_id": sent["sent_id"], "sentence": text, "segmentation": ann["segmentation"],
                "category_id": category_id, "category": categories.get(category_id), "split": ref["split"],
                "origin": f"{refs_path}: ref_id {ref['ref_id']}, sent_id {sent['sent_id']}",
            })
    clipped = [ann_id for ann_id, (_, out) in polygons.items() if out]
    if clipped:
        logger.warning(
            f"rrsisd_{split}: {len(clipped)} polygon mask(s) extend beyond their image and are clipped to "
            f"it, e.g. ann_id {clipped[:3]}."
        )
    return skipped.finish(records, refs_path)

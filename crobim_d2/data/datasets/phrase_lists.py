"""RefSegRS and RISBench: an image folder, a mask folder and ``output_phrase_{split}.txt`` phrase lists.

RefSegRS (Yuan et al.): ``<root>/refsegrs/{images,masks}/<id>.tif``, lines ``<id> <expression>``; masks are
0/255 and foreground is value > 50 (the peers' threshold; it also absorbs resampling noise).
RISBench (Dong et al.): ``<root>/risbench/{img_rgb,mask}/<file.png>``, lines ``<file.png> <expression>``;
foreground is any non-zero mask value.
"""
import os

from ..images import read_image_size
from .common import SkipLog, missing_path_error

__all__ = ["load_phrase_list_dataset", "load_refsegrs", "load_risbench"]


def load_phrase_list_dataset(
    name: str, folder: str, image_dir: str, mask_dir: str, split: str, suffix: str, mask_threshold: int
) -> list[dict]:
    """One record per line ``<key> <expression>``; image ``image_dir/<key><suffix>``, mask likewise."""
    phrases = os.path.join(folder, f"output_phrase_{split}.txt")
    for what, path in (("phrase list", phrases), ("image folder", os.path.join(folder, image_dir)),
                       ("mask folder", os.path.join(folder, mask_dir))):
        if not os.path.exists(path):
            raise missing_path_error(f"{name} {what}", path, os.path.basename(folder))
    skipped = SkipLog(f"{name}_{split}")
    sizes: dict[str, tuple[int, int] | None] = {}
    records = []
    with open(phrases, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            key, _, text = line.strip().partition(" ")
            text = text.strip()
            if not text:
                skipped.add("an empty expression", f"{phrases}:{lineno}")
                continue
            file_name = os.path.join(folder, image_dir, key + suffix)
            mask_file = os.path.join(folder, mask_dir, key + suffix)
            if file_name not in sizes:
                ok = os.path.isfile(file_name) and os.path.isfile(mask_file)
                sizes[file_name] = read_image_size(file_name) if ok else None
            if sizes[file_name] is None:
                skipped.add("a missing image or mask", key + suffix)
                continue
            height, width = sizes[file_name]
            records.append({
                "file_name": file_name, "height": height, "width": width, "image_id": key,
                "sent_id": f"{split}_{lineno}", "sentence": text, "mask_file": mask_file,
                "mask_threshold": mask_threshold, "origin": f"{phrases}:{lineno}",
            })
    return skipped.finish(records, phrases)


def load_refsegrs(root: str, split: str) -> list[dict]:
    return load_phrase_list_dataset(
        "refsegrs", os.path.join(root, "refsegrs"), "images", "masks", split, ".tif", mask_threshold=50
    )


def load_risbench(root: str, split: str) -> list[dict]:
    """Keys already carry the extension (``<file.png> <text>``)."""
    return load_phrase_list_dataset(
        "risbench", os.path.join(root, "risbench"), "img_rgb", "mask", split, "", mask_threshold=0
    )

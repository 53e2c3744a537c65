"""Built-in dataset names, registered on import and rooted at ``$DETECTRON2_DATASETS`` (default ``datasets``).

Registration never touches the disk: each loader runs when ``DatasetCatalog.get`` is first called.
"""
import os
from collections.abc import Callable, Iterable

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..referring.realrs import REALRS_CATEGORIES, ensure_realrs
from ..synrrsis import CATEGORIES, ensure_synrrsis
from .jsonl import load_rrsis_jsonl
from .phrase_lists import load_refsegrs, load_risbench
from .rrsisd import load_rrsisd

SPLITS = ("train", "val", "test")
_PUBLIC = {"rrsisd": load_rrsisd, "refsegrs": load_refsegrs, "risbench": load_risbench}


def _load_synrrsis(root: str, split: str) -> list[dict]:
    return load_rrsis_jsonl(os.path.join(ensure_synrrsis(root), f"{split}.jsonl"))


def _load_realrs(root: str, split: str) -> list[dict]:
    return load_rrsis_jsonl(os.path.join(ensure_realrs(root), f"{split}.jsonl"))


def _register_generated(
    dataset: str, root: str, load: Callable[[str, str], list[dict]], categories: Iterable[str]
) -> None:
    for split in SPLITS:
        name = f"{dataset}_{split}"
        DatasetCatalog.register(name, lambda split=split: load(root, split))
        MetadataCatalog.get(name).set(
            image_root=os.path.join(root, dataset), evaluator_type="rrsis", categories=list(categories)
        )


def register_all_synrrsis(root: str) -> None:
    _register_generated("synrrsis", root, _load_synrrsis, CATEGORIES)


def register_all_realrs(root: str) -> None:
    _register_generated("realrs", root, _load_realrs, REALRS_CATEGORIES)


def register_all_public(root: str) -> None:
    for dataset, loader in _PUBLIC.items():
        for split in SPLITS:
            name = f"{dataset}_{split}"
            DatasetCatalog.register(name, lambda loader=loader, split=split: loader(root, split))
            MetadataCatalog.get(name).set(dataset_root=root, evaluator_type="rrsis")


_root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
register_all_public(_root)
register_all_synrrsis(_root)
register_all_realrs(_root)

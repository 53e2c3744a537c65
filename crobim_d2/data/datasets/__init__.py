"""RRSIS dataset loaders and their Detectron2 registrations."""
from . import builtin as _builtin  # noqa: F401  (registers the built-in dataset names)
from .jsonl import load_rrsis_jsonl, register_rrsis_dataset
from .phrase_lists import load_refsegrs, load_risbench
from .rrsisd import load_refs_pickle, load_rrsisd

__all__ = [
    "load_refs_pickle", "load_refsegrs", "load_risbench", "load_rrsis_jsonl", "load_rrsisd",
    "register_rrsis_dataset",
]

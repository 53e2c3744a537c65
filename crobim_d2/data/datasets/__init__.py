"""RRSIS dataset loaders and their Detectron2 registrations."""
from . import builtin as _builtin  # noqa: F401  (registers the built-in dataset names)
from .jsonl import load_rrsis_jsonl, register_rrsis_dataset

__all__ = ["load_rrsis_jsonl", "register_rrsis_dataset"]

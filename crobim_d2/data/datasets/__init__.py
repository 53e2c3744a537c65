"""RRSIS dataset loaders and their Detectron2 registrations."""
from .jsonl import load_rrsis_jsonl, register_rrsis_dataset

__all__ = ["load_rrsis_jsonl", "register_rrsis_dataset"]

"""RRSIS datasets, the dataset mapper and tokenization."""
from .dataset_mapper import RRSISDatasetMapper, prepare_test_input
from .datasets import load_rrsis_jsonl, register_rrsis_dataset
from .images import read_image_rgb
from .masks import load_gt_mask

__all__ = [
    "RRSISDatasetMapper",
    "load_gt_mask",
    "load_rrsis_jsonl",
    "prepare_test_input",
    "read_image_rgb",
    "register_rrsis_dataset",
]

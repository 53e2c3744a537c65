"""Training sampler that repeats records of rare kinds (``DATALOADER.REPEAT_BY_FIELD``)."""
import math
from collections import Counter

import torch

__all__ = ["repeat_factors_by_field"]


def repeat_factors_by_field(dataset_dicts: list[dict], field: str, threshold: float) -> torch.Tensor:
    """Per-record repeat factor ``max(1, sqrt(threshold / f))``, ``f`` the share of records whose ``field``
    has the record's value: LVIS's rule for rare categories (Detectron2's ``RepeatFactorTrainingSampler``),
    applied to a record field such as the expression kind. Every record must have the field."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(
            f"DATALOADER.REPEAT_THRESHOLD={threshold} must lie in (0, 1] with DATALOADER.REPEAT_BY_FIELD."
        )
    missing = sum(field not in d for d in dataset_dicts)
    if missing:
        raise ValueError(
            f"DATALOADER.REPEAT_BY_FIELD={field!r}: {missing} of {len(dataset_dicts)} training records have no "
            f"{field!r} field; choose a field every record has, or '' to sample uniformly."
        )
    counts = Counter(str(d[field]) for d in dataset_dicts)
    share = {value: n / len(dataset_dicts) for value, n in counts.items()}
    return torch.tensor([max(1.0, math.sqrt(threshold / share[str(d[field])])) for d in dataset_dicts])

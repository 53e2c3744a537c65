"""Backbone stages named in the config (e.g. ``MODEL.CROBIM.CAPM_SCALES: ["res4", "res5"]``) as positions."""

from collections.abc import Sequence


def stage_indices(names: Sequence[str], in_features: Sequence[str], key: str) -> list[int]:
    """Sorted positions in MODEL.CROBIM.IN_FEATURES of the feature names of config key ``key``."""
    unknown = [n for n in names if n not in in_features]
    if unknown:
        raise ValueError(
            f"{key} names {unknown}, which are not in MODEL.CROBIM.IN_FEATURES={list(in_features)}."
        )
    return sorted(in_features.index(n) for n in names)

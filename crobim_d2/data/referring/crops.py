"""Crop windows and a geographic train / val / test split.

Each raster is cut into a grid of blocks (at least ``block_size`` pixels on a side) and every block goes to
one split; windows are cut inside a block only, so no pixel of a test window lies in a training or validation
window. Windows of one block overlap when ``stride`` < ``crop_size``.
"""

import itertools
import zlib
from dataclasses import dataclass

import numpy as np

from .source import CropLayout, ReferringInputError

__all__ = ["SPLITS", "Window", "split_windows"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Window:
    split: str
    x0: int
    y0: int
    size: int

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in raster pixels."""
        return self.x0, self.y0, self.x0 + self.size, self.y0 + self.size


def _edges(length: int, block_size: int) -> list[int]:
    n = max(1, length // block_size)
    return [round(i * length / n) for i in range(n + 1)]


def _starts(length: int, crop: int, stride: int) -> list[int]:
    """Window starts from 0 to ``length - crop``, evenly spaced at most ``stride`` apart."""
    count = -(-(length - crop) // stride) + 1
    return sorted({round(k * (length - crop) / max(1, count - 1)) for k in range(count)})


def _block_splits(
    num_blocks: int, fractions: tuple[float, float, float], rng: np.random.Generator
) -> list[str]:
    """A split per block: val and test get their share of the blocks (at least one each from 3 blocks on),
    train the rest, in a random order."""
    counts = {}
    for split, frac in zip(SPLITS[1:], fractions[1:]):
        k = round(frac * num_blocks)
        counts[split] = max(1, k) if frac > 0 and num_blocks >= len(SPLITS) else k
    counts["train"] = num_blocks - counts["val"] - counts["test"]
    order = ["test"] * counts["test"] + ["val"] * counts["val"] + ["train"] * counts["train"]
    splits = [""] * num_blocks
    for block, split in zip(rng.permutation(num_blocks), order):
        splits[int(block)] = split
    return splits


def split_windows(
    name: str, height: int, width: int, layout: CropLayout, fractions: tuple[float, float, float], seed: int
) -> list[Window]:
    """The windows of a ``height`` x ``width`` raster, each with its block's split; deterministic for
    ``seed`` and the raster's ``name`` (another raster in the same run does not change them)."""
    if min(height, width) < layout.crop_size:
        raise ReferringInputError(
            f"{name} is {height}x{width}, smaller than the crop size {layout.crop_size}; "
            "choose a smaller crop size (--crop-size)"
        )
    rows, cols = _edges(height, layout.block_size), _edges(width, layout.block_size)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    splits = _block_splits((len(rows) - 1) * (len(cols) - 1), fractions, rng)
    windows = []
    for i, (r0, r1) in enumerate(itertools.pairwise(rows)):
        for j, (c0, c1) in enumerate(itertools.pairwise(cols)):
            split = splits[i * (len(cols) - 1) + j]
            for y in _starts(r1 - r0, layout.crop_size, layout.stride):
                for x in _starts(c1 - c0, layout.crop_size, layout.stride):
                    windows.append(Window(split, c0 + x, r0 + y, layout.crop_size))
    return windows

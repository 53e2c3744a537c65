"""Foreground probability at full resolution, one window at a time: the whole-scene and the tiled mode.

A probability source has ``window(window) -> float32 (h, w)``; windows are asked for in row-major order. Both
sources keep only model-size maps in memory and resize them to full resolution per window.
"""

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window
from tqdm import tqdm

from .raster import PREVIEW_MAX_SIDE, Scene


class ScenePredictor(Protocol):
    """What the geo pipeline needs of a predictor (``crobim_d2.RRSISPredictor`` is one)."""

    def predict_at_model_size(self, image: np.ndarray, expression: str) -> np.ndarray: ...


def _linear_weights(n_in: int, n_out: int, start: int, stop: int):
    """Source indices and weights of outputs ``start..stop`` of a 1-D bilinear resize (no corner alignment)."""
    i = np.arange(start, stop)
    if n_in == n_out:
        return i, i, np.ones(len(i), np.float32), np.zeros(len(i), np.float32)
    scale = np.float64(np.float32(n_in) / np.float32(n_out))
    # Rounded once, as PyTorch's CPU kernel does with a fused multiply-add.
    src = np.maximum((scale * (i + 0.5) - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, np.float32(1) - w1, w1


def upsample(prob: np.ndarray, size: tuple[int, int], window: Window) -> np.ndarray:
    """``window`` of ``prob`` (h, w) resized bilinearly to ``size`` (H, W), as ``F.interpolate(...,
    mode="bilinear", align_corners=False)`` (the model's own resize) would give it for the whole map.

    A window covering the whole map is computed by ``F.interpolate`` itself; a smaller one by the same
    formula, equal to it up to float rounding.
    """
    r0, c0 = int(window.row_off), int(window.col_off)
    r1, c1 = r0 + int(window.height), c0 + int(window.width)
    prob = np.asarray(prob, np.float32)
    if (r0, c0, r1, c1) == (0, 0, *size):
        resized = F.interpolate(
            torch.from_numpy(prob)[None, None], size=size, mode="bilinear", align_corners=False
        )
        return resized[0, 0].numpy()
    y0, y1, a0, a1 = _linear_weights(prob.shape[0], size[0], r0, r1)
    x0, x1, b0, b1 = _linear_weights(prob.shape[1], size[1], c0, c1)
    top, bottom = prob[y0], prob[y1]
    top = top[:, x0] * b0 + top[:, x1] * b1
    bottom = bottom[:, x0] * b0 + bottom[:, x1] * b1
    return top * a0[:, None] + bottom * a1[:, None]


class WholeSceneProbability:
    """The model sees the whole scene (its preview) once, so spatial words refer to the whole scene."""

    def __init__(self, predictor: ScenePredictor, scene: Scene, expression: str):
        self.prob = predictor.predict_at_model_size(scene.preview, expression)
        self.size = (scene.height, scene.width)

    def window(self, window: Window) -> np.ndarray:
        return upsample(self.prob, self.size, window)

    def close(self) -> None:
        pass


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Offsets of ``tile`` px tiles overlapping by at least ``overlap`` px; the last one ends at ``length``."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, tile - overlap)) + [length - tile]


def blend_weights(start: int, length: int, total: int, overlap: int) -> np.ndarray:
    """A tile's weights along one axis: a linear ramp over ``overlap`` px at each edge inside the scene, so
    that overlapping tiles cross-fade; 1 elsewhere and at the scene's edges. Never 0."""
    d = np.arange(length, dtype=np.float32)
    w = np.ones(length, np.float32)
    if overlap > 0:
        if start > 0:
            w = np.minimum(w, (d + 0.5) / overlap)
        if start + length < total:
            w = np.minimum(w, (length - d - 0.5) / overlap)
    return w


class TiledProbability:
    """The model sees each ``tile_size`` window of the scene at its input size; overlapping tiles are blended
    (weights of :func:`blend_weights`), so an object across a tile border has no seam.

    Tiles are predicted when a window first needs them and dropped when windows have moved below them.
    """

    def __init__(
        self,
        predictor: ScenePredictor,
        scene: Scene,
        expression: str,
        tile_size: int,
        overlap: int,
        progress: bool = False,
    ):
        # progress: a bar on a terminal (tqdm's default); False: never
        self.predictor, self.scene, self.expression = predictor, scene, expression
        rows = tile_starts(scene.height, tile_size, overlap)
        cols = tile_starts(scene.width, tile_size, overlap)
        th, tw = min(tile_size, scene.height), min(tile_size, scene.width)
        self.tiles = [Window(c, r, tw, th) for r in rows for c in cols]
        self._wy = {r: blend_weights(r, th, scene.height, overlap) for r in rows}
        self._wx = {c: blend_weights(c, tw, scene.width, overlap) for c in cols}
        self._probs: dict[int, np.ndarray] = {}
        self._bar = tqdm(
            total=len(self.tiles), desc="tiles", unit="tile", disable=None if progress else True, leave=False
        )

    def _tile_prob(self, k: int) -> np.ndarray:
        if k not in self._probs:
            rgb, valid = self.scene.read(self.tiles[k], max_side=PREVIEW_MAX_SIDE)
            if valid.any():
                self._probs[k] = self.predictor.predict_at_model_size(rgb, self.expression)
            else:  # nothing to see: no model run
                self._probs[k] = np.zeros((1, 1), np.float32)
            self._bar.update(1)
        return self._probs[k]

    def window(self, window: Window) -> np.ndarray:
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        for k in [k for k in self._probs if self.tiles[k].row_off + self.tiles[k].height <= r0]:
            del self._probs[k]  # windows come in row-major order: no later one reaches this tile
        acc = np.zeros((r1 - r0, c1 - c0), np.float32)
        total = np.zeros_like(acc)
        for k, t in enumerate(self.tiles):
            tr0, tc0 = int(t.row_off), int(t.col_off)
            ir0, ir1 = max(r0, tr0), min(r1, tr0 + int(t.height))
            ic0, ic1 = max(c0, tc0), min(c1, tc0 + int(t.width))
            if ir0 >= ir1 or ic0 >= ic1:
                continue
            part = Window(ic0 - tc0, ir0 - tr0, ic1 - ic0, ir1 - ir0)
            prob = upsample(self._tile_prob(k), (int(t.height), int(t.width)), part)
            weight = self._wy[tr0][ir0 - tr0 : ir1 - tr0, None] * self._wx[tc0][None, ic0 - tc0 : ic1 - tc0]
            acc[ir0 - r0 : ir1 - r0, ic0 - c0 : ic1 - c0] += weight * prob
            total[ir0 - r0 : ir1 - r0, ic0 - c0 : ic1 - c0] += weight
        return acc / total

    def close(self) -> None:
        self._bar.close()

"""The one overlay painter of a mask on its image (crobim-predict, demo.py, the demo job's picture grid)."""

import cv2
import numpy as np

__all__ = ["overlay_mask"]

TINT = (255, 40, 40)  # RGB
OUTLINE = (255, 230, 0)


def overlay_mask(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    tint_alpha: float = 0.55,
    dim_outside: float = 1.0,
    outline_width: int = 1,
    outline_color: tuple = OUTLINE,
) -> np.ndarray:
    """RGB uint8 (H, W, 3) with the mask's pixels tinted red (``tint_alpha``: 0 leaves them as they are), the
    rest multiplied by ``dim_outside``, and the mask's outer contours drawn in ``outline_color`` (RGB, yellow
    unless told; ``outline_width`` px, 0 draws none)."""
    mask = np.asarray(mask, bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
    out = image.astype(np.float32)
    out[mask] = (1 - tint_alpha) * out[mask] + tint_alpha * np.array(TINT, np.float32)
    out[~mask] *= dim_outside
    out = np.round(out).astype(np.uint8)
    if outline_width > 0 and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, outline_color, outline_width)
    return out

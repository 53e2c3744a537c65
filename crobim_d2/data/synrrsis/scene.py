"""Top-down synthetic scenes: textured ground, roads, and objects on a 3x3 grid, one object per cell.

Objects of six categories are drawn with flat saturated colors, three size levels and random rotations;
every category that can be referred to appears at least twice, so each target has a distractor of its
own category. Sizes are fractions of the image side, so a scene renders at any ``image_size``.
"""
from dataclasses import dataclass, field

import cv2
import numpy as np

COLORS = {
    "red": (215, 45, 40),
    "green": (45, 175, 65),
    "blue": (45, 85, 215),
    "yellow": (235, 205, 45),
    "white": (240, 240, 236),
}
SIZE_LEVELS = {"small": 0.66, "medium": 0.83, "large": 1.0}
# category -> (noun used in expressions, length, width) as fractions of the image side at the "large" level
CATEGORIES = {
    "building": ("building", 0.24, 0.18),
    "storage tank": ("tank", 0.26, 0.26),
    "plane": ("plane", 0.28, 0.28),
    "ship": ("ship", 0.30, 0.10),
    "vehicle": ("vehicle", 0.20, 0.11),
    "court": ("court", 0.27, 0.15),
}
CELL_NAMES = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
_GROUNDS = ((122, 112, 92), (104, 108, 96), (132, 124, 104), (96, 100, 104))


@dataclass
class SceneObject:
    category: str
    color: str
    size: str
    cell: tuple[int, int]  # (row, column) of the 3x3 grid
    mask: np.ndarray = field(repr=False)
    area: int = field(init=False)

    def __post_init__(self):
        self.area = int(self.mask.sum())

    @property
    def noun(self) -> str:
        return CATEGORIES[self.category][0]

    @property
    def position(self) -> str:
        return CELL_NAMES[self.cell[0]][self.cell[1]]


@dataclass
class Scene:
    image: np.ndarray  # uint8 (S, S, 3) RGB
    objects: list[SceneObject]


def _polygons(category: str, length: float, width: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Body polygons (the mask) and darker detail polygons inside them, centred at 0, long axis along x."""
    def rect(x0, x1, y0, y1):
        return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], np.float64)

    L, W = length, width
    if category == "plane":
        fuselage = np.array([(-0.5, -0.06), (0.34, -0.075), (0.5, 0), (0.34, 0.075), (-0.5, 0.06)]) * L
        wings = [np.array([(0.14, s * 0.06), (-0.08, s * 0.5), (-0.24, s * 0.5), (-0.16, s * 0.06)]) * L
                 for s in (-1, 1)]
        tails = [np.array([(-0.34, s * 0.05), (-0.44, s * 0.22), (-0.53, s * 0.22), (-0.5, s * 0.05)]) * L
                 for s in (-1, 1)]
        return [fuselage, *wings, *tails], [rect(0.3 * L, 0.38 * L, -0.025 * L, 0.025 * L)]
    if category == "ship":
        hull = np.array([(-0.5 * L, -0.5 * W), (0.28 * L, -0.5 * W), (0.5 * L, 0), (0.28 * L, 0.5 * W),
                         (-0.5 * L, 0.5 * W)])
        return [hull], [rect(-0.4 * L, -0.15 * L, -0.3 * W, 0.3 * W)]
    if category == "vehicle":
        return [rect(-L / 2, L / 2, -W / 2, W / 2)], [rect(0.12 * L, 0.3 * L, -0.4 * W, 0.4 * W)]
    if category == "building":
        return [rect(-L / 2, L / 2, -W / 2, W / 2)], [rect(-L / 2, L / 2, 0, W / 2)]
    if category == "court":
        return [rect(-L / 2, L / 2, -W / 2, W / 2)], []
    raise ValueError(f"Unknown synrrsis category {category!r}; expected one of {sorted(CATEGORIES)}.")


def _place(points: np.ndarray, angle: float, center: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.round(points @ np.array([[c, s], [-s, c]]) + center).astype(np.int32)


def _ground(rng: np.random.Generator, size: int) -> np.ndarray:
    base = np.array(_GROUNDS[rng.integers(len(_GROUNDS))], np.float32)
    texture = np.zeros((size, size), np.float32)
    for grid, amp in ((5, 10.0), (24, 4.0)):  # two octaves of smooth noise: mild texture
        noise = rng.normal(0, amp, (grid, grid)).astype(np.float32)
        texture += cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    img = cv2.merge([texture + b for b in base]).clip(0, 255).astype(np.uint8)
    for _ in range(rng.integers(1, 3)):  # roads along the grid lines, with dashed centre lines
        pos = int(size * rng.choice([1, 2]) / 3)
        half = max(2, int(0.022 * size))
        road = img[pos - half : pos + half] if rng.random() < 0.5 else img[:, pos - half : pos + half]
        horizontal = road.shape[0] == 2 * half
        road[:] = (92, 92, 96)
        for d in range(0, size, max(8, size // 16)):
            dash = (slice(half - 1, half), slice(d, d + size // 40)) if horizontal else (
                slice(d, d + size // 40), slice(half - 1, half))
            road[dash] = (190, 185, 160)
    return img


def _draw_object(img: np.ndarray, obj_mask: np.ndarray, category: str, rgb: np.ndarray, radius_px: float,
                 length: float, width: float, angle: float, center: np.ndarray) -> None:
    shadow = np.zeros(obj_mask.shape, np.uint8)  # cast towards the bottom right, not part of the mask
    if category == "storage tank":
        c = tuple(int(v) for v in np.round(center))
        r = round(float(radius_px))
        cv2.circle(shadow, (c[0] + 3, c[1] + 3), r, 1, -1)
        img[shadow > 0] = img[shadow > 0] * 0.6
        cv2.circle(img, c, r, rgb.tolist(), -1)
        cv2.circle(obj_mask, c, r, 1, -1)
        cv2.circle(img, c, max(1, int(0.7 * r)), (rgb * 3 // 4).tolist(), 2)
        return
    body, details = _polygons(category, length, width)
    for poly in body:
        cv2.fillConvexPoly(shadow, _place(poly, angle, center + 3), 1)
    img[shadow > 0] = img[shadow > 0] * 0.6
    for poly in body:
        pts = _place(poly, angle, center)
        cv2.fillConvexPoly(img, pts, rgb.tolist())
        cv2.fillConvexPoly(obj_mask, pts, 1)
    for poly in details:
        cv2.fillConvexPoly(img, _place(poly, angle, center), (rgb * 4 // 5).tolist())
    if category == "court":  # boundary and centre lines inside the court
        line = (60, 60, 60) if rgb.min() > 200 else (245, 245, 245)
        inner = np.array([(-0.42, -0.38), (0.42, -0.38), (0.42, 0.38), (-0.42, 0.38)]) * (length, width * 1.0)
        cv2.polylines(img, [_place(inner, angle, center)], True, line, 1)
        mid = np.array([(0.0, -0.38 * width), (0.0, 0.38 * width)])
        cv2.polylines(img, [_place(mid, angle, center)], False, line, 1)


def _pick(rng: np.random.Generator, names: list, n: int, repeat_prob: float) -> list:
    replace = n > len(names) or rng.random() < repeat_prob
    return [names[i] for i in rng.choice(len(names), size=n, replace=replace)]


def generate_scene(rng: np.random.Generator, image_size: int = 256) -> Scene:
    """Two referable categories with 2-3 instances each, plus 0-2 single objects of other categories."""
    size = image_size
    categories = list(CATEGORIES)
    chosen = [categories[i] for i in rng.permutation(len(categories))[:4]]
    counts = [int(rng.integers(2, 4)), int(rng.integers(2, 4))] + [1] * int(rng.integers(0, 3))
    cells = rng.permutation(9)
    img = _ground(rng, size)
    objects, k = [], 0
    cell_px = size / 3
    for category, n in zip(chosen, counts):
        colors = _pick(rng, list(COLORS), n, repeat_prob=0.25)
        levels = _pick(rng, list(SIZE_LEVELS), n, repeat_prob=0.25)
        for color, level in zip(colors, levels):
            row, col = divmod(int(cells[k]), 3)
            k += 1
            _, length, width = CATEGORIES[category]
            scale = SIZE_LEVELS[level] * rng.uniform(0.97, 1.03) * size
            length, width = length * scale, width * scale
            radius = {"storage tank": 0.5 * length, "plane": 0.56 * length}.get(
                category, 0.5 * np.hypot(length, width)
            )
            slack = max(0.0, cell_px / 2 - radius - 2)
            center = np.array([(col + 0.5) * cell_px, (row + 0.5) * cell_px]) + rng.uniform(-slack, slack, 2)
            rgb = np.clip(np.array(COLORS[color]) + rng.integers(-12, 13, 3), 0, 255)
            mask = np.zeros((size, size), np.uint8)
            # draw inside the object's neighbourhood only (views), with the centre in local coordinates
            x0, y0 = (max(0, int(v - radius) - 6) for v in center)
            x1, y1 = (min(size, int(v + radius) + 8) for v in center)
            _draw_object(img[y0:y1, x0:x1], mask[y0:y1, x0:x1], category, rgb, radius, length, width,
                         rng.uniform(0, 2 * np.pi), center - (x0, y0))
            objects.append(SceneObject(category, color, level, (row, col), mask.astype(bool)))
    return Scene(img, objects)

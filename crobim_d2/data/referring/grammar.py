"""One grammar of referring expressions for generated datasets: synrrsis scenes and crops of annotated
imagery.

An expression is a spec (a template and its words) with a rule that says which objects it describes. It is
kept for a target only when the rule *surely* describes the target (``strict``) and *cannot* describe any
other object of the image (``strict=False``, the loose reading). Geometry near a boundary (an object near a
grid-cell border, two sizes without a clear margin, an object cut by the image edge) then never makes an
expression ambiguous. For objects with crisp geometry, as in synrrsis, both readings agree.

Templates: ``category`` ("the ship"), ``position`` ("the ship at the top left", "the leftmost ship"), ``size``
("the large ship", exactly two of the category), ``superlative`` ("the largest ship", three or more),
``relative`` ("the ship left of <anchor expression>", "the ship closest to <anchor expression>"); any other
template name is an attribute read from ``Referent.attributes`` ("color": "the red ship", "attribute": "the
dead tree").
"""

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "AREA_RATIO",
    "DISTANCE_RATIO",
    "POSITION_MARGIN",
    "POSITION_NAMES",
    "BoxReferent",
    "Grammar",
    "Referent",
]

AREA_RATIO = 1.3  # "large"/"largest" needs this margin in area over every same-category distractor
DISTANCE_RATIO = 1.3  # "closest to" needs this margin in distance to the anchor over every distractor
POSITION_NAMES = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
POSITION_MARGIN = 0.05  # a centroid closer than this (fraction of the image side) to a cell border is in both
_KINDS = ("category", "position", "size", "superlative", "relative")


@dataclass(frozen=True, eq=False)
class Referent:
    """What the grammar knows of one object in one image."""

    category: str
    attributes: Mapping[str, str | None]  # attribute template -> word ("color": "red"); None = unknown
    area: float  # visible pixels
    position: str | None  # the grid position it is surely at; None near a cell border
    near_positions: frozenset[str]  # every position it may be said to be at
    full_area: float = -1.0  # its area including what lies beyond the image edge; -1: equal to area
    whole: bool = True  # entirely inside the image: only such objects are targets or anchors

    @property
    def max_area(self) -> float:
        return self.area if self.full_area < 0 else max(self.area, self.full_area)

    def related(self, anchor: "Referent", direction: tuple[int, int], strict: bool) -> bool:
        """Whether self lies in ``direction`` (row, column step) of ``anchor``."""
        raise NotImplementedError

    def beats(self, other: "Referent", direction: tuple[int, int]) -> bool:
        """Whether self is surely further than ``other`` in ``direction`` ("leftmost")."""
        raise NotImplementedError

    def distance(self, other: "Referent") -> float:
        """Distance between the two objects' centres, in pixels."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class BoxReferent(Referent):
    """An object of real imagery: where it is from its visible mask's centroid and bounding box."""

    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # x0, y0, x1, y1 (pixel edges)
    centre: tuple[float, float] = (0.0, 0.0)  # x, y
    margin: float = 0.0  # pixels: centres closer than this are not surely apart

    @classmethod
    def from_mask(
        cls,
        mask: np.ndarray,
        category: str,
        attributes: Mapping[str, str | None],
        full_area: float,
        whole: bool,
    ) -> "BoxReferent":
        """From the object's visible mask in the image."""
        rows, cols = np.nonzero(mask)
        height, width = mask.shape
        cy, cx = rows.mean() + 0.5, cols.mean() + 0.5
        near = set()
        for y in (cy - POSITION_MARGIN * height, cy + POSITION_MARGIN * height):
            for x in (cx - POSITION_MARGIN * width, cx + POSITION_MARGIN * width):
                r, c = (min(2, max(0, int(3 * v / s))) for v, s in ((y, height), (x, width)))
                near.add(POSITION_NAMES[r][c])
        box = (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
        return cls(
            category=category,
            attributes=dict(attributes),
            area=float(len(rows)),
            position=next(iter(near)) if len(near) == 1 else None,
            near_positions=frozenset(near),
            full_area=float(full_area),
            whole=whole,
            box=box,
            centre=(float(cx), float(cy)),
            margin=POSITION_MARGIN * max(height, width),
        )

    def related(self, anchor: Referent, direction: tuple[int, int], strict: bool) -> bool:
        # strict: entirely beyond the anchor's box and level with it (the boxes share rows, or columns);
        # loose: the centre on that side and within the two boxes' extents of level
        axis = 0 if direction[0] == 0 else 1  # 0: compare x (left/right), 1: compare y (above/below)
        step = direction[1] if axis == 0 else direction[0]
        other = 1 - axis
        offset = abs(self.centre[other] - anchor.centre[other])
        extents = (self.box[other + 2] - self.box[other]) + (anchor.box[other + 2] - anchor.box[other])
        if not strict:
            return step * (self.centre[axis] - anchor.centre[axis]) > 0 and offset < extents
        beyond = (
            self.box[axis + 2] <= anchor.box[axis] if step < 0 else self.box[axis] >= anchor.box[axis + 2]
        )
        return beyond and offset < extents / 2

    def distance(self, other: Referent) -> float:
        return float(np.hypot(self.centre[0] - other.centre[0], self.centre[1] - other.centre[1]))

    def beats(self, other: Referent, direction: tuple[int, int]) -> bool:
        # the centre further by the margin and the leading edge at least as far
        axis = 0 if direction[0] == 0 else 1
        step = direction[1] if axis == 0 else direction[0]
        edge = self.box[axis + (2 if step > 0 else 0)] - other.box[axis + (2 if step > 0 else 0)]
        return step * (self.centre[axis] - other.centre[axis]) >= self.margin and step * edge >= 0


@dataclass(frozen=True)
class Grammar:
    """Which templates a dataset uses, how often, and its words.

    ``weights``: template -> weight when choosing an expression (its keys are the templates used);
    ``relations``: relation words -> (row, column) direction, (0, 0) for the closest object ("closest to");
    ``anchor_templates``: how a relative expression may name its anchor; ``extremes``: words of the position
    template for the object furthest in a direction ("leftmost" -> (0, -1)); ``nouns``: category -> noun
    (default: the category itself); ``min_same_category``: a target needs this many objects of its category
    in the image (2: each target has a distractor).
    """

    name: str
    weights: Mapping[str, float]
    relations: Mapping[str, tuple[int, int]]
    anchor_templates: tuple[str, ...]
    extremes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    nouns: Mapping[str, str] = field(default_factory=dict)
    min_same_category: int = 2

    def __post_init__(self):
        if "relative" in self.anchor_templates:
            raise ValueError(
                f"{self.name}: an anchor is named without a relation; drop 'relative' from anchor_templates."
            )

    def noun(self, category: str) -> str:
        return self.nouns.get(category, category)

    def matches(self, spec: dict, obj: Referent, objects: list[Referent], strict: bool = True) -> bool:
        """Whether ``spec`` surely (``strict``) or possibly (not ``strict``) describes ``obj``."""
        if obj.category != spec["category"]:
            return False
        t = spec["template"]
        if t == "category":
            return True
        same = [o for o in objects if o.category == obj.category and o is not obj]
        if t == "position" and spec["position"] in self.extremes:
            direction = self.extremes[spec["position"]]
            if strict:
                return bool(same) and all(obj.beats(o, direction) for o in same)
            return not any(o.beats(obj, direction) for o in same)
        if t == "position":
            return obj.position == spec["position"] if strict else spec["position"] in obj.near_positions
        if t in ("size", "superlative"):
            if t == "size":
                return len(same) == 1 and _extreme(obj, same, spec["size"] == "large", strict)
            return len(same) >= 2 and _extreme(obj, same, spec["extreme"] == "largest", strict)
        if t == "relative":
            direction = self.relations[spec["relation"]]
            anchor, possible = self._anchors(spec["anchor"], objects)
            if direction == (0, 0):
                return _closest(obj, same, anchor, possible, strict)
            if strict:
                return anchor is not None and anchor is not obj and obj.related(anchor, direction, True)
            return any(a is not obj and obj.related(a, direction, False) for a in possible)
        if t in self.weights or t in self.anchor_templates:
            word = obj.attributes.get(t)
            return word == spec[t] if strict else word in (spec[t], None)
        raise ValueError(f"Unknown {self.name} template {t!r}; expected one of {sorted(self.weights)}.")

    def selects(self, spec: dict, target: Referent, objects: list[Referent]) -> bool:
        """Whether ``spec`` describes ``target`` and no other object of ``objects``."""
        return (
            target.whole
            and self.matches(spec, target, objects)
            and not any(o is not target and self.matches(spec, o, objects, strict=False) for o in objects)
        )

    def _anchors(self, spec: dict, objects: list[Referent]) -> tuple[Referent | None, list[Referent]]:
        """The object an anchor expression selects (None if not exactly one) and every one it may describe."""
        cache = getattr(objects, "anchors", None)
        key = tuple(sorted(spec.items()))
        if cache is not None and key in cache:
            return cache[key]
        selected = [a for a in objects if self.selects(spec, a, objects)]
        found = (
            selected[0] if len(selected) == 1 else None,
            [a for a in objects if self.matches(spec, a, objects, strict=False)],
        )
        if cache is not None:
            cache[key] = found
        return found

    def render(self, spec: dict) -> str:
        noun = self.noun(spec["category"])
        t = spec["template"]
        if t == "category":
            return f"the {noun}"
        if t == "position" and spec["position"] in self.extremes:
            return f"the {spec['position']} {noun}"
        if t == "position":
            where = "in the center" if spec["position"] == "center" else f"at the {spec['position']}"
            return f"the {noun} {where}"
        if t == "size":
            return f"the {spec['size']} {noun}"
        if t == "superlative":
            return f"the {spec['extreme']} {noun}"
        if t == "relative":
            return f"the {noun} {spec['relation']} {self.render(spec['anchor'])}"
        return f"the {spec[t]} {noun}"

    def _specs(self, obj: Referent, template: str) -> list[dict]:
        base = {"category": obj.category, "template": template}
        if template == "category":
            return [base]
        if template == "position":
            cell = [dict(base, position=obj.position)] if obj.position is not None else []
            return cell + [dict(base, position=word) for word in self.extremes]
        if template == "size":
            return [dict(base, size="large"), dict(base, size="small")]
        if template == "superlative":
            return [dict(base, extreme="largest"), dict(base, extreme="smallest")]
        word = obj.attributes.get(template)
        return [dict(base, **{template: word})] if word is not None else []

    def _relative_specs(self, obj: Referent, objects: list[Referent]) -> list[dict]:
        specs = []
        for anchor in objects:
            if anchor is obj:
                continue
            for t in self.anchor_templates:
                for anchor_spec in self._specs(anchor, t):
                    if self.selects(anchor_spec, anchor, objects):
                        specs += [
                            {
                                "category": obj.category,
                                "template": "relative",
                                "relation": relation,
                                "anchor": anchor_spec,
                            }
                            for relation in self.relations
                        ]
        return specs

    def candidates(self, objects: list[Referent]) -> dict[str, list[tuple[int, dict]]]:
        """Per template, the ``(target index, spec)`` pairs whose spec selects exactly its target."""
        objects = _Objects(objects)
        counts = Counter(o.category for o in objects)
        by_template: dict[str, list[tuple[int, dict]]] = {t: [] for t in self.weights}
        for i, obj in enumerate(objects):
            if not obj.whole or counts[obj.category] < self.min_same_category:
                continue
            for t in self.weights:
                specs = self._relative_specs(obj, objects) if t == "relative" else self._specs(obj, t)
                by_template[t] += [(i, s) for s in specs if self.selects(s, obj, objects)]
        return by_template

    def choose(
        self, objects: list[Referent], rng: np.random.Generator, num: int
    ) -> list[tuple[int, dict, str]]:
        """Up to ``num`` ``(target index, spec, text)`` with distinct texts, preferring distinct targets."""
        by_template = self.candidates(objects)
        chosen: list[tuple[int, dict, str]] = []
        while len(chosen) < num:
            used_targets = {c[0] for c in chosen}
            used_texts = {c[2] for c in chosen}
            pools = {
                t: [c for c in cands if self.render(c[1]) not in used_texts]
                for t, cands in by_template.items()
            }
            pools = {t: p for t, p in pools.items() if p}
            if not pools:
                break
            names = sorted(pools)
            weights = np.array([self.weights[t] for t in names])
            pool = pools[names[rng.choice(len(names), p=weights / weights.sum())]]
            fresh = [c for c in pool if c[0] not in used_targets] or pool
            target, spec = fresh[rng.integers(len(fresh))]
            chosen.append((target, spec, self.render(spec)))
        return chosen


def _closest(
    obj: Referent, same: list[Referent], anchor: Referent | None, possible: list[Referent], strict: bool
) -> bool:
    """ "closest to": nearer to the anchor than every other object of its category by DISTANCE_RATIO (loose:
    to any object the anchor expression may describe, and not surely farther than another)."""
    if strict:
        return (
            anchor is not None
            and anchor is not obj
            and all(o is anchor or o.distance(anchor) >= DISTANCE_RATIO * obj.distance(anchor) for o in same)
        )
    return any(
        a is not obj
        and not any(o is not a and obj.distance(a) >= DISTANCE_RATIO * o.distance(a) for o in same)
        for a in possible
    )


class _Objects(list):
    """The objects of one image, remembering what each anchor expression resolves to."""

    def __init__(self, objects):
        super().__init__(objects)
        self.anchors: dict[tuple, tuple[Referent | None, list[Referent]]] = {}


def _extreme(obj: Referent, others: list[Referent], larger: bool, strict: bool) -> bool:
    # strict: by AREA_RATIO over the others however large they may be; loose: not surely beaten
    if larger:
        if strict:
            return all(obj.area >= AREA_RATIO * o.max_area for o in others)
        return all(obj.max_area >= o.area for o in others)
    if strict:
        return all(o.area >= AREA_RATIO * obj.max_area for o in others)
    return all(obj.area <= o.max_area for o in others)

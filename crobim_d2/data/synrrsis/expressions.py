"""Referring expressions for synrrsis scenes, each checked to single out its target.

An expression is a spec (template + words) with a rule that says which objects it describes; it is kept only
when the rule selects exactly its target. The vocabulary is small on purpose: categories, five colors,
size words, nine grid positions and four relations.
"""
from collections import Counter

import numpy as np

from .scene import CATEGORIES, Scene, SceneObject

TEMPLATE_WEIGHTS = {"color": 0.32, "position": 0.28, "size": 0.14, "superlative": 0.12, "relative": 0.14}
AREA_RATIO = 1.3  # "large"/"largest" needs this margin in pixel area over every same-category distractor
_RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}


def _extreme(obj: SceneObject, others: list[SceneObject], larger: bool) -> bool:
    if larger:
        return all(obj.area >= AREA_RATIO * o.area for o in others)
    return all(o.area >= AREA_RATIO * obj.area for o in others)


def _related(obj: SceneObject, anchor: SceneObject, relation: str) -> bool:
    dr, dc = _RELATIONS[relation]
    (r, c), (ar, ac) = obj.cell, anchor.cell
    if dr == 0:
        return r == ar and np.sign(c - ac) == dc
    return c == ac and np.sign(r - ar) == dr


def matches(spec: dict, obj: SceneObject, scene: Scene) -> bool:
    """Whether ``obj`` fits the expression ``spec`` in ``scene``."""
    if obj.category != spec["category"]:
        return False
    same = [o for o in scene.objects if o.category == obj.category and o is not obj]
    t = spec["template"]
    if t == "color":
        return obj.color == spec["color"]
    if t == "position":
        return obj.position == spec["position"]
    if t == "size":
        return len(same) == 1 and _extreme(obj, same, spec["size"] == "large")
    if t == "superlative":
        return len(same) >= 2 and _extreme(obj, same, spec["extreme"] == "largest")
    if t == "relative":
        anchors = [o for o in scene.objects
                   if o.category == spec["anchor_category"] and o.color == spec["anchor_color"]]
        return len(anchors) == 1 and anchors[0] is not obj and _related(obj, anchors[0], spec["relation"])
    raise ValueError(f"Unknown synrrsis template {t!r}; expected one of {sorted(TEMPLATE_WEIGHTS)}.")


def render(spec: dict) -> str:
    noun = CATEGORIES[spec["category"]][0]
    t = spec["template"]
    if t == "color":
        return f"the {spec['color']} {noun}"
    if t == "position":
        where = "in the center" if spec["position"] == "center" else f"at the {spec['position']}"
        return f"the {noun} {where}"
    if t == "size":
        return f"the {spec['size']} {noun}"
    if t == "superlative":
        return f"the {spec['extreme']} {noun}"
    anchor = CATEGORIES[spec["anchor_category"]][0]
    return f"the {noun} {spec['relation']} the {spec['anchor_color']} {anchor}"


def _candidate_specs(obj: SceneObject, scene: Scene) -> list[dict]:
    base = {"category": obj.category}
    specs = [
        dict(base, template="color", color=obj.color),
        dict(base, template="position", position=obj.position),
        dict(base, template="size", size="large"),
        dict(base, template="size", size="small"),
        dict(base, template="superlative", extreme="largest"),
        dict(base, template="superlative", extreme="smallest"),
    ]
    for anchor in scene.objects:
        if anchor is not obj:
            for relation in _RELATIONS:
                specs.append(dict(base, template="relative", relation=relation,
                                  anchor_category=anchor.category, anchor_color=anchor.color))
    return specs


def refers_to(spec: dict, scene: Scene) -> list[int]:
    """Indices of the scene's objects that ``spec`` describes."""
    return [i for i, o in enumerate(scene.objects) if matches(spec, o, scene)]


def scene_expressions(scene: Scene, rng: np.random.Generator, num: int) -> list[tuple[int, dict, str]]:
    """Up to ``num`` ``(target index, spec, text)`` with distinct texts, preferring distinct targets.

    Targets are objects whose category appears at least twice (each has a same-category distractor).
    """
    counts = Counter(o.category for o in scene.objects)
    by_template: dict[str, list[tuple[int, dict]]] = {t: [] for t in TEMPLATE_WEIGHTS}
    for i, obj in enumerate(scene.objects):
        if counts[obj.category] < 2:
            continue
        for spec in _candidate_specs(obj, scene):
            if refers_to(spec, scene) == [i]:
                by_template[spec["template"]].append((i, spec))
    chosen: list[tuple[int, dict, str]] = []
    while len(chosen) < num:
        used_targets = {c[0] for c in chosen}
        used_texts = {c[2] for c in chosen}
        pools = {t: [c for c in cands if render(c[1]) not in used_texts] for t, cands in by_template.items()}
        pools = {t: p for t, p in pools.items() if p}
        if not pools:
            break
        names = sorted(pools)
        weights = np.array([TEMPLATE_WEIGHTS[t] for t in names])
        pool = pools[names[rng.choice(len(names), p=weights / weights.sum())]]
        fresh = [c for c in pool if c[0] not in used_targets] or pool
        target, spec = fresh[rng.integers(len(fresh))]
        chosen.append((target, spec, render(spec)))
    return chosen

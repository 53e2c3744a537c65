"""Referring expressions for synrrsis scenes, each checked to single out its target.

The shared grammar (``crobim_d2.data.referring.grammar``) with synrrsis's words: five colors, size words,
nine grid positions and four relations between grid cells; a relative expression names its anchor by color.
"""
from dataclasses import dataclass

import numpy as np

from ..referring.grammar import AREA_RATIO, Grammar, Referent
from .scene import CATEGORIES, Scene, SceneObject

__all__ = ["AREA_RATIO", "GRAMMAR", "TEMPLATE_WEIGHTS", "matches", "refers_to", "render", "scene_expressions"]

TEMPLATE_WEIGHTS = {"color": 0.32, "position": 0.28, "size": 0.14, "superlative": 0.12, "relative": 0.14}
GRAMMAR = Grammar(
    name="synrrsis",
    weights=TEMPLATE_WEIGHTS,
    relations={"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)},
    anchor_templates=("color",),
    nouns={category: words[0] for category, words in CATEGORIES.items()},
)


@dataclass(frozen=True, eq=False)
class _CellReferent(Referent):
    """A synrrsis object: one per cell of the 3x3 grid, so relations compare cells."""

    cell: tuple[int, int] = (0, 0)

    def related(self, anchor: "_CellReferent", direction: tuple[int, int], strict: bool) -> bool:
        dr, dc = direction
        (r, c), (ar, ac) = self.cell, anchor.cell
        if dr == 0:
            return r == ar and np.sign(c - ac) == dc
        return c == ac and np.sign(r - ar) == dr


def _referents(scene: Scene) -> list[Referent]:
    return [_CellReferent(o.category, {"color": o.color}, o.area, o.position, frozenset([o.position]), cell=o.cell)
            for o in scene.objects]


def matches(spec: dict, obj: SceneObject, scene: Scene) -> bool:
    """Whether ``obj`` fits the expression ``spec`` in ``scene``."""
    referents = _referents(scene)
    index = next(i for i, o in enumerate(scene.objects) if o is obj)
    return GRAMMAR.matches(spec, referents[index], referents)


def render(spec: dict) -> str:
    return GRAMMAR.render(spec)


def refers_to(spec: dict, scene: Scene) -> list[int]:
    """Indices of the scene's objects that ``spec`` describes."""
    referents = _referents(scene)
    return [i for i, r in enumerate(referents) if GRAMMAR.matches(spec, r, referents)]


def scene_expressions(scene: Scene, rng: np.random.Generator, num: int) -> list[tuple[int, dict, str]]:
    """Up to ``num`` ``(target index, spec, text)`` with distinct texts, preferring distinct targets.

    Targets are objects whose category appears at least twice (each has a same-category distractor).
    """
    return GRAMMAR.choose(_referents(scene), rng, num)

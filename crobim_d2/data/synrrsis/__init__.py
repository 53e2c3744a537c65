"""synrrsis: a deterministic synthetic RRSIS benchmark whose expressions must be read to find the target."""
from .expressions import matches, refers_to, render, scene_expressions
from .generate import SYNRRSIS_VERSION, SynRRSISParams, ensure_synrrsis, generate_synrrsis, write_split
from .scene import CATEGORIES, COLORS, Scene, SceneObject, generate_scene

__all__ = [
    "CATEGORIES", "COLORS", "SYNRRSIS_VERSION", "Scene", "SceneObject", "SynRRSISParams", "ensure_synrrsis",
    "generate_scene", "generate_synrrsis", "matches", "refers_to", "render", "scene_expressions",
    "write_split",
]

"""Flips that keep an expression true: mirror the image and swap the spatial words of the expression.

A horizontal flip turns "the tank left of the red ship" into "the tank right of the red ship" for the mirrored
image; a vertical flip swaps top/bottom, above/below, upper/lower, north/south. Whole words only, any case
("Top-left" -> "Bottom-left"); every other word is kept.
"""
import re

import numpy as np

__all__ = ["FLIP_WORD_PAIRS", "flip_array", "flip_expression"]

FLIP_WORD_PAIRS = {
    "horizontal": (
        ("left", "right"), ("leftmost", "rightmost"), ("lefthand", "righthand"),
        ("west", "east"), ("western", "eastern"), ("westernmost", "easternmost"),
        ("westmost", "eastmost"), ("westward", "eastward"), ("westwards", "eastwards"),
    ),
    "vertical": (
        ("top", "bottom"), ("topmost", "bottommost"), ("upper", "lower"), ("uppermost", "lowermost"),
        ("above", "below"), ("north", "south"), ("northern", "southern"),
        ("northernmost", "southernmost"), ("northward", "southward"), ("northwards", "southwards"),
    ),
}


def _swap_table(direction: str) -> dict[str, str]:
    table = {}
    for a, b in FLIP_WORD_PAIRS[direction]:
        table[a], table[b] = b, a
    return table


_TABLES = {d: _swap_table(d) for d in FLIP_WORD_PAIRS}
_PATTERNS = {d: re.compile(r"\b(" + "|".join(sorted(t, key=len, reverse=True)) + r")\b", re.IGNORECASE)
             for d, t in _TABLES.items()}
# Compass words within one token: "northwest" -> "northeast" (horizontal) / "southwest" (vertical).
_COMPASS = re.compile(r"\b(north|south)(east|west)(ern)?\b", re.IGNORECASE)


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def flip_expression(sentence: str, horizontal: bool, vertical: bool) -> str:
    """The expression that describes the flipped image (horizontal: left-right mirror; vertical: top-bottom)."""
    other = {"north": "south", "south": "north", "east": "west", "west": "east"}

    def compass(m: re.Match) -> str:
        ns, ew, suffix = m.group(1), m.group(2), m.group(3) or ""
        ns2 = _match_case(other[ns.lower()], ns) if vertical else ns
        ew2 = _match_case(other[ew.lower()], ew) if horizontal else ew
        return ns2 + ew2 + suffix

    out = _COMPASS.sub(compass, sentence)
    for direction, on in (("horizontal", horizontal), ("vertical", vertical)):
        if on:
            table = _TABLES[direction]
            out = _PATTERNS[direction].sub(
                lambda m, table=table: _match_case(table[m.group(0).lower()], m.group(0)), out
            )
    return out


def flip_array(a: np.ndarray, horizontal: bool, vertical: bool) -> np.ndarray:
    """Flip an (H, W, ...) array: horizontal mirrors the columns, vertical the rows (a contiguous copy)."""
    if horizontal:
        a = a[:, ::-1]
    if vertical:
        a = a[::-1]
    return np.ascontiguousarray(a)

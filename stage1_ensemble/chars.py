"""Character classes of a text as boolean arrays, without a Python loop per character.

Lookup tables cover the Basic Multilingual Plane (built once, ~10 ms); the rare characters
beyond it are classified one by one.
"""

from __future__ import annotations

import numpy as np

_BMP = 0x10000
_ALNUM = np.array([chr(c).isalnum() for c in range(_BMP)], dtype=bool)
_SPACE = np.array([chr(c).isspace() for c in range(_BMP)], dtype=bool)


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _classify(text: str, table: np.ndarray, test) -> np.ndarray:
    codes = code_points(text)
    inside = codes < _BMP
    mask = table[np.where(inside, codes, 0)]
    for i in np.flatnonzero(~inside).tolist():
        mask[i] = test(text[i])
    return mask & inside if inside.all() else mask


def word_mask(text: str) -> np.ndarray:
    """True on letters and digits of any script (``str.isalnum``)."""
    return _classify(text, _ALNUM, str.isalnum)


def space_mask(text: str) -> np.ndarray:
    """True on whitespace (``str.isspace``)."""
    return _classify(text, _SPACE, str.isspace)

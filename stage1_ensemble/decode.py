"""Character probabilities -> spans, as pure functions over arrays.

Semantics: a character is positive when p >= threshold; maximal positive runs become spans;
each span grows outward to whole words (a word is a maximal run of Unicode letters or
digits), then loses leading and trailing whitespace; spans that then touch or overlap merge.
A span's score is the mean character probability inside it.
"""

from __future__ import annotations

import re

import numpy as np

_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script, no underscore


def word_bounds(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends (exclusive) of the words of ``text``, sorted."""
    bounds = np.array([m.span() for m in _WORD.finditer(text)], dtype=np.int64).reshape(-1, 2)
    return bounds[:, 0], bounds[:, 1]


def positive_runs(positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends (exclusive) of the maximal True runs of a boolean array."""
    edges = np.diff(np.concatenate(([0], positive.view(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def expand_to_words(starts: np.ndarray, ends: np.ndarray, w_start: np.ndarray,
                    w_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move each start back to the start of its word and each end on to the end of its word."""
    if len(w_start) == 0 or len(starts) == 0:
        return starts, ends
    i = np.searchsorted(w_start, starts, side="right") - 1  # the word starting at or before
    inside = (i >= 0) & (w_end[np.maximum(i, 0)] > starts)
    starts = np.where(inside, w_start[np.maximum(i, 0)], starts)
    j = np.searchsorted(w_start, ends - 1, side="right") - 1  # the word holding the last char
    inside = (j >= 0) & (w_end[np.maximum(j, 0)] > ends - 1)
    ends = np.where(inside, w_end[np.maximum(j, 0)], ends)
    return starts, ends


def decode_spans(text: str, char_probs: np.ndarray, threshold: float,
                 ) -> list[tuple[int, int, float]]:
    """Spans ``(start, end, score)`` sorted by start; ``text[start:end]`` is the mention."""
    probs = np.asarray(char_probs, dtype=np.float32)
    if probs.shape != (len(text),):
        raise ValueError(f"char_probs has shape {probs.shape}; the text has {len(text)} "
                         "characters")
    starts, ends = positive_runs(probs >= threshold)
    if len(starts) == 0:
        return []
    starts, ends = expand_to_words(starts, ends, *word_bounds(text))
    spans: list[list[int]] = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        piece = text[s:e]
        s, e = s + len(piece) - len(piece.lstrip()), e - (len(piece) - len(piece.rstrip()))
        if e <= s:
            continue  # whitespace only
        if spans and s <= spans[-1][1]:  # touches or overlaps the previous span: merge
            spans[-1][1] = max(spans[-1][1], e)
        else:
            spans.append([s, e])
    cumulative = np.concatenate(([0.0], np.cumsum(probs, dtype=np.float64)))
    return [(s, e, float((cumulative[e] - cumulative[s]) / (e - s))) for s, e in spans]

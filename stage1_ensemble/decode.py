"""Character probabilities -> spans, as pure functions over arrays.

Semantics: a character is positive when p >= threshold; maximal positive runs become spans;
each span grows outward to whole words (a word is a maximal run of Unicode letters or
digits), then loses leading and trailing whitespace; spans that then touch or overlap merge.
A span's score is the mean character probability inside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stage1_ensemble.chars import space_mask, word_mask


def positive_runs(positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends (exclusive) of the maximal True runs of a boolean array."""
    edges = np.diff(np.concatenate(([0], positive.view(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def expand_to_words(starts: np.ndarray, ends: np.ndarray, text: str,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Move each start back to the start of its word and each end on to the end of its word."""
    w_start, w_end = positive_runs(word_mask(text))
    if len(w_start) == 0:
        return starts, ends
    i = np.maximum(np.searchsorted(w_start, starts, side="right") - 1, 0)
    starts = np.where((w_start[i] <= starts) & (w_end[i] > starts), w_start[i], starts)
    j = np.maximum(np.searchsorted(w_start, ends - 1, side="right") - 1, 0)
    ends = np.where((w_start[j] <= ends - 1) & (w_end[j] > ends - 1), w_end[j], ends)
    return starts, ends


def trim_spaces(starts: np.ndarray, ends: np.ndarray, text: str,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Drop leading and trailing whitespace; spans of whitespace only disappear."""
    n = len(text)
    solid = ~space_mask(text)
    idx = np.arange(n)
    # next solid character at or after i (n if none); last solid at or before i (-1 if none)
    next_solid = np.minimum.accumulate(np.where(solid, idx, n)[::-1])[::-1]
    prev_solid = np.maximum.accumulate(np.where(solid, idx, -1))
    new_starts, new_ends = next_solid[starts], prev_solid[ends - 1] + 1
    keep = new_ends > new_starts
    return new_starts[keep], new_ends[keep]


def merge_touching(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge spans (sorted by start) that touch or overlap."""
    if len(starts) == 0:
        return starts, ends
    reach = np.maximum.accumulate(ends)
    first = np.concatenate(([True], starts[1:] > reach[:-1]))
    heads = np.flatnonzero(first)
    return starts[heads], np.maximum.reduceat(ends, heads)


def decode_arrays(text: str, probs: np.ndarray, threshold: float,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Starts, ends and scores of the spans of one text, as arrays."""
    starts, ends = positive_runs(probs >= threshold)
    if len(starts):
        starts, ends = expand_to_words(starts, ends, text)
        starts, ends = trim_spaces(starts, ends, text)
        starts, ends = merge_touching(starts, ends)
    cumulative = np.concatenate(([0.0], np.cumsum(probs, dtype=np.float64)))
    scores = (cumulative[ends] - cumulative[starts]) / np.maximum(ends - starts, 1)
    return starts, ends, scores


def _checked(text: str, char_probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(char_probs, dtype=np.float32)
    if probs.shape != (len(text),):
        raise ValueError(f"char_probs has shape {probs.shape}; the text has {len(text)} "
                         "characters")
    return probs


def decode_spans(text: str, char_probs: np.ndarray, threshold: float,
                 ) -> list[tuple[int, int, float]]:
    """Spans ``(start, end, score)`` sorted by start; ``text[start:end]`` is the mention."""
    starts, ends, scores = decode_arrays(text, _checked(text, char_probs), threshold)
    return list(zip(starts.tolist(), ends.tolist(), scores.tolist()))


# Documents are decoded together, joined by a character that is neither a letter, a digit
# nor a space, with a probability below any threshold: nothing crosses it.
SEPARATOR = "\x00"


def decode_batch(texts: Sequence[str], char_probs: Sequence[np.ndarray], threshold: float,
                 ) -> list[list[tuple[int, int, float]]]:
    """``decode_spans`` of many texts at once (one pass over their joined arrays)."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, not {threshold}")
    if not texts:
        return []
    parts: list[np.ndarray] = []
    for text, probs in zip(texts, char_probs, strict=True):
        parts += [_checked(text, probs), np.array([-1.0], dtype=np.float32)]
    joined = SEPARATOR.join(texts)
    starts, ends, scores = decode_arrays(joined, np.concatenate(parts[:-1]), threshold)
    bases = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]])
    doc = np.searchsorted(bases, starts, side="right") - 1
    cut = np.searchsorted(doc, np.arange(len(texts) + 1))
    out = []
    for i, base in enumerate(bases.tolist()):
        lo, hi = cut[i], cut[i + 1]
        out.append(list(zip((starts[lo:hi] - base).tolist(), (ends[lo:hi] - base).tolist(),
                            scores[lo:hi].tolist())))
    return out

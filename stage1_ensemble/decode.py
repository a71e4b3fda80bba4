"""Character probabilities -> spans, as pure functions over arrays.

Semantics: a character is positive when p >= threshold; maximal positive runs become spans;
each span grows outward to whole words (a word is a maximal run of Unicode letters or
digits, a letter with its combining marks: decomposed text keeps its accents), then loses
leading and trailing whitespace; spans that then touch or overlap merge. A span's score is
the mean character probability inside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stage1_ensemble.chars import TextChars, chunks, trim_spaces, walk


def positive_runs(positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends (exclusive) of the maximal True runs of a boolean array."""
    edges = np.flatnonzero(np.diff(positive, prepend=False, append=False))
    return edges[::2], edges[1::2]  # runs open and close in turn


def expand_to_words(starts: np.ndarray, ends: np.ndarray, chars: TextChars,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Move each start back to the start of its word and each end on to the end of its word
    (new arrays). Only the span boundaries are looked at, never the whole text."""
    starts, ends = starts.copy(), ends.copy()
    last = len(chars.text) - 1

    def word_before_start(i: np.ndarray) -> np.ndarray:
        return (starts[i] > 0) & chars.is_word(np.maximum(starts[i] - 1, 0))

    def word_after_end(i: np.ndarray) -> np.ndarray:
        return (ends[i] <= last) & chars.is_word(np.minimum(ends[i], last))

    inside = np.flatnonzero(chars.is_word(starts))
    walk(starts, inside[word_before_start(inside)], -1, word_before_start)
    inside = np.flatnonzero(chars.is_word(ends - 1))
    walk(ends, inside[word_after_end(inside)], 1, word_after_end)
    return starts, ends


def merge_touching(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge spans (sorted by start) that touch or overlap."""
    if len(starts) == 0:
        return starts, ends
    reach = np.maximum.accumulate(ends)
    first = np.concatenate(([True], starts[1:] > reach[:-1]))
    heads = np.flatnonzero(first)
    return starts[heads], np.maximum.reduceat(ends, heads)


def span_means(probs: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Mean of ``probs`` over each span; spans sorted, disjoint and not touching."""
    if not len(starts):
        return np.zeros(0)
    if ends[-1] >= len(probs):  # reduceat needs every boundary inside the array
        probs = np.append(probs, np.float32(0))
    bounds = np.stack((starts, ends), axis=1).ravel()
    sums = np.add.reduceat(probs, bounds, dtype=np.float64)[::2]
    return sums / (ends - starts)


def decode_arrays(text: str, probs: np.ndarray, threshold: float,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Starts, ends and scores of the spans of one text, as arrays."""
    starts, ends = positive_runs(probs >= threshold)
    if len(starts):
        chars = TextChars(text)
        starts, ends = expand_to_words(starts, ends, chars)
        starts, ends = trim_spaces(starts, ends, chars)
        keep = ends > starts
        starts, ends = merge_touching(starts[keep], ends[keep])
    return starts, ends, span_means(probs, starts, ends)


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
    """``decode_spans`` of many texts at once (passes over their joined arrays)."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, not {threshold}")
    if len(texts) != len(char_probs):
        raise ValueError(f"{len(texts)} texts but {len(char_probs)} probability arrays")
    out: list[list[tuple[int, int, float]]] = []
    for lo, hi in chunks([len(t) for t in texts]):
        out += _decode_joined(texts[lo:hi], char_probs[lo:hi], threshold)
    return out


def _decode_joined(texts: Sequence[str], char_probs: Sequence[np.ndarray], threshold: float,
                   ) -> list[list[tuple[int, int, float]]]:
    parts: list[np.ndarray] = []
    for text, probs in zip(texts, char_probs):
        parts += [_checked(text, probs), np.array([-1.0], dtype=np.float32)]
    joined = SEPARATOR.join(texts)
    starts, ends, scores = decode_arrays(joined, np.concatenate(parts[:-1]), threshold)
    bases = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]])
    doc = np.searchsorted(bases, starts, side="right") - 1
    cut = np.searchsorted(doc, np.arange(len(texts) + 1)).tolist()
    shift = bases[doc]
    found = list(zip((starts - shift).tolist(), (ends - shift).tolist(), scores.tolist()))
    return [found[lo:hi] for lo, hi in zip(cut, cut[1:])]

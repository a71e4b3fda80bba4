"""Token probabilities -> character probabilities, vectorised with numpy.

A character covered by tokens gets the mean positive probability of those tokens (over the
windows and members that cover it). A character covered by no token (spaces, characters the
tokenizer drops) gets the minimum of its nearest covered neighbours, so an inner space joins
a mention only when both sides of it are positive. Special tokens, zero-width offsets and
tokens that cover only whitespace carry no probability.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stage1_ensemble.chars import TextChars, chunks, trim_spaces


def char_means(n: int, starts: np.ndarray, ends: np.ndarray, probs: np.ndarray,
               walls: np.ndarray | None = None) -> np.ndarray:
    """Per character of a text of ``n``: the mean probability of the ranges covering it, or
    for a character no range covers, the minimum of its nearest covered neighbours (0 at an
    edge with no covered neighbour). ``walls`` are characters no range covers that count as
    edges for their neighbours (the separators of joined texts); their own value is
    meaningless.

    Range boundaries cut the text into segments on which every character has the same value,
    so the arithmetic is per segment (a few per token) and the characters are written once.
    """
    cut = np.zeros(n + 1, dtype=bool)
    cut[starts] = cut[ends] = True
    cut[0] = cut[n] = True
    if walls is not None:
        cut[walls] = cut[walls + 1] = True
    k = int(np.count_nonzero(cut)) - 1  # segments: from each cut up to the next
    segment = np.cumsum(cut, dtype=np.int32)  # character c lies in segment[c], from 1 to k
    first, last = segment[starts], segment[ends]
    total = np.bincount(first, probs, k + 2)
    total -= np.bincount(last, probs, k + 2)
    count = np.bincount(first, minlength=k + 2)
    count -= np.bincount(last, minlength=k + 2)
    np.cumsum(total, out=total)
    np.cumsum(count, out=count)
    means = total / np.maximum(count, 1)
    means[0] = means[k + 1] = 0.0  # outside the text (the sums there cancel only roughly)
    # Every boundary starts or ends a range (or a wall), so an uncovered segment sits between
    # two covered ones or an edge or a wall (all 0 here): its nearest covered characters are
    # its neighbours' own.
    gaps = np.flatnonzero(count[1 : k + 1] == 0) + 1
    means[gaps] = np.minimum(means[gaps - 1], means[gaps + 1])
    return np.take(means.astype(np.float32), segment[:n])


def project_batch(texts: Sequence[str], doc_index: Sequence[int],
                  offsets: np.ndarray | Sequence[np.ndarray],
                  probs: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Character probabilities of many texts at once.

    Window ``w`` belongs to text ``doc_index[w]``; ``offsets`` is (W, L, 2) and ``probs``
    (W, L) as padded arrays (padding has zero-width offsets), or one array a window. The
    texts are joined (in pieces of about CHUNK_CHARS characters) and worked on together;
    the separators are walls, so nothing leaks from text to text.
    """
    if not texts:
        return []
    doc_index = np.asarray(doc_index, dtype=np.int64)
    pieces = chunks([len(t) for t in texts])
    if len(pieces) == 1:
        return _project_joined(texts, doc_index, offsets, probs)
    out: list[np.ndarray] = []
    padded = isinstance(offsets, np.ndarray) and offsets.ndim == 3
    for lo, hi in pieces:
        rows = np.flatnonzero((doc_index >= lo) & (doc_index < hi))
        if padded:
            part_offsets, part_probs = offsets[rows], np.asarray(probs)[rows]
        else:
            part_offsets = [offsets[r] for r in rows.tolist()]
            part_probs = [probs[r] for r in rows.tolist()]
        out += _project_joined(texts[lo:hi], doc_index[rows] - lo, part_offsets, part_probs)
    return out


def _project_joined(texts: Sequence[str], doc_index: np.ndarray, offsets, probs,
                    ) -> list[np.ndarray]:
    from stage1_ensemble.decode import SEPARATOR

    lengths = np.array([len(t) for t in texts])
    bases = np.concatenate(([0], np.cumsum(lengths + 1)[:-1]))
    joined = SEPARATOR.join(texts)
    starts, ends, p = _joined_ranges(doc_index, offsets, probs, bases, bases + lengths)
    keep = ends > starts
    # Some tokenizers (XLM-R's SentencePiece among them) count the space before a word into
    # the word's first piece; that space belongs to no token, so that it joins a mention
    # only when both of its neighbours are positive. Tokens of whitespace only carry nothing.
    starts, ends = trim_spaces(starts[keep], ends[keep], TextChars(joined))
    p = p[keep]
    keep = ends > starts
    out = char_means(len(joined), starts[keep], ends[keep], p[keep], walls=bases[1:] - 1)
    return [out[b : b + n] for b, n in zip(bases.tolist(), lengths.tolist())]


def _joined_ranges(doc_index, offsets, probs, bases: np.ndarray, limits: np.ndarray,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token starts, ends and probabilities, the offsets moved to the joined texts and clipped
    to their own text's end (zero-width offsets stay zero-width)."""
    if isinstance(offsets, np.ndarray) and offsets.ndim == 3:
        shift, limit = bases[doc_index][:, None], limits[doc_index][:, None]
        return (np.minimum(offsets[..., 0] + shift, limit).ravel(),
                np.minimum(offsets[..., 1] + shift, limit).ravel(),
                np.asarray(probs, dtype=np.float64).ravel())
    if len(offsets) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    ranges = np.concatenate([np.minimum(np.asarray(o, dtype=np.int64).reshape(-1, 2) + bases[d],
                                        limits[d])
                             for d, o in zip(doc_index.tolist(), offsets)])
    return (ranges[:, 0], ranges[:, 1],
            np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in probs]))


def project(text: str, windows: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Character probabilities of ``text`` from (offsets, token probabilities) windows."""
    if not windows:
        return project_batch([text], [], [], [])[0]
    offsets, probs = zip(*windows)
    return project_batch([text], [0] * len(windows), list(offsets), list(probs))[0]


def weighted_mean(arrays: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """The ensemble: a weighted mean of members' character probabilities."""
    if not arrays:
        raise ValueError("an ensemble needs at least one member")
    w = np.ones(len(arrays)) if weights is None else np.asarray(weights, dtype=np.float64)
    stacked = np.stack([np.asarray(a, dtype=np.float32) for a in arrays])
    return (np.tensordot(w, stacked, axes=1) / w.sum()).astype(np.float32)

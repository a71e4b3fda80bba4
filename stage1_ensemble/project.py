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

from stage1_ensemble.chars import space_mask


class CharAccumulator:
    """Sums token probabilities onto the characters of one text, window after window."""

    def __init__(self, text: str) -> None:
        self.n = len(text)
        self._space = np.concatenate((space_mask(text), [False]))
        self._nonspace = np.concatenate(([0], np.cumsum(~self._space[:-1])))
        self._sum = np.zeros(self.n + 1, dtype=np.float64)  # difference arrays
        self._count = np.zeros(self.n + 1, dtype=np.float64)

    def add(self, offsets: np.ndarray, probs: np.ndarray, weight: float = 1.0) -> None:
        """Add one window: ``offsets`` (n_tokens, 2) character ranges, ``probs`` (n_tokens,)."""
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        starts, ends = offsets[:, 0], np.minimum(offsets[:, 1], self.n)
        keep = (ends > starts) & (self._nonspace[ends] > self._nonspace[starts])
        starts, ends = self._trim(starts[keep], ends[keep])
        p = np.asarray(probs, dtype=np.float64)[keep] * weight
        np.add.at(self._sum, starts, p)
        np.add.at(self._sum, ends, -p)
        np.add.at(self._count, starts, weight)
        np.add.at(self._count, ends, -weight)

    def _trim(self, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Some tokenizers (XLM-R's SentencePiece among them) count the space before a word
        # into the word's first piece; that space belongs to no token, so that it joins a
        # mention only when both of its neighbours are positive. Each step moves every
        # offset by one character; tokens hold at least one non-space character.
        while True:
            lead = self._space[starts]
            if not lead.any():
                break
            starts = starts + lead
        while True:
            trail = self._space[ends - 1]
            if not trail.any():
                break
            ends = ends - trail
        return starts, ends

    def result(self) -> np.ndarray:
        """Character probabilities (float32, one per character)."""
        total = np.cumsum(self._sum)[: self.n]
        count = np.cumsum(self._count)[: self.n]
        covered = count > 1e-9
        probs = np.where(covered, total / np.where(covered, count, 1.0), 0.0)
        return fill_uncovered(probs, covered).astype(np.float32)


def fill_uncovered(probs: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Give each uncovered character the minimum of its nearest covered neighbours (0 at an
    edge with no covered neighbour)."""
    n = len(probs)
    if n == 0 or covered.all():
        return probs
    idx = np.arange(n)
    left = np.maximum.accumulate(np.where(covered, idx, -1))
    right = np.minimum.accumulate(np.where(covered, idx, n)[::-1])[::-1]
    padded = np.concatenate((probs, [0.0]))  # index n (and -1) reads 0
    from_left = np.where(left >= 0, padded[left], 0.0)
    from_right = padded[right]
    return np.where(covered, probs, np.minimum(from_left, from_right))


def project_batch(texts: Sequence[str], doc_index: Sequence[int],
                  offsets: np.ndarray | Sequence[np.ndarray],
                  probs: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Character probabilities of many texts at once.

    Window ``w`` belongs to text ``doc_index[w]``; ``offsets`` is (W, L, 2) and ``probs``
    (W, L) as padded arrays (padding has zero-width offsets), or one array a window. One pass
    over the joined texts, whose separators count as covered with probability 0, so nothing
    leaks from one text into the next.
    """
    from stage1_ensemble.decode import SEPARATOR

    if not texts:
        return []
    lengths = np.array([len(t) for t in texts])
    bases = np.concatenate(([0], np.cumsum(lengths + 1)[:-1]))
    acc = CharAccumulator(SEPARATOR.join(texts))
    docs, offs, p = _flatten(np.asarray(doc_index, dtype=np.int64), offsets, probs)
    if len(docs):
        # offsets past a text's end are clipped to it; zero-width offsets stay zero-width
        offs = np.minimum(offs, lengths[docs][:, None]) + bases[docs][:, None]
        acc.add(offs, p)
    seps = bases[1:] - 1
    acc.add(np.stack([seps, seps + 1], axis=1), np.zeros(len(seps)))
    joined = acc.result()
    return [joined[b : b + n] for b, n in zip(bases.tolist(), lengths.tolist())]


def _flatten(doc_index: np.ndarray, offsets, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(offsets, np.ndarray) and offsets.ndim == 3:
        width = offsets.shape[1]
        return (np.repeat(doc_index, width), offsets.reshape(-1, 2),
                np.asarray(probs, dtype=np.float64).reshape(-1))
    if len(offsets) == 0:
        return np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros(0)
    return (np.concatenate([np.full(len(o), d) for d, o in zip(doc_index, offsets)]),
            np.concatenate([np.asarray(o, dtype=np.int64).reshape(-1, 2) for o in offsets]),
            np.concatenate([np.asarray(x, dtype=np.float64) for x in probs]))


def project(text: str, windows: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Character probabilities of ``text`` from (offsets, token probabilities) windows."""
    acc = CharAccumulator(text)
    for offsets, probs in windows:
        acc.add(offsets, probs)
    return acc.result()


def weighted_mean(arrays: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """The ensemble: a weighted mean of members' character probabilities."""
    if not arrays:
        raise ValueError("an ensemble needs at least one member")
    w = np.ones(len(arrays)) if weights is None else np.asarray(weights, dtype=np.float64)
    stacked = np.stack([np.asarray(a, dtype=np.float32) for a in arrays])
    return (np.tensordot(w, stacked, axes=1) / w.sum()).astype(np.float32)

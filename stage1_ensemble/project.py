"""Token probabilities -> character probabilities, vectorised with numpy.

A character covered by tokens gets the mean positive probability of those tokens (over the
windows and members that cover it). A character covered by no token (spaces, characters the
tokenizer drops) gets the minimum of its nearest covered neighbours, so an inner space joins
a mention only when both sides of it are positive. Special tokens, zero-width offsets and
tokens that cover only whitespace carry no probability.

Where tokens land depends only on the texts and the windows' offsets, not on the
probabilities: a ``Projection`` works that out once, then serves every member that shares
the windows (every member with the same tokenizer), and averages members while their values
are still per segment, so that characters are written once per class rather than once per
member.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stage1_ensemble.chars import TextChars, chunks, running_total, trim_spaces


class _Segments:
    """Ranges (trimmed tokens) on a text of ``n`` characters. A character gets the mean
    probability of the ranges covering it, or, covered by none, the minimum of its nearest
    covered neighbours (0 at an edge with no covered neighbour). ``walls`` are characters no
    range covers that count as edges for their neighbours (the separators of joined texts).

    Range boundaries cut the text into segments on which every character has the same value,
    so the arithmetic is per segment (a few per token) and the characters are written once.
    """

    def __init__(self, n: int, starts: np.ndarray, ends: np.ndarray,
                 walls: np.ndarray | None = None) -> None:
        cut = np.zeros(n + 1, dtype=bool)
        cut[starts] = cut[ends] = True
        cut[0] = cut[n] = True
        if walls is not None:
            cut[walls] = cut[walls + 1] = True
        self.k = k = int(np.count_nonzero(cut)) - 1  # segments: from each cut up to the next
        segment = running_total(cut, np.int32)  # character c lies in segment[c], 1 to k
        self.segment = segment[:n]
        # as intp: bincount would convert them for every member otherwise
        self.first = segment[starts].astype(np.intp)
        self.last = segment[ends].astype(np.intp)
        count = np.bincount(self.first, minlength=k + 2)
        count -= np.bincount(self.last, minlength=k + 2)
        count = running_total(count, np.int64)
        self.divisor = np.maximum(count, 1).astype(np.float64)
        # Every boundary starts or ends a range (or a wall), so an uncovered segment sits
        # between two covered ones or an edge or a wall (all 0): its nearest covered
        # characters are its neighbours' own.
        self.gaps = np.flatnonzero(count[1 : k + 1] == 0) + 1

    def means(self, probs: np.ndarray) -> np.ndarray:
        """Per segment (1 to k; 0 and k + 1 lie outside the text): the mean of the ranges'
        ``probs`` covering it, or for an uncovered one the smaller of its neighbours'."""
        k = self.k
        total = np.bincount(self.first, probs, k + 2)
        total -= np.bincount(self.last, probs, k + 2)
        means = running_total(total, np.float64) / self.divisor
        means[0] = means[k + 1] = 0.0  # outside the text (the sums there cancel only roughly)
        gaps = self.gaps
        means[gaps] = np.minimum(means[gaps - 1], means[gaps + 1])
        return means

    def chars(self, means: np.ndarray) -> np.ndarray:
        return np.take(means.astype(np.float32), self.segment)


class _Piece:
    """Consecutive texts joined by separators (walls) and worked on together."""

    def __init__(self, texts: Sequence[str], doc_index: np.ndarray, offsets) -> None:
        from stage1_ensemble.decode import SEPARATOR

        lengths = np.array([len(t) for t in texts])
        bases = np.concatenate(([0], np.cumsum(lengths + 1)[:-1]))
        self.bounds = list(zip(bases.tolist(), (bases + lengths).tolist()))
        joined = SEPARATOR.join(texts)
        starts, ends = _joined_ranges(doc_index, offsets, bases, bases + lengths)
        kept = np.flatnonzero(ends > starts)
        # Some tokenizers (XLM-R's SentencePiece among them) count the space before a word
        # into the word's first piece; that space belongs to no token, so that it joins a
        # mention only when both of its neighbours are positive. Tokens of whitespace only
        # carry nothing.
        starts, ends = trim_spaces(starts[kept], ends[kept], TextChars(joined))
        keep = ends > starts
        self.tokens = kept[keep]  # which of the (flattened) tokens carry probability
        self.segments = _Segments(len(joined), starts[keep], ends[keep], walls=bases[1:] - 1)

    def means(self, probs) -> np.ndarray:
        return self.segments.means(_flat(probs)[self.tokens])

    def chars(self, means: np.ndarray) -> list[np.ndarray]:
        out = self.segments.chars(means)
        return [out[b:e] for b, e in self.bounds]


def _flat(values) -> np.ndarray:
    """Per-token values of a padded (W, L) array or of one array a window, in one float64
    array (window after window)."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        return values.astype(np.float64, copy=False).ravel()
    if len(values) == 0:
        return np.zeros(0)
    return np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in values])


def _joined_ranges(doc_index: np.ndarray, offsets, bases: np.ndarray, limits: np.ndarray,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Token starts and ends, moved to the joined texts and clipped to their own text's end
    (zero-width offsets stay zero-width)."""
    if isinstance(offsets, np.ndarray) and offsets.ndim == 3:
        shift, limit = bases[doc_index][:, None], limits[doc_index][:, None]
        return (np.minimum(offsets[..., 0] + shift, limit).ravel(),
                np.minimum(offsets[..., 1] + shift, limit).ravel())
    if len(offsets) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ranges = np.concatenate([np.minimum(np.asarray(o, dtype=np.int64).reshape(-1, 2) + bases[d],
                                        limits[d])
                             for d, o in zip(doc_index.tolist(), offsets)])
    return ranges[:, 0], ranges[:, 1]


class Projection:
    """Where the tokens of a batch of windows land on the characters of their texts.

    Window ``w`` belongs to text ``doc_index[w]``; ``offsets`` is (W, L, 2) and the
    probabilities later given (W, L) as padded arrays (padding has zero-width offsets), or
    one array a window. The texts are joined (in pieces of about CHUNK_CHARS characters)
    and worked on together; the separators are walls, so nothing leaks from text to text.

    ``projection(probs)`` gives one member's character probabilities; ``means`` and
    ``chars`` split that in two, so that members can be averaged in between.
    """

    def __init__(self, texts: Sequence[str], doc_index: Sequence[int],
                 offsets: np.ndarray | Sequence[np.ndarray]) -> None:
        doc_index = np.asarray(doc_index, dtype=np.int64)
        self.padded = isinstance(offsets, np.ndarray) and offsets.ndim == 3
        self.shape = offsets.shape[:2] if self.padded else \
            [np.asarray(o).reshape(-1, 2).shape[0] for o in offsets]
        if len(offsets) != len(doc_index):
            raise ValueError(f"{len(offsets)} windows of offsets but {len(doc_index)} "
                             "document indices")
        pieces = chunks([len(t) for t in texts]) if texts else []
        self._pieces: list[tuple[np.ndarray | None, _Piece]] = []
        for lo, hi in pieces:
            if len(pieces) == 1:
                rows, part_offsets, part_docs = None, offsets, doc_index
            else:
                rows = np.flatnonzero((doc_index >= lo) & (doc_index < hi))
                part_offsets = offsets[rows] if self.padded else \
                    [offsets[r] for r in rows.tolist()]
                part_docs = doc_index[rows] - lo
            self._pieces.append((rows, _Piece(texts[lo:hi], part_docs, part_offsets)))

    def _check(self, probs) -> None:
        if self.padded:
            shape = np.shape(probs)
            if shape != tuple(self.shape):
                raise ValueError(f"token probabilities of shape {shape} for windows of shape "
                                 f"{tuple(self.shape)}")
        elif [np.size(p) for p in probs] != self.shape:
            raise ValueError("the token probabilities do not match the windows: "
                             f"{[np.size(p) for p in probs]} tokens vs {self.shape}")

    def means(self, probs) -> list[np.ndarray]:
        """One member's token probabilities -> its values per segment (one array a piece).
        Values of several members combine linearly (a weighted mean stays a weighted mean)."""
        self._check(probs)
        out = []
        for rows, piece in self._pieces:
            if rows is None:
                out.append(piece.means(probs))
            elif self.padded:
                out.append(piece.means(np.asarray(probs)[rows]))
            else:
                out.append(piece.means([probs[r] for r in rows.tolist()]))
        return out

    def chars(self, means: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Values per segment -> float32 character probabilities, one array a text."""
        out: list[np.ndarray] = []
        for (_, piece), m in zip(self._pieces, means):
            out += piece.chars(m)
        return out

    def __call__(self, probs) -> list[np.ndarray]:
        return self.chars(self.means(probs))

    def weighted_sum(self, member_probs: Sequence, weights: Sequence[float]) -> list[np.ndarray]:
        """Per segment, the sum of ``weight * values`` over the members."""
        if len(weights) != len(member_probs) or not len(weights):
            raise ValueError(f"{len(member_probs)} members and {len(weights)} weights; an "
                             "ensemble needs at least one member and a weight for each")
        total: list[np.ndarray] = []
        for weight, probs in zip(weights, member_probs):
            means = self.means(probs)
            if not total:
                total = [m * weight for m in means]
                continue
            for t, m in zip(total, means):
                t += m * weight
        return total

    def mean(self, member_probs: Sequence, weights: Sequence[float] | None = None,
             ) -> list[np.ndarray]:
        """The weighted mean of several members' character probabilities, averaged per
        segment and written out once."""
        weights = [1.0] * len(member_probs) if weights is None else list(weights)
        total = self.weighted_sum(member_probs, weights)
        return self.chars([t / sum(weights) for t in total])


def project_batch(texts: Sequence[str], doc_index: Sequence[int],
                  offsets: np.ndarray | Sequence[np.ndarray],
                  probs: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Character probabilities of many texts at once (see ``Projection``)."""
    return Projection(texts, doc_index, offsets)(probs)


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

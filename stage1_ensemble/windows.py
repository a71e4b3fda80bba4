"""Windows of at most ``max_length`` tokens with ``stride`` tokens of overlap, from the fast
tokenizer's own overflow and offset support, and the binary token labels for training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stage1_ensemble.chars import text_problem

IGNORE = -100  # label of special tokens and padding: no loss


@dataclass
class Windows:
    """Token windows of many texts as padded arrays (one row a window)."""

    input_ids: np.ndarray  # (W, L) int64, padded with the tokenizer's pad id
    offsets: np.ndarray  # (W, L, 2) character ranges; (0, 0) on special tokens and padding
    lengths: np.ndarray  # (W,) tokens in each window
    doc_index: np.ndarray  # (W,) which text each window comes from

    def __len__(self) -> int:
        return len(self.lengths)

    def row(self, i: int) -> tuple[list[int], np.ndarray]:
        n = int(self.lengths[i])
        return self.input_ids[i, :n].tolist(), self.offsets[i, :n]


def tokenize_windows(tokenizer, texts: Sequence[str], *, max_length: int = 512,
                     stride: int = 32) -> Windows:
    """The windows of ``texts``; every text gets at least one (an empty text: specials only)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: character "
                         "offsets need one")
    for i, text in enumerate(texts):  # the tokenizer would fail the batch, with no hint why
        problem = text_problem(text)
        if problem:
            raise ValueError(f"text {i} {problem}")
    if not texts:
        empty = np.zeros((0, 0), dtype=np.int64)
        return Windows(empty, np.zeros((0, 0, 2), dtype=np.int64), np.zeros(0, np.int64),
                       np.zeros(0, np.int64))
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True,
                    return_special_tokens_mask=True, padding="longest", return_tensors="np")
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64)
    # Special tokens and padding carry no probability: zero-width, whatever the tokenizer says.
    offsets[np.asarray(enc["special_tokens_mask"]).astype(bool)] = 0
    windows = Windows(np.asarray(enc["input_ids"], dtype=np.int64), offsets,
                      np.asarray(enc["attention_mask"]).sum(axis=1).astype(np.int64),
                      np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64))
    check_coverage(texts, windows)
    return windows


def check_coverage(texts: Sequence[str], windows: Windows) -> None:
    """Fail loudly if the windows of a text stop before its last letter or digit: a text
    cut short would silently lose its mentions."""
    reach = np.zeros(len(texts), dtype=np.int64)
    if len(windows):
        np.maximum.at(reach, windows.doc_index, windows.offsets[:, :, 1].max(axis=1))
    for doc, text in enumerate(texts):
        last = _last_word_char(text)
        if last >= 0 and reach[doc] <= last:
            raise RuntimeError(f"the tokenizer's windows cover text {doc} only up to character "
                               f"{reach[doc]} of {len(text)}; its overflow support is broken")


def _last_word_char(text: str) -> int:
    # letters and digits only: a combining mark at the end (decomposed text) may belong to
    # no token (XLM-R's offsets leave it out)
    for i in range(len(text) - 1, -1, -1):
        if text[i].isalnum():
            return i
    return -1


def token_labels(offsets: Sequence[tuple[int, int]], gold_mask_cumsum: np.ndarray) -> list[int]:
    """1 where a token's characters overlap a gold span, 0 elsewhere, IGNORE on specials.

    ``gold_mask_cumsum`` is the cumulative sum (with a leading 0) of the document's boolean
    per-character gold mask for the class.
    """
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    n = len(gold_mask_cumsum) - 1
    s, e = np.minimum(off[:, 0], n), np.minimum(off[:, 1], n)
    labels = (gold_mask_cumsum[e] - gold_mask_cumsum[s] > 0).astype(np.int64)
    labels[off[:, 1] <= off[:, 0]] = IGNORE
    return labels.tolist()


def gold_cumsum(n_chars: int, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    diff = np.zeros(n_chars + 1, dtype=np.int64)
    for s, e in spans:
        diff[s] += 1
        diff[e] -= 1
    mask = np.cumsum(diff)[:n_chars] > 0
    return np.concatenate(([0], np.cumsum(mask)))

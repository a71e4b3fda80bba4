"""Windows of at most ``max_length`` tokens with ``stride`` tokens of overlap, from the fast
tokenizer's own overflow and offset support, and the binary token labels for training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE = -100  # label of special tokens and padding: no loss


def tokenize_windows(tokenizer, texts: Sequence[str], *, max_length: int = 512,
                     stride: int = 32) -> dict[str, list]:
    """input_ids, attention_mask, offset_mapping and ``doc_index`` (which text) per window."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: character "
                         "offsets need one")
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    doc_index = enc.pop("overflow_to_sample_mapping")
    special = enc.pop("special_tokens_mask")
    # Special tokens carry no probability: give them zero-width offsets whatever the
    # tokenizer says.
    offsets = [[(0, 0) if sp else tuple(o) for o, sp in zip(offs, sps)]
               for offs, sps in zip(enc["offset_mapping"], special)]
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "offset_mapping": offsets, "doc_index": list(doc_index)}


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

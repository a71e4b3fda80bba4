"""The stage-1 rules written the plain way, one character at a time: an oracle for the
array code (tests) and the baseline of bench/bench_decode.py."""

from __future__ import annotations

import numpy as np

from stage1_ensemble.chars import is_word_char


def python_project(text: str, windows) -> list[float]:
    """Per character: mean of the covering tokens; uncovered: min of nearest neighbours."""
    sums, counts = [0.0] * len(text), [0] * len(text)
    for offsets, probs in windows:
        for (s, e), p in zip(offsets.tolist(), probs.tolist()):
            e = min(e, len(text))
            if e <= s or text[s:e].isspace():
                continue
            while text[s].isspace():
                s += 1
            while text[e - 1].isspace():
                e -= 1
            for i in range(s, e):
                sums[i] += p
                counts[i] += 1
    out = [sums[i] / counts[i] if counts[i] else None for i in range(len(text))]
    filled = []
    for i, v in enumerate(out):
        if v is not None:
            filled.append(v)
            continue
        left = next((out[j] for j in range(i - 1, -1, -1) if out[j] is not None), 0.0)
        right = next((out[j] for j in range(i + 1, len(text)) if out[j] is not None), 0.0)
        filled.append(min(left, right))
    return filled


def python_decode(text: str, probs: list[float], threshold: float) -> list[tuple[int, int, float]]:
    probs = [float(np.float32(p)) for p in probs]
    spans, i = [], 0
    while i < len(text):
        if probs[i] < threshold:
            i += 1
            continue
        s = i
        while i < len(text) and probs[i] >= threshold:
            i += 1
        e = i
        while s > 0 and is_word_char(text[s]) and is_word_char(text[s - 1]):
            s -= 1
        while e < len(text) and is_word_char(text[e - 1]) and is_word_char(text[e]):
            e += 1
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e <= s:
            continue
        if spans and s <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], e)
        else:
            spans.append([s, e])
    return [(s, e, sum(probs[s:e]) / (e - s)) for s, e in spans]

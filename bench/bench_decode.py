"""Projection + decoding on arrays vs a straightforward per-character Python implementation.

Real documents of ../shared/data are tokenized by a real tokenizer; token probabilities are
made from the gold spans plus noise (the work does not depend on where they come from). Both
implementations must give identical spans; the speed ratio is printed.
Run: python bench/bench_decode.py [corpus folder] [n documents]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.readers import open_corpus  # noqa: E402
from stage1_ensemble import decode_batch, project_batch  # noqa: E402
from stage1_ensemble.windows import gold_cumsum, tokenize_windows  # noqa: E402


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
        while s > 0 and text[s].isalnum() and text[s - 1].isalnum():
            s -= 1
        while e < len(text) and text[e - 1].isalnum() and text[e].isalnum():
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


def main() -> None:
    corpus = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/data/cardioccc_dev"
    n_docs = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    from transformers import XLMRobertaTokenizerFast

    from tests.tiny_models import xlmr_tokenizer_file

    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(xlmr_tokenizer_file()))
    docs = list(open_corpus(corpus))[:n_docs]
    rng = np.random.default_rng(0)
    cases = []
    for doc in docs:
        win = tokenize_windows(tokenizer, [doc.text], max_length=512, stride=32)
        cum = gold_cumsum(len(doc.text), [(s.start, s.end) for s in doc.spans
                                          if s.label == "DISEASE"])
        windows = []
        for i in range(len(win)):
            off = win.row(i)[1]
            gold = (cum[np.minimum(off[:, 1], len(doc.text))] - cum[off[:, 0]]) > 0
            probs = np.clip(np.where(gold, 0.8, 0.15) + rng.normal(0, 0.15, len(off)), 0, 1)
            windows.append((off, probs))
        cases.append((doc.text, windows))
    chars = sum(len(t) for t, _ in cases)

    t0 = time.perf_counter()
    texts = [t for t, _ in cases]
    flat = [(i, o, p) for i, (_, w) in enumerate(cases) for o, p in w]
    fast = decode_batch(texts, project_batch(texts, *zip(*flat)), 0.5)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = [python_decode(t, python_project(t, w), 0.5) for t, w in cases]
    t_slow = time.perf_counter() - t0
    for a, b in zip(fast, slow):
        assert [(s, e) for s, e, _ in a] == [(s, e) for s, e, _ in b]
        assert np.allclose([x[2] for x in a], [x[2] for x in b], atol=1e-4)
    n_spans = sum(len(a) for a in fast)
    print(f"{len(cases)} documents, {chars} characters, {n_spans} spans (identical)")
    print(f"per-character Python {t_slow:.3f} s   arrays {t_fast:.3f} s   "
          f"speed-up {t_slow / t_fast:.1f}x")


if __name__ == "__main__":
    main()

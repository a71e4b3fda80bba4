"""Projection + decoding on arrays vs a straightforward per-character Python implementation.

Real documents of ../shared/data are tokenized by a real tokenizer; token probabilities are
made from the gold spans plus noise (the work does not depend on where they come from). Both
implementations must give identical spans; the speed ratio is printed.
Run: python bench/bench_decode.py [corpus folder] [n documents] [rounds]
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
from tests.reference_decode import python_decode, python_project  # noqa: E402


def best_of(fn, repeats: int):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def gold_noise_probs(docs, win, rng: np.random.Generator, label: str = "DISEASE",
                     ) -> np.ndarray:
    """Token probabilities as a member might give them, (W, L) like the windows: about 0.8
    on tokens that overlap a gold ``label`` span, 0.15 elsewhere, plus noise; 0 on padding."""
    probs = np.zeros(win.input_ids.shape, dtype=np.float32)
    for i, d in enumerate(win.doc_index.tolist()):
        doc, off = docs[d], win.row(i)[1]
        cum = gold_cumsum(len(doc.text), [(s.start, s.end) for s in doc.spans
                                          if s.label == label])
        gold = (cum[np.minimum(off[:, 1], len(doc.text))] - cum[off[:, 0]]) > 0
        p = np.clip(np.where(gold, 0.8, 0.15) + rng.normal(0, 0.15, len(off)), 0, 1)
        probs[i, : len(off)] = p
    return probs


def main() -> None:
    corpus = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/data/cardioccc_dev"
    n_docs = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    from transformers import XLMRobertaTokenizerFast

    from tests.tiny_models import xlmr_tokenizer_file

    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(xlmr_tokenizer_file()))
    docs = list(open_corpus(corpus))[:n_docs]
    texts = [d.text for d in docs]
    # the windows as inference has them: padded arrays over all documents at once
    win = tokenize_windows(tokenizer, texts, max_length=512, stride=32)
    probs = gold_noise_probs(docs, win, np.random.default_rng(0))
    cases = [(text, []) for text in texts]
    for i, d in enumerate(win.doc_index.tolist()):
        cases[d][1].append((win.row(i)[1], probs[i, : win.lengths[i]]))
    chars = sum(len(t) for t in texts)

    def arrays():
        return decode_batch(texts, project_batch(texts, win.doc_index, win.offsets, probs),
                            0.5)

    def per_character():
        return [python_decode(t, python_project(t, w), 0.5) for t, w in cases]

    # The machine is shared: the two sides are timed in turn, round after round, and the
    # fastest time of each (the least disturbed) is compared.
    t_fast = t_slow = float("inf")
    for _ in range(rounds):
        t, slow = best_of(per_character, 1)
        t_slow = min(t_slow, t)
        t, fast = best_of(arrays, 5)
        t_fast = min(t_fast, t)
    for a, b in zip(fast, slow):
        assert [(s, e) for s, e, _ in a] == [(s, e) for s, e, _ in b]
        assert np.allclose([x[2] for x in a], [x[2] for x in b], atol=1e-4)
    n_spans = sum(len(a) for a in fast)
    print(f"{len(cases)} documents, {chars} characters, {n_spans} spans (identical)")
    print(f"per-character Python {t_slow:.3f} s   arrays {t_fast:.3f} s   "
          f"speed-up {t_slow / t_fast:.1f}x")


if __name__ == "__main__":
    main()

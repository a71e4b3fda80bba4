"""Sort-and-sweep metrics vs a straightforward quadratic scorer, on all of cardioccc_dev.

Both score the same perturbed predictions; the numbers must be equal, and the speed ratio is
printed. Run: python bench/bench_metrics.py [path/to/cardioccc_dev]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.metrics import evaluate  # noqa: E402
from pipeline.readers import open_corpus  # noqa: E402
from tests.reference_metrics import quadratic_scores  # noqa: E402
from tests.test_metrics import perturb  # noqa: E402


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    corpus = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/data/cardioccc_dev"
    docs = list(open_corpus(corpus))
    gold = [s for d in docs for s in d.spans]
    pred = perturb(gold, seed=7)
    g_rows, p_rows = [s.key for s in gold], [s.key for s in pred]
    t_fast, fast = best_of(lambda: evaluate(gold, pred).pooled.as_dict(), 5)
    t_slow, slow = best_of(lambda: quadratic_scores(g_rows, p_rows), 1)
    for part in ("strict", "char_f1"):
        for key, value in slow[part].items():
            assert abs(fast[part][key] - value) < 1e-4, (part, key, fast[part][key], value)
    print(f"{len(docs)} documents, {len(gold)} gold spans, {len(pred)} predictions")
    print(f"strict F1 {fast['strict']['f1']:.4f}  char F1 {fast['char_f1']['f1']:.4f} (both equal)")
    print(f"quadratic {t_slow:.3f} s   sweep {t_fast:.3f} s   speed-up {t_slow / t_fast:.1f}x")


if __name__ == "__main__":
    main()

"""A deliberately plain, quadratic implementation of the task metrics: the test oracle.

Every gold span is compared with every prediction of its document, as the official scorer
does; the fast sweep in ``pipeline.metrics`` must agree with it.
"""

from __future__ import annotations


def quadratic_scores(gold: list[tuple], pred: list[tuple]) -> dict:
    """gold, pred: (filename, label, start, end) rows. Returns the scorer's JSON keys."""
    pred = list(dict.fromkeys(pred))  # de-duplicate predictions, keep order
    by_doc: dict[str, tuple[list, list]] = {}
    for row in gold:
        by_doc.setdefault(row[0], ([], []))[0].append(row)
    for row in pred:
        by_doc.setdefault(row[0], ([], []))[1].append(row)
    tp = gold_sum = pred_sum = 0.0
    for g, p in by_doc.values():
        unmatched = list(g)
        for row in p:
            if row in unmatched:
                unmatched.remove(row)
                tp += 1
        for a in g:
            gold_sum += max([_dice(a, b) for b in p] + [0.0])
        for b in p:
            pred_sum += max([_dice(a, b) for a in g] + [0.0])
    fp, fn = len(pred) - tp, len(gold) - tp
    sp = tp / (tp + fp) if tp + fp else 0.0
    sr = tp / (tp + fn) if tp + fn else 0.0
    cp = pred_sum / len(pred) if pred else 0.0
    cr = gold_sum / len(gold) if gold else 0.0
    return {
        "strict": {"precision": sp, "recall": sr, "f1": 2 * sp * sr / (sp + sr) if sp + sr else 0.0,
                   "tp": int(tp), "fp": int(fp), "fn": int(fn)},
        "char_f1": {"precision": cp, "recall": cr, "f1": 2 * cp * cr / (cp + cr) if cp + cr else 0.0,
                    "n_gold": len(gold), "n_pred": len(pred)},
    }


def _dice(a: tuple, b: tuple) -> float:
    if a[1] != b[1]:
        return 0.0
    inter = max(0, min(a[3], b[3]) - max(a[2], b[2]))
    return 2 * inter / ((a[3] - a[2]) + (b[3] - b[2]))

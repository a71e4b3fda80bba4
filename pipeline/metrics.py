"""The MultiClinAI task metrics: strict and character-overlap P/R/F1, with their counts.

Semantics (equal to the official scorer): predictions are de-duplicated on
(filename, label, start, end), gold is not. Strict counts exact one-to-one matches, micro over
all documents. Char: for a gold span g and a prediction p of the same document and label,
overlap = 2|g∩p| / (|g|+|p|); recall is the mean over gold spans of the best overlap with any
prediction, precision the mean over predictions of the best overlap with any gold span.

Overlaps are found by sorting and sweeping each (document, label) group, never by comparing
every gold span with every prediction.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from pipeline.documents import Span


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


@dataclass
class Counts:
    """Counts that add, so that any slice's micro scores are a sum of its groups."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    n_gold: int = 0
    n_pred: int = 0
    gold_overlap: float = 0.0  # sum over gold spans of their best overlap
    pred_overlap: float = 0.0  # sum over predictions of their best overlap

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def strict(self) -> dict[str, float]:
        p, r = _ratio(self.tp, self.tp + self.fp), _ratio(self.tp, self.tp + self.fn)
        return {"precision": p, "recall": r, "f1": _f1(p, r),
                "tp": self.tp, "fp": self.fp, "fn": self.fn}

    def char(self) -> dict[str, float]:
        p, r = _ratio(self.pred_overlap, self.n_pred), _ratio(self.gold_overlap, self.n_gold)
        return {"precision": p, "recall": r, "f1": _f1(p, r),
                "n_gold": self.n_gold, "n_pred": self.n_pred}

    def as_dict(self, digits: int | None = 4) -> dict[str, dict[str, float]]:
        def rounded(d: dict[str, float]) -> dict[str, float]:
            return {k: (round(v, digits) if isinstance(v, float) and digits is not None else v)
                    for k, v in d.items()}

        return {"strict": rounded(self.strict()), "char_f1": rounded(self.char())}


def overlap_pairs(gold: list[tuple[int, int]], pred: list[tuple[int, int]],
                  ) -> list[tuple[int, int, float]]:
    """(gold index, prediction index, Dice overlap) of every overlapping pair.

    One sweep over both lists sorted by start; each span meets only the spans of the other
    list still open at its start, so the work grows with the overlapping pairs, not with
    len(gold) × len(pred).
    """
    pairs = []
    events = sorted([(s, e, 0, i) for i, (s, e) in enumerate(gold)]
                    + [(s, e, 1, i) for i, (s, e) in enumerate(pred)])
    open_spans: list[list[tuple[int, int, int]]] = [[], []]
    for start, end, side, i in events:
        other = 1 - side
        # Spans of the other side that end at or before this start can meet no later span.
        alive = open_spans[other] = [x for x in open_spans[other] if x[1] > start]
        for o_start, o_end, j in alive:
            inter = min(end, o_end) - start  # o_start <= start < o_end
            dice = 2 * inter / ((end - start) + (o_end - o_start))
            pairs.append((i, j, dice) if side == 0 else (j, i, dice))
        open_spans[side].append((start, end, i))
    return pairs


def best_overlaps(gold: list[tuple[int, int]], pred: list[tuple[int, int]],
                  ) -> tuple[list[float], list[float]]:
    """Best Dice overlap of each gold span and of each prediction (lists in the input order)."""
    best_g, best_p = [0.0] * len(gold), [0.0] * len(pred)
    for i, j, dice in overlap_pairs(gold, pred):
        if dice > best_g[i]:
            best_g[i] = dice
        if dice > best_p[j]:
            best_p[j] = dice
    return best_g, best_p


def group_counts(gold: Iterable[Span], pred: Iterable[Span],
                 ) -> dict[tuple[str, str], Counts]:
    """Counts per (document, label) group."""
    gold_by: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for s in gold:
        gold_by[(s.doc_id, s.label)].append((s.start, s.end))
    pred_by: dict[tuple[str, str], set[tuple[int, int]]] = defaultdict(set)
    for s in pred:
        pred_by[(s.doc_id, s.label)].add((s.start, s.end))
    out = {}
    for key in gold_by.keys() | pred_by.keys():
        g, p = gold_by.get(key, []), sorted(pred_by.get(key, ()))
        gold_keys = Counter(g)
        tp = sum(1 for x in p if x in gold_keys)
        bg, bp = best_overlaps(g, p)
        out[key] = Counts(tp=tp, fp=len(p) - tp, fn=len(g) - tp, n_gold=len(g), n_pred=len(p),
                          gold_overlap=sum(bg), pred_overlap=sum(bp))
    return out


@dataclass
class Evaluation:
    pooled: Counts
    slices: list[tuple[str, str, Counts]]  # (kind, value, counts): kind is class or language

    def as_dict(self) -> dict:
        out: dict = self.pooled.as_dict()
        if self.slices:
            out["slices"] = [{"slice": kind, "value": value, **c.as_dict()}
                             for kind, value, c in self.slices]
        return out


def evaluate(gold: Iterable[Span], pred: Iterable[Span], *, entity: str | None = None,
             lang_of: Mapping[str, str | None] | None = None) -> Evaluation:
    """Pooled scores plus per-class and per-language slices (where there is more than one)."""
    gold, pred = list(gold), list(pred)
    if entity is not None:
        gold = [s for s in gold if s.label == entity]
        pred = [s for s in pred if s.label == entity]
    groups = group_counts(gold, pred)
    pooled = sum(groups.values(), Counts())
    by_class: dict[str, Counts] = defaultdict(Counts)
    by_lang: dict[str, Counts] = defaultdict(Counts)
    for (doc_id, label), counts in groups.items():
        by_class[label] += counts
        lang = (lang_of or {}).get(doc_id)
        if lang is not None:
            by_lang[lang] += counts
    slices = []
    if len(by_class) > 1:
        slices += [("class", k, by_class[k]) for k in sorted(by_class)]
    if len(by_lang) > 1:
        slices += [("language", k, by_lang[k]) for k in sorted(by_lang)]
    return Evaluation(pooled, slices)

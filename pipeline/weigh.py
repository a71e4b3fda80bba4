"""Learned member weights (``pipeline ensemble weigh``): how much each kind of member counts
in its class's mean, chosen on held-out gold documents.

Members are weighed by family: the fold members of one encoder form one family (they are
one model seen through the folds), any other member is a family of its own. On the
ensemble's own training corpus each document is proposed on by the members that did not
train on it (its fold's member of a fold family, every member of another), so that the
weights are chosen on unseen text; a family trained on all documents (one fold) is then
seen on its own training text, and the result says so. On any other (held-out) corpus
every member proposes on every document, as it will when the ensemble runs.

The search is an exhaustive grid on the simplex, per class: every weighting in steps of
``step`` (0.1: 9 points for two families, 36 for three, 84 for four), each at every
stage-1 threshold of 0.05 to 0.95, scored by the official char F1 (or strict F1). A grid
finds the best point of its resolution for sure, and the few families an ensemble has
keep it small; past ``MAX_POINTS`` weightings it refuses rather than run for hours (a
coarser step, or fewer families, then).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.documents import Document, Span
from pipeline.errors import PipelineError
from pipeline.metrics import evaluate
from pipeline.training import DEFAULT_GROUP_PATTERN, fold_of
from stage1_ensemble.decode import decode_batch

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
MAX_POINTS = 2000


def family_of(member) -> str:
    """Fold members of one encoder share a family; any other member is its own."""
    if member.kind == "binary" and member.n_folds > 1:
        return re.sub(r"-f\d+$", "", member.name)
    return member.name


@dataclass
class Weighing:
    cls: str
    families: list[str]
    weights: dict[str, float]  # per family, summing to 1
    threshold: float
    value: float  # the objective at the weights and threshold found
    before: float  # the objective with the weights the ensemble had, at its best threshold
    in_sample: list[str]  # families that trained on the documents they were weighed on

    def as_dict(self) -> dict:
        return {"weights": self.weights, "threshold": self.threshold,
                "objective": round(self.value, 4), "before": round(self.before, 4),
                **({"trained_on_these_documents": self.in_sample} if self.in_sample else {})}


def simplex(n: int, step: float) -> list[tuple[float, ...]]:
    """Every weighting of ``n`` families in multiples of ``step``, each above 0 (a member
    weighed 0 is removed, not kept), summing to 1."""
    units = round(1 / step)
    if abs(units * step - 1) > 1e-9 or units < n:
        raise PipelineError(f"--step {step}: 1 must be a whole number of steps, at least one "
                            f"for each of the {n} families")
    points = [tuple(b - a for a, b in zip((0, *cut), (*cut, units)))
              for cut in itertools.combinations(range(1, units), n - 1)]
    return [tuple(u / units for u in p) for p in points]


def family_probs(docs: Sequence[Document], ensemble, cls: str,
                 pattern: str = DEFAULT_GROUP_PATTERN, *, held_out: bool = False,
                 ) -> tuple[dict[str, list], list[str]]:
    """Per family, the character probabilities of ``cls`` of each document from the
    family's members that did not train on it; and the families that did train on them.
    ``held_out``: the documents are not the ensemble's training corpus, so every member
    proposes on each."""
    members = ensemble.members_of(cls)
    families: dict[str, list] = {}
    for m in members:
        families.setdefault(family_of(m), []).append(m)
    out, in_sample = {}, []
    texts = [d.text for d in docs]
    for name, ms in families.items():
        folds = ms[0].n_folds if ms[0].kind == "binary" else 1
        if folds > 1 and not held_out:
            probs = [None] * len(docs)
            for m in ms:
                idx = [i for i, d in enumerate(docs) if fold_of(d.id, folds, pattern) == m.fold]
                got = ensemble.restricted([m]).char_probs([texts[i] for i in idx], [cls])
                for i, p in zip(idx, got):
                    probs[i] = p[cls]
        else:
            if ms[0].kind == "binary" and not held_out:
                in_sample.append(name)
            probs = [p[cls] for p in ensemble.restricted(ms).char_probs(texts, [cls])]
        out[name] = probs
    return out, in_sample


def score(docs: Sequence[Document], cls: str, probs: Sequence[np.ndarray], threshold: float,
          objective: str) -> float:
    gold = [s for d in docs for s in d.spans if s.label == cls]
    found = decode_batch([d.text for d in docs], probs, threshold)
    pred = [Span(d.id, cls, s, e) for d, spans in zip(docs, found) for s, e, _ in spans]
    result = evaluate(gold, pred).pooled
    return result.strict()["f1"] if objective == "strict_f1" else result.char()["f1"]


def weigh_class(docs: Sequence[Document], ensemble, cls: str, *, objective: str = "char_f1",
                step: float = 0.1, pattern: str = DEFAULT_GROUP_PATTERN,
                held_out: bool = False) -> Weighing:
    docs = [d for d in docs if d.entity_class in (None, cls)]
    probs, in_sample = family_probs(docs, ensemble, cls, pattern, held_out=held_out)
    current = {}
    for m in ensemble.members_of(cls):
        current[family_of(m)] = current.get(family_of(m), 0.0) + m.weight
    return choose(docs, cls, probs, current, objective=objective, step=step,
                  in_sample=in_sample)


def choose(docs: Sequence[Document], cls: str, probs: dict[str, list], current: dict[str, float],
           *, objective: str = "char_f1", step: float = 0.1,
           in_sample: Sequence[str] = ()) -> Weighing:
    """The grid search itself, on each family's character probabilities of ``docs``
    (``probs``, in the documents' order); ``current``: the families' weights before."""
    names = list(probs)
    in_sample = list(in_sample)
    total = sum(current[n] for n in names)

    def mixed(weights: Sequence[float]) -> list[np.ndarray]:
        return [sum(w * probs[n][i] for n, w in zip(names, weights)).astype(np.float32)
                for i in range(len(docs))]

    def best_threshold(weights) -> tuple[float, float]:
        chars = mixed(weights)
        return max(((score(docs, cls, chars, t, objective), t) for t in THRESHOLDS),
                   key=lambda x: (x[0], -abs(x[1] - 0.5)))

    before, _ = best_threshold([current[n] / total for n in names])
    if len(names) == 1:
        value, t = best_threshold([1.0])
        return Weighing(cls, names, {names[0]: 1.0}, t, value, before, in_sample)
    points = simplex(len(names), step)
    if len(points) > MAX_POINTS:
        raise PipelineError(f"{cls}: {len(names)} families at --step {step} make "
                            f"{len(points)} weightings; give a coarser --step")
    best = max(((*best_threshold(p), p) for p in points), key=lambda x: (x[0], -abs(x[1] - 0.5)))
    value, t, weights = best
    return Weighing(cls, names, dict(zip(names, weights)), t, value, before, in_sample)


def apply(manifest, weighings: Sequence[Weighing], record: dict):
    """The manifest with each member weighted by its family's weight, shared among the
    family's members (a fold family's members average as one model), and the weighing
    recorded."""
    found = {w.cls: w for w in weighings}
    members = []
    for m in manifest.members:
        w = found.get(m.entity_class)
        if w is None:
            members.append(m)
            continue
        family = family_of(m)
        size = sum(family_of(x) == family and x.entity_class == m.entity_class
                   for x in manifest.members)
        members.append(m.model_copy(update={"weight": w.weights[family] / size}))
    return manifest.model_copy(update={"members": members, "weighing": record})

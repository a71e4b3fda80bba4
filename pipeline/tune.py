"""Joint tuning of the stage-1 and stage-2 thresholds, per class, on gold data.

Character probabilities and LLM scores are computed once (and cached); the sweep then runs
on arrays: for a fixed set of candidates, a prediction's best overlap with gold does not
depend on which other predictions are kept, and a gold span's best overlap among the kept
ones is a masked maximum over the overlapping pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.documents import Document, Span
from pipeline.metrics import overlap_pairs
from pipeline.predict import char_probabilities, propose, rerank
from pipeline.thresholds import ClassThresholds, Thresholds

T1_GRID = tuple(round(x, 2) for x in np.arange(0.30, 0.951, 0.05))
T2_GRID = tuple(round(x, 2) for x in np.arange(0.0, 1.001, 0.05))
ROUTE_GRID = tuple(round(x, 3) for x in np.arange(0.05, 1.001, 0.025))


@dataclass
class CandidateSet:
    """One class's candidates at one stage-1 threshold, matched against the gold spans."""

    s1: np.ndarray  # (P,) stage-1 scores
    s2: np.ndarray  # (P,) stage-2 scores (NaN without an LLM)
    best: np.ndarray  # (P,) best overlap of each candidate with a gold span
    exact: np.ndarray  # (P,) bool: the candidate is a gold span
    pair_gold: np.ndarray  # (K,) overlapping pairs: gold index
    pair_pred: np.ndarray  # (K,) candidate index
    pair_dice: np.ndarray  # (K,)
    n_gold: int
    # the documents, for resampling them: ids, and each candidate's and gold span's index
    doc_ids: tuple[str, ...] = ()
    pred_doc: np.ndarray | None = None  # (P,)
    gold_doc: np.ndarray | None = None  # (n_gold,)

    def gold_best(self, kept: np.ndarray) -> np.ndarray:
        """(n_gold,) each gold span's best overlap with a ``kept`` candidate."""
        out = np.zeros(self.n_gold)
        mask = kept[self.pair_pred]
        np.maximum.at(out, self.pair_gold[mask], self.pair_dice[mask])
        return out

    def figures(self, kept: np.ndarray) -> dict[str, float]:
        """Strict and char P/R/F1 when only the ``kept`` candidates are predicted."""
        n_pred = int(kept.sum())
        tp = int(self.exact[kept].sum())
        gold_best = self.gold_best(kept)
        out = {}
        for name, p, r in (("strict", tp / n_pred if n_pred else 0.0,
                            tp / self.n_gold if self.n_gold else 0.0),
                           ("char", float(self.best[kept].sum()) / n_pred if n_pred else 0.0,
                            float(gold_best.sum()) / self.n_gold if self.n_gold else 0.0)):
            out[f"{name}_precision"], out[f"{name}_recall"] = p, r
            out[f"{name}_f1"] = 2 * p * r / (p + r) if p + r else 0.0
        out["n_pred"], out["n_gold"] = n_pred, self.n_gold
        return out

    def doc_stats(self, kept: np.ndarray, objective: str, docs: Sequence[str]) -> np.ndarray:
        """(4, len(docs)): per document of ``docs``, the sums behind ``objective``'s
        precision (numerator, predictions) and recall (numerator, gold spans) when only the
        ``kept`` candidates are predicted; summed over all documents they give `figures`."""
        where = {d: i for i, d in enumerate(docs)}
        pos = np.array([where[d] for d in self.doc_ids], dtype=np.int64)
        pred = pos[self.pred_doc[kept]] if len(self.doc_ids) else np.zeros(0, dtype=np.int64)
        gold = pos[self.gold_doc] if len(self.doc_ids) else np.zeros(0, dtype=np.int64)
        n = len(docs)
        if objective == "strict_f1":
            hit = np.bincount(pred, weights=self.exact[kept].astype(float), minlength=n)
            recall_hit = hit
        elif objective == "char_f1":
            hit = np.bincount(pred, weights=self.best[kept], minlength=n)
            recall_hit = np.bincount(gold, weights=self.gold_best(kept), minlength=n)
        else:
            raise ValueError(f"no per-document sums for objective {objective!r}")
        return np.stack([hit, np.bincount(pred, minlength=n).astype(float), recall_hit,
                         np.bincount(gold, minlength=n).astype(float)])


def bootstrap_confidence(a: tuple[CandidateSet, np.ndarray], b: tuple[CandidateSet, np.ndarray],
                         objective: str, *, samples: int = 1000, seed: int = 0) -> float:
    """How sure the tuning documents are that system ``b`` beats ``a`` (each a candidate
    set and the candidates it keeps): the share of resamples of the documents (as many,
    drawn with replacement; the paired bootstrap) in which b's ``objective`` is higher."""
    docs = sorted(set(a[0].doc_ids) | set(b[0].doc_ids))
    if not docs:
        return 0.0
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(docs), np.full(len(docs), 1 / len(docs)), size=samples)

    def f1(cs: CandidateSet, kept: np.ndarray) -> np.ndarray:
        hit, n_pred, recall_hit, n_gold = (weights @ cs.doc_stats(kept, objective, docs).T).T
        zero = np.zeros(samples)
        p = np.divide(hit, n_pred, out=zero.copy(), where=n_pred > 0)
        r = np.divide(recall_hit, n_gold, out=zero.copy(), where=n_gold > 0)
        return np.divide(2 * p * r, p + r, out=zero.copy(), where=p + r > 0)

    return float((f1(*b) > f1(*a)).mean())


def match(gold: Sequence[Span], cands: Sequence[Span], docs: Sequence[str] = ()
          ) -> CandidateSet:
    """Candidates of one class against its gold spans (duplicates of gold all count).
    ``docs``: the ids of every document they come from, those with neither gold nor
    candidates of the class included (the bootstrap resamples all of them)."""
    by_doc_g: dict[str, list[int]] = {}
    by_doc_p: dict[str, list[int]] = {}
    for i, s in enumerate(gold):
        by_doc_g.setdefault(s.doc_id, []).append(i)
    for j, s in enumerate(cands):
        by_doc_p.setdefault(s.doc_id, []).append(j)
    pg, pp, pd = [], [], []
    for doc, js in by_doc_p.items():
        gs = by_doc_g.get(doc, [])
        for gi, pj, dice in overlap_pairs([(gold[i].start, gold[i].end) for i in gs],
                                          [(cands[j].start, cands[j].end) for j in js]):
            pg.append(gs[gi])
            pp.append(js[pj])
            pd.append(dice)
    pair_pred, pair_dice = np.array(pp, dtype=np.int64), np.array(pd)
    best = np.zeros(len(cands))
    np.maximum.at(best, pair_pred, pair_dice)
    doc_ids = tuple(sorted({*docs, *(s.doc_id for s in gold), *(s.doc_id for s in cands)}))
    index = {d: i for i, d in enumerate(doc_ids)}
    gold_keys = {(s.doc_id, s.start, s.end) for s in gold}
    exact = np.array([(s.doc_id, s.start, s.end) in gold_keys for s in cands], dtype=bool)
    nan = float("nan")
    return CandidateSet(
        s1=np.array([s.stage1_score or 0.0 for s in cands]),
        s2=np.array([nan if s.stage2_score is None else s.stage2_score for s in cands]),
        best=best, exact=exact, pair_gold=np.array(pg, dtype=np.int64), pair_pred=pair_pred,
        pair_dice=pair_dice, n_gold=len(gold), doc_ids=doc_ids,
        pred_doc=np.array([index[s.doc_id] for s in cands], dtype=np.int64),
        gold_doc=np.array([index[s.doc_id] for s in gold], dtype=np.int64))


def collect(docs: Sequence[Document], ensemble, scorer=None, *, t1_grid=T1_GRID,
            char_cache=None, on_step=None, max_route: float | None = None,
            ) -> dict[str, dict[float, CandidateSet]]:
    """{class: {t1: CandidateSet}}: the models run once, the LLM once per distinct prompt.
    With ``max_route``, the LLM scores only the candidates of stage-1 score below it (the
    others keep no stage-2 score: no route `tune_class` tries asks about them)."""
    probs = char_probabilities(docs, ensemble, char_cache)
    out: dict[str, dict[float, CandidateSet]] = {c: {} for c in ensemble.classes}
    for t1 in t1_grid:
        th = Thresholds(default=ClassThresholds(stage1=t1, route=max_route))
        cands = propose(docs, probs, th)
        if scorer is not None:
            cands = rerank(docs, cands, scorer, th)
        for cls in ensemble.classes:
            gold = [s for d in docs for s in d.spans if s.label == cls]
            out[cls][t1] = match(gold, [s for spans in cands for s in spans if s.label == cls],
                                 [d.id for d in docs])
        if on_step:
            on_step(t1)
    return out


def sweep(sets: dict[float, CandidateSet], objective: str = "char_f1", t2_grid=T2_GRID,
          ) -> tuple[np.ndarray, np.ndarray]:
    """Objective over (t1, t2) — the re-ranked grid — and over t1 alone (ensemble only)."""
    t1s = sorted(sets)
    grid = np.zeros((len(t1s), len(t2_grid)))
    alone = np.zeros(len(t1s))
    for a, t1 in enumerate(t1s):
        cs = sets[t1]
        alone[a] = cs.figures(np.ones(len(cs.s1), dtype=bool))[objective]
        for b, t2 in enumerate(t2_grid):
            grid[a, b] = cs.figures(np.nan_to_num(cs.s2, nan=1.0) >= t2)[objective]
    return grid, alone


UNTUNED = "no gold span of the class in the tuning documents"


def floors_of(cs: CandidateSet) -> list[tuple[float, np.ndarray]]:
    """The floors on the stage-1 span score worth trying on these candidates (0 and each
    grid value that keeps some but not all of them), with the candidates each keeps."""
    out = [(0.0, np.ones(len(cs.s1), dtype=bool))]
    for f in ROUTE_GRID:
        kept = cs.s1 >= f
        if 0 < kept.sum() < len(kept):
            out.append((f, kept))
    return out


def kept_by(cs: CandidateSet, choice: tuple) -> np.ndarray:
    """The candidates a (objective, calls, t1, floor, t2, route) choice keeps: stage-2
    score >= t2 (unasked ones have none and pass), or routed past the LLM; and >= floor."""
    _, _, _, floor, t2, route = choice
    kept = np.nan_to_num(cs.s2, nan=1.0) >= t2
    if route is not None:
        kept |= cs.s1 >= route
    return kept & (cs.s1 >= floor)  # the floor drops a candidate before stage 2


def routes_up_to(max_route: float | None) -> tuple[float, ...]:
    """The routing thresholds tried: the grid, or its part up to ``max_route`` and that."""
    if max_route is None:
        return ROUTE_GRID
    return tuple(sorted({r for r in ROUTE_GRID if r <= max_route} | {max_route}))


def tune_class(sets: dict[float, CandidateSet], *, objective: str = "char_f1",
               with_llm: bool = True, route_tolerance: float = 0.0,
               max_route: float | None = None, min_confidence: float = 0.0) -> dict:
    """The best ensemble-only thresholds (t1 and a floor on the span score), and the best
    re-ranked ones: keep a candidate of stage-1 score s1 (spans at t1) if s1 >= route (the
    LLM is not asked) or if its stage-2 score is >= t2. Routing is part of the search, not
    only a saving: a judge that is worse than stage 1 on confident candidates can still
    help on uncertain ones (a route just above t1 asks it about those only). The ensemble's
    own best (floor, LLM never asked) is among the re-ranked choices, so a judge is chosen
    only where it beats that. Among the choices within ``route_tolerance`` of the best
    objective, the one with the fewest LLM calls wins (then the higher objective).
    ``max_route``: the LLM is asked about candidates below it only (no route above it, and
    never about all of them), as `collect` scored them.

    A judge's best thresholds may beat the ensemble's own on the tuning documents by chance
    (a few documents, a gain of 0.002). ``confidence`` in the result is the paired bootstrap's
    share of resamples of the documents in which they beat it; below ``min_confidence`` the
    ensemble's own thresholds are kept. The thresholds were chosen on the same documents, so
    the share is optimistic (a judge of pure noise can reach 0.8): a filter, not a test.

    With no gold span of the class, or none that any candidate finds, every threshold scores
    0 and the lowest (the most false positives) would win: the class is left untuned, and
    the default thresholds apply."""
    t1s = sorted(sets)
    if not t1s or sets[t1s[0]].n_gold == 0:
        return {"untuned": UNTUNED}
    grid, alone = sweep(sets, objective)
    if alone.max() <= 0:  # the stage-2 threshold only drops candidates: the grid is 0 too
        n = sets[t1s[0]].n_gold
        return {"untuned": f"{objective} is 0 at every threshold: no candidate finds any of "
                           f"its {n} gold span{'s' if n != 1 else ''}"}
    # (objective, LLM calls, t1, floor, t2, route); the ensemble alone first
    choices = [(cs.figures(kept)[objective], 0, t1, f, 0.0, 0.0)
               for t1, cs in sorted(sets.items()) for f, kept in floors_of(cs)]
    own = max(choices, key=lambda c: c[0])  # the first of equals: the lowest t1, no floor
    t1, floor = own[2], own[3]
    result = {"stage1_only": {"stage1": t1, "floor": floor, objective: own[0],
                              **sets[t1].figures(sets[t1].s1 >= floor)}}
    if not with_llm:
        return result
    for a, t1 in enumerate(t1s):
        cs = sets[t1]
        s2 = np.nan_to_num(cs.s2, nan=1.0)
        for b, t2 in enumerate(T2_GRID):
            passed = s2 >= t2
            # with max_route the candidates at or above it have no score (kept): the grid's
            # value is then that of asking below max_route, not of asking about all
            if max_route is None:
                choices.append((float(grid[a, b]), len(cs.s1), t1, 0.0, t2, None))
            for r in routes_up_to(max_route):
                calls = int((cs.s1 < r).sum())
                if calls == 0:
                    continue  # the same as never asking
                if calls == len(cs.s1) and (max_route is None or r < max_route):
                    continue  # the same as always asking (None), or as asking below max_route
                value = cs.figures(passed | (cs.s1 >= r))[objective]
                choices.append((value, calls, t1, 0.0, t2, r))
                grid[a, b] = max(grid[a, b], value)
    best = max(c[0] for c in choices)
    chosen = min((c for c in choices if c[0] >= best - route_tolerance),
                 key=lambda c: (c[1], -c[0]))
    confidence = None
    if chosen[1]:  # the LLM is asked: is that better than the ensemble alone, or luck?
        own_set = sets[own[2]]
        confidence = bootstrap_confidence((own_set, own_set.s1 >= own[3]),
                                          (sets[chosen[2]], kept_by(sets[chosen[2]], chosen)),
                                          objective)
        if confidence < min_confidence:
            chosen = own
    value, calls, t1, floor, t2, route = chosen
    cs = sets[t1]
    kept = kept_by(cs, chosen)
    result["reranked"] = {"stage1": t1, "floor": floor, "stage2": t2, "route": route,
                          objective: value, **cs.figures(kept), "llm_calls": calls,
                          "llm_calls_without_routing": len(cs.s1), "confidence": confidence}
    # each cell: the best objective at that (t1, t2) over every routing threshold
    result["grid"] = {"t1": t1s, "t2": list(T2_GRID), "values": grid.round(4).tolist()}
    return result


def thresholds_from(results: dict[str, dict], objective: str, *, ensemble: str | None = None,
                    llm: str | None = None, max_route: float | None = None) -> Thresholds:
    """The tuned thresholds, with the figures they reached and, given, the identities of the
    ensemble and LLM they were tuned for (``run`` warns when used with others). With
    ``max_route`` (tuned as `tune_class` does with it), an untuned class's default asks the
    LLM only below it too."""
    classes = {}
    for cls, r in results.items():
        if "untuned" in r:  # left to the default (run and Recognizer say so)
            continue
        best = r.get("reranked") or {**r["stage1_only"], "stage2": 0.0, "route": None}
        classes[cls] = ClassThresholds(stage1=best["stage1"], floor=best.get("floor", 0.0),
                                       stage2=best["stage2"], route=best["route"])
    figures = {cls: {k: v for k, v in r.items() if k != "grid"} for cls, r in results.items()}
    tuned_for = {"tuned_for": {"ensemble": ensemble, "llm": llm}} if ensemble else {}
    default = ClassThresholds(route=max_route)
    return Thresholds(default=default, classes=classes, objective=objective, figures=figures,
                      **tuned_for)


def heatmaps(results: dict[str, dict], objective: str, path) -> None:
    """One panel per class: the objective over (t1, t2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(c, r["grid"]) for c, r in results.items() if "grid" in r]
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 4), squeeze=False)
    for ax, (cls, g) in zip(axes[0], shown):
        im = ax.imshow(np.array(g["values"]), origin="lower", aspect="auto", cmap="viridis",
                       extent=(g["t2"][0], g["t2"][-1], g["t1"][0], g["t1"][-1]))
        ax.set_title(f"{cls}: {objective}, best route")
        ax.set_xlabel("stage-2 threshold")
        ax.set_ylabel("stage-1 threshold")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

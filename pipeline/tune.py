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

    def figures(self, kept: np.ndarray) -> dict[str, float]:
        """Strict and char P/R/F1 when only the ``kept`` candidates are predicted."""
        n_pred = int(kept.sum())
        tp = int(self.exact[kept].sum())
        gold_best = np.zeros(self.n_gold)
        mask = kept[self.pair_pred]
        np.maximum.at(gold_best, self.pair_gold[mask], self.pair_dice[mask])
        out = {}
        for name, p, r in (("strict", tp / n_pred if n_pred else 0.0,
                            tp / self.n_gold if self.n_gold else 0.0),
                           ("char", float(self.best[kept].sum()) / n_pred if n_pred else 0.0,
                            float(gold_best.sum()) / self.n_gold if self.n_gold else 0.0)):
            out[f"{name}_precision"], out[f"{name}_recall"] = p, r
            out[f"{name}_f1"] = 2 * p * r / (p + r) if p + r else 0.0
        out["n_pred"], out["n_gold"] = n_pred, self.n_gold
        return out


def match(gold: Sequence[Span], cands: Sequence[Span]) -> CandidateSet:
    """Candidates of one class against its gold spans (duplicates of gold all count)."""
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
    gold_keys = {(s.doc_id, s.start, s.end) for s in gold}
    exact = np.array([(s.doc_id, s.start, s.end) in gold_keys for s in cands], dtype=bool)
    nan = float("nan")
    return CandidateSet(
        s1=np.array([s.stage1_score or 0.0 for s in cands]),
        s2=np.array([nan if s.stage2_score is None else s.stage2_score for s in cands]),
        best=best, exact=exact, pair_gold=np.array(pg, dtype=np.int64), pair_pred=pair_pred,
        pair_dice=pair_dice, n_gold=len(gold))


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
            out[cls][t1] = match(gold, [s for spans in cands for s in spans if s.label == cls])
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


def routes_up_to(max_route: float | None) -> tuple[float, ...]:
    """The routing thresholds tried: the grid, or its part up to ``max_route`` and that."""
    if max_route is None:
        return ROUTE_GRID
    return tuple(sorted({r for r in ROUTE_GRID if r <= max_route} | {max_route}))


def tune_class(sets: dict[float, CandidateSet], *, objective: str = "char_f1",
               with_llm: bool = True, route_tolerance: float = 0.0,
               max_route: float | None = None) -> dict:
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
    value, calls, t1, floor, t2, route = min(
        (c for c in choices if c[0] >= best - route_tolerance), key=lambda c: (c[1], -c[0]))
    cs = sets[t1]
    kept = np.nan_to_num(cs.s2, nan=1.0) >= t2
    if route is not None:
        kept |= cs.s1 >= route
    kept &= cs.s1 >= floor  # the floor drops a candidate before stage 2
    result["reranked"] = {"stage1": t1, "floor": floor, "stage2": t2, "route": route,
                          objective: value, **cs.figures(kept), "llm_calls": calls,
                          "llm_calls_without_routing": len(cs.s1)}
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

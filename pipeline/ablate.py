"""Does the re-ranker help? The ensemble alone (at the paper's 0.8 and at its own tuned
threshold) against the re-ranked system at the tuned pair, per language × class."""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.documents import Document, Span
from pipeline.metrics import evaluate
from pipeline.predict import char_probabilities, keep, needs_llm, propose, rerank
from pipeline.thresholds import ClassThresholds, Thresholds
from pipeline.tune import T1_GRID, T2_GRID, collect, match

PAPER_THRESHOLD = 0.8


@dataclass
class Judge:
    """A re-ranker to compare: its name in the table, its scorer (or a function that loads
    it, so that only one LLM is in memory at a time) and the thresholds tuned for it."""

    name: str
    scorer: object
    thresholds: Thresholds

    def load(self):
        return self.scorer() if callable(self.scorer) and not hasattr(self.scorer, "score") \
            else self.scorer


def ensemble_systems(tuned: Thresholds, classes: Sequence[str]) -> list[tuple[str, Thresholds]]:
    """The ensemble alone at the paper's threshold and at the one tuning chose for it."""
    figures = getattr(tuned, "figures", None) or {}
    alone = {}
    for c in classes:
        found = figures.get(c, {}).get("stage1_only", {})
        alone[c] = ClassThresholds(stage1=found.get("stage1", tuned.of(c).stage1),
                                   floor=found.get("floor", tuned.of(c).floor))
    return [(f"ensemble@{PAPER_THRESHOLD}", Thresholds.uniform(PAPER_THRESHOLD)),
            ("ensemble@tuned", Thresholds(classes=alone))]


def rows_of(name: str, docs: Sequence[Document], pred, classes: Sequence[str]) -> list[dict]:
    gold = [s for d in docs for s in d.spans]
    lang_of = {d.id: d.lang or "?" for d in docs}
    rows = []
    for cls in [None, *classes]:
        result = evaluate(gold, pred, entity=cls, lang_of=lang_of)
        slices = [("all", result.pooled)] + [(v, c) for k, v, c in result.slices
                                              if k == "language"]
        for lang, counts in slices:
            d = counts.as_dict()
            rows.append({"system": name, "class": cls or "all", "language": lang,
                         **{f"strict_{k}": v for k, v in d["strict"].items()},
                         **{f"char_{k}": v for k, v in d["char_f1"].items()}})
    return rows


def ablate(docs: Sequence[Document], ensemble, judges: Sequence[Judge] | object = (),
           tuned: Thresholds | None = None, *, char_cache=None, curves: bool = False) -> dict:
    """The ensemble alone (at the paper's 0.8 and at its tuned threshold) and a re-ranked
    row for each judge, at the thresholds tuned for it; where those route some candidates
    past the judge, also the same system with every candidate asked dropped (what the
    routing threshold alone does, without the judge). ``judges`` may also be one scorer
    (or None) with ``tuned``. ``curves``: also the precision-recall points for ``plot``."""
    if not isinstance(judges, (list, tuple)):
        judges = [Judge("reranked@tuned", judges, tuned)] if judges is not None else []
    tuned = tuned if tuned is not None else judges[0].thresholds
    classes = list(ensemble.classes)
    probs = char_probabilities(docs, ensemble, char_cache)  # once, for all systems
    rows, costs, points = [], [], {}
    for name, th in ensemble_systems(tuned, classes):
        start = time.perf_counter()
        pred = [s for ss in propose(docs, probs, th) for s in ss]
        costs.append({"system": name, "seconds": round(time.perf_counter() - start, 2),
                      "llm_calls": 0, "llm_cache_misses": 0, "candidates": len(pred),
                      "kept": len(pred)})
        rows += rows_of(name, docs, pred, classes)
    if curves:
        alone = collect(docs, ensemble, None, t1_grid=T1_GRID, char_cache=char_cache)
        points["ensemble (t1 sweep)"] = {
            cls: [alone[cls][t].figures(np.ones(len(alone[cls][t].s1), bool)) for t in T1_GRID]
            for cls in classes}
    for judge in judges:
        scorer = judge.load()
        th = judge.thresholds
        start, calls = time.perf_counter(), scorer.calls
        cands = propose(docs, probs, th)
        scored = rerank(docs, cands, scorer, th)
        pred = [s for ss in scored for s in keep(ss, th)]
        costs.append({"system": judge.name, "seconds": round(time.perf_counter() - start, 2),
                      "llm_calls": sum(needs_llm(s, th) for ss in cands for s in ss),
                      "llm_cache_misses": scorer.calls - calls,
                      "candidates": sum(len(c) for c in cands), "kept": len(pred)})
        rows += rows_of(judge.name, docs, pred, classes)
        if any(th.of(c).route for c in classes):
            # what the routing threshold alone does: the same system with a judge that says
            # no to every candidate asked, so that the judge's own share of the gain shows
            start = time.perf_counter()
            alone = [s for ss in cands for s in ss if not needs_llm(s, th)]
            costs.append({"system": f"{judge.name}, asked dropped",
                          "seconds": round(time.perf_counter() - start, 2), "llm_calls": 0,
                          "llm_cache_misses": 0, "candidates": costs[-1]["candidates"],
                          "kept": len(alone)})
            rows += rows_of(f"{judge.name}, asked dropped", docs, alone, classes)
        if curves:
            points[judge.name] = reranked_curve(docs, scored, classes)
        del scorer  # a loaded LLM goes before the next one loads
        gc.collect()
    return {"rows": rows, "costs": costs, "documents": len(docs),
            **({"curves": points} if curves else {})}


def reranked_curve(docs, scored: Sequence[Sequence[Span]], classes: Sequence[str]) -> dict:
    """Char precision and recall per class over the stage-2 threshold, at the tuned t1 and
    route, from the re-ranked row's own candidates (no LLM call of its own): a candidate
    routed past the LLM (no stage-2 score) is kept at every stage-2 threshold."""
    out = {}
    for cls in classes:
        sets = match([s for d in docs for s in d.spans if s.label == cls],
                     [s for ss in scored for s in ss if s.label == cls])
        s2 = np.nan_to_num(sets.s2, nan=1.0)
        out[cls] = [sets.figures(s2 >= t2) for t2 in T2_GRID]
    return out


def markdown(report: dict) -> str:
    head = ("| system | class | lang | strict P | strict R | strict F1 | tp | fp | fn | "
            "char P | char R | char F1 | gold | pred |\n|" + "---|" * 14 + "\n")
    lines = []
    for r in report["rows"]:
        lines.append(
            f"| {r['system']} | {r['class']} | {r['language']} | {r['strict_precision']:.4f} | "
            f"{r['strict_recall']:.4f} | {r['strict_f1']:.4f} | {r['strict_tp']} | "
            f"{r['strict_fp']} | {r['strict_fn']} | {r['char_precision']:.4f} | "
            f"{r['char_recall']:.4f} | {r['char_f1']:.4f} | {r['char_n_gold']} | "
            f"{r['char_n_pred']} |")
    cost = ("\n\n| system | candidates | kept | LLM calls | of which not cached | seconds |\n"
            "|---|---|---|---|---|---|\n"
            + "\n".join(f"| {c['system']} | {c['candidates']} | {c['kept']} | {c['llm_calls']} "
                        f"| {c['llm_cache_misses']} | {c['seconds']} |" for c in report["costs"]))
    return f"Ablation on {report['documents']} documents\n\n" + head + "\n".join(lines) + cost + "\n"


def plot(report: dict, path) -> None:
    """Precision-recall (char) per class: the ensemble over stage-1 thresholds, each
    re-ranked system over stage-2 thresholds at its tuned stage-1 threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report["curves"]
    classes = list(next(iter(curves.values())))
    fig, axes = plt.subplots(1, len(classes), figsize=(5 * len(classes), 4), squeeze=False)
    for ax, cls in zip(axes[0], classes):
        for k, (name, per_class) in enumerate(curves.items()):
            pts = per_class[cls]
            ax.plot([p["char_recall"] for p in pts], [p["char_precision"] for p in pts],
                    "os^vd"[k % 5] + "-", label=name if k == 0 else f"{name} (t2 sweep)")
        ax.set_title(cls)
        ax.set_xlabel("char recall")
        ax.set_ylabel("char precision")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""Does the re-ranker help? The ensemble alone (at the paper's 0.8 and at its own tuned
threshold) against the re-ranked system at the tuned pair, per language × class."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from pipeline.documents import Document
from pipeline.metrics import evaluate
from pipeline.predict import char_probabilities, keep, needs_llm, propose, rerank
from pipeline.thresholds import ClassThresholds, Thresholds
from pipeline.tune import T1_GRID, T2_GRID, collect

PAPER_THRESHOLD = 0.8


def systems(tuned: Thresholds, classes: Sequence[str]) -> list[tuple[str, Thresholds, bool]]:
    figures = getattr(tuned, "figures", None) or {}
    alone = {c: ClassThresholds(stage1=figures.get(c, {}).get("stage1_only", {}).get(
        "stage1", tuned.of(c).stage1)) for c in classes}
    return [(f"ensemble@{PAPER_THRESHOLD}", Thresholds.uniform(PAPER_THRESHOLD), False),
            ("ensemble@tuned", Thresholds(classes=alone), False),
            ("reranked@tuned", tuned, True)]


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


def ablate(docs: Sequence[Document], ensemble, scorer, tuned: Thresholds, *,
           char_cache=None) -> dict:
    classes = list(ensemble.classes)
    probs = char_probabilities(docs, ensemble, char_cache)  # once, for all systems
    rows, costs = [], []
    for name, th, with_llm in systems(tuned, classes):
        if with_llm and scorer is None:
            continue
        start, calls = time.perf_counter(), scorer.calls if scorer else 0
        cands = propose(docs, probs, th)
        spans = ([keep(s, th) for s in rerank(docs, cands, scorer, th)] if with_llm else cands)
        pred = [s for ss in spans for s in ss]
        asked = sum(needs_llm(s, th) for ss in cands for s in ss) if with_llm else 0
        costs.append({"system": name, "seconds": round(time.perf_counter() - start, 2),
                      "llm_calls": asked,
                      "llm_cache_misses": (scorer.calls - calls) if with_llm else 0,
                      "candidates": sum(len(c) for c in cands), "kept": len(pred)})
        rows += rows_of(name, docs, pred, classes)
    return {"rows": rows, "costs": costs, "documents": len(docs)}


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


def pr_curves(docs, ensemble, scorer, tuned: Thresholds, path, char_cache=None) -> None:
    """Precision-recall (char) per class: the ensemble over stage-1 thresholds, the
    re-ranked system over stage-2 thresholds at its tuned stage-1 threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(ensemble.classes)
    alone = collect(docs, ensemble, None, t1_grid=T1_GRID, char_cache=char_cache)
    fig, axes = plt.subplots(1, len(classes), figsize=(5 * len(classes), 4), squeeze=False)
    for ax, cls in zip(axes[0], classes):
        pts = [alone[cls][t].figures(np.ones(len(alone[cls][t].s1), bool)) for t in T1_GRID]
        ax.plot([p["char_recall"] for p in pts], [p["char_precision"] for p in pts], "o-",
                label="ensemble (t1 sweep)")
        if scorer is not None:
            t1 = tuned.of(cls).stage1
            sets = collect(docs, ensemble, scorer, t1_grid=(t1,), char_cache=char_cache)[cls][t1]
            s2 = np.nan_to_num(sets.s2, nan=1.0)
            pts = [sets.figures(s2 >= t2) for t2 in T2_GRID]
            ax.plot([p["char_recall"] for p in pts], [p["char_precision"] for p in pts], "s-",
                    label=f"re-ranked at t1={t1} (t2 sweep)")
        ax.set_title(cls)
        ax.set_xlabel("char recall")
        ax.set_ylabel("char precision")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

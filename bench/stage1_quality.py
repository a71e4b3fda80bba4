"""Stage-1 quality on real data: the learned ensemble vs the gazetteer baseline vs each
single member, strict and char F1 per class (the official metrics).

  python bench/stage1_quality.py --ensemble runs/minilm_spaccc \
      --train ../shared/data/spaccc_train --dev ../shared/data/cardioccc_dev \
      [--threshold 0.5] [--thresholds 0.3,0.4,0.6]

Every member runs once over the dev texts; the ensemble is their weighted mean (what
Ensemble.char_probs computes), so single members and the ensemble are compared on the same
documents without running any model twice. The ensemble's probabilities go to its cache, so
`pipeline run --ensemble E --input DEV ...` then `pipeline evaluate` give the same figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.documents import Span  # noqa: E402
from pipeline.metrics import evaluate  # noqa: E402
from pipeline.predict import propose  # noqa: E402
from pipeline.readers import open_corpus  # noqa: E402
from pipeline.thresholds import ClassThresholds, Thresholds  # noqa: E402
from stage1_ensemble import decode_batch  # noqa: E402
from stage1_ensemble.cache import CharProbCache  # noqa: E402
from stage1_ensemble.ensemble import Ensemble  # noqa: E402
from stage1_ensemble.gazetteer import Gazetteer  # noqa: E402
from stage1_ensemble.project import weighted_mean  # noqa: E402


def table(name: str, gold, pred, classes) -> list[str]:
    rows = []
    for cls in classes:
        r = evaluate(gold, pred, entity=cls).as_dict()
        rows.append(f"| {name} | {cls} | {r['strict']['precision']:.4f} | "
                    f"{r['strict']['recall']:.4f} | {r['strict']['f1']:.4f} | "
                    f"{r['char_f1']['precision']:.4f} | {r['char_f1']['recall']:.4f} | "
                    f"{r['char_f1']['f1']:.4f} | {r['char_f1']['n_gold']} | "
                    f"{r['char_f1']['n_pred']} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ensemble", type=Path, required=True)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--dev", type=Path, required=True)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--thresholds", default="", help="more ensemble thresholds to report, "
                                                      "comma-separated")
    args = ap.parse_args()

    ens = Ensemble.load(args.ensemble)
    classes = ens.classes
    dev = list(open_corpus(args.dev))
    gold = [s for d in dev for s in d.spans]
    head = ["| system | class | strict P | strict R | strict F1 | char P | char R | char F1 | "
            "gold | pred |", "|" + "---|" * 10]

    gaz = Gazetteer().fit((s.label, d.text, s.start, s.end)
                          for d in open_corpus(args.train) for s in d.spans)
    gaz_pred = [Span(d.id, c, s, e) for d in dev for c in classes
                for s, e, _ in gaz.predict(d.text, c)]
    texts = [d.text for d in dev]
    # each member runs once; the ensemble is their weighted mean, as Ensemble.char_probs does
    member_probs = {m.name: ens.runner(m).char_probs(texts) for m in ens.manifest.members}
    # stored in the ensemble's cache as `pipeline run` stores them (float16), so that a later
    # `pipeline run` + `pipeline evaluate` reproduces these figures without running models
    cache = CharProbCache(args.ensemble / "cache", ens.probs_identity)
    probs: list[dict] = [{} for _ in dev]
    for cls in classes:
        mine = ens.members_of(cls)  # their weighted mean, as Ensemble.char_probs gives
        mean = [weighted_mean([member_probs[m.name][i] for m in mine],
                              [m.weight for m in mine]) for i in range(len(texts))]
        stored = cache.put_many(cls, list(zip(texts, mean)))
        for i, p in enumerate(stored):
            probs[i][cls] = p
    print(f"## {len(dev)} documents of {args.dev.name}\n")
    rows = table("gazetteer", gold, gaz_pred, classes)
    n_members = len(ens.manifest.members) // len(classes)
    for t in [args.threshold] + [float(x) for x in args.thresholds.split(",") if x]:
        pred = [s for spans in propose(dev, probs, Thresholds.uniform(t)) for s in spans]
        rows += table(f"ensemble ({n_members} members) @{t}", gold, pred, classes)
    # thresholds chosen without the dev set: each member's best on its held-out training fold
    held_out = {cls: [m.validation.get("best_threshold") for m in ens.members_of(cls)]
                for cls in classes}
    if all(t is not None for ts in held_out.values() for t in ts):
        picked = {cls: round(sum(ts) / len(ts), 3) for cls, ts in held_out.items()}
        th = Thresholds(default=ClassThresholds(stage1=args.threshold),
                        classes={cls: ClassThresholds(stage1=t) for cls, t in picked.items()})
        pred = [s for spans in propose(dev, probs, th) for s in spans]
        for cls in classes:
            rows += table(f"ensemble ({n_members} members) @{picked[cls]} (held-out folds)",
                          gold, pred, [cls])
    print("\n".join(head + rows))

    rows = []
    for m in ens.manifest.members:
        spans = decode_batch(texts, member_probs[m.name], args.threshold)
        pred = [Span(d.id, m.entity_class, s, e) for d, ss in zip(dev, spans) for s, e, _ in ss]
        rows += table(f"{m.name} @{args.threshold}", gold, pred, [m.entity_class])
    print(f"\n## single members, same {len(dev)} documents (the ensemble @{args.threshold} "
          "is above)\n")
    print("\n".join(head + rows))


if __name__ == "__main__":
    main()

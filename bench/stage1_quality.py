"""Stage-1 quality on real data: the learned ensemble vs the gazetteer baseline vs each
single member, strict and char F1 per class (the official metrics).

  python bench/stage1_quality.py --ensemble runs/minilm_spaccc \
      --train ../shared/data/spaccc_train --dev ../shared/data/cardioccc_dev \
      [--threshold 0.5] [--member-docs 40]

The ensemble's character probabilities come from the cache that `pipeline run` fills (or are
computed); single members are compared with the ensemble on the first --member-docs documents.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.documents import Span  # noqa: E402
from pipeline.metrics import evaluate  # noqa: E402
from pipeline.predict import char_probabilities, propose  # noqa: E402
from pipeline.readers import open_corpus  # noqa: E402
from pipeline.thresholds import Thresholds  # noqa: E402
from stage1_ensemble.decode import decode_batch  # noqa: E402
from stage1_ensemble.ensemble import CharProbCache, Ensemble  # noqa: E402
from stage1_ensemble.gazetteer import Gazetteer  # noqa: E402


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
    ap.add_argument("--member-docs", type=int, default=40)
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
    cache = CharProbCache(args.ensemble / "cache" / "charprobs", ens.identity)
    probs = char_probabilities(dev, ens, cache)
    th = Thresholds.uniform(args.threshold)
    ens_pred = [s for spans in propose(dev, probs, th) for s in spans]
    print(f"## {len(dev)} documents of {args.dev.name}; ensemble threshold {args.threshold}\n")
    rows = table("gazetteer", gold, gaz_pred, classes)
    n_members = len(ens.manifest.members) // len(classes)
    for t in [args.threshold] + [float(x) for x in args.thresholds.split(",") if x]:
        pred = [s for spans in propose(dev, probs, Thresholds.uniform(t)) for s in spans]
        rows += table(f"ensemble ({n_members} members) @{t}", gold, pred, classes)
    print("\n".join(head + rows))

    sub = dev[: args.member_docs]
    sub_ids = {d.id for d in sub}
    sub_gold = [s for s in gold if s.doc_id in sub_ids]
    rows = table("ensemble", sub_gold, [s for s in ens_pred if s.doc_id in sub_ids], classes)
    for m in ens.manifest.members:
        member_probs = ens.runner(m).char_probs([d.text for d in sub])
        spans = decode_batch([d.text for d in sub], member_probs, args.threshold)
        pred = [Span(d.id, m.entity_class, s, e) for d, ss in zip(sub, spans) for s, e, _ in ss]
        rows += table(m.name, sub_gold, pred, [m.entity_class])
    print(f"\n## single members vs the ensemble, first {len(sub)} documents\n")
    print("\n".join(head + rows))


if __name__ == "__main__":
    main()

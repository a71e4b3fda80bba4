"""Member kinds on real data: a MiniLM ensemble, a multilingual-e5-small ensemble, the
gazetteer member alone, and mixed ensembles with learned weights, per class, official
metrics. Weights and the stage-1 threshold of every system are chosen on one half of the
dev corpus (by document group, as `--subset 0/2`) and scored on the other half.

  python bench/member_kinds.py --minilm runs/kinds/minilm --e5 runs/kinds/e5 \\
      --train ../shared/data/spaccc_train --dev ../shared/data/cardioccc_dev \\
      --out runs/kinds/compare

The two ensembles must come from `pipeline train` on the same corpus (``--train``). The
script assembles ``OUT/mixed``: their members (hard links) plus one gazetteer member a class
made from ``--train`` (what `pipeline ensemble add --kind gazetteer --from-corpus TRAIN`
makes), and writes the weights it found for the mixed system of all three into that
manifest and its thresholds into ``OUT/thresholds.json``, so `pipeline run --ensemble
OUT/mixed --thresholds OUT/thresholds.json` runs it (on the dev texts from the cache the
script fills). Each member runs once over the dev texts (its probabilities are kept under
``OUT/probs``, so a rerun only searches); the search is `pipeline ensemble weigh`'s own
(`pipeline.weigh.choose`).

``--floor``: then, with the weights fixed, choose the stage-1 threshold and a floor on the
span score on the weighing half as `pipeline tune` does for an ensemble alone
(`pipeline.tune.tune_class`), for every system alike. ``--weights-from M`` takes the
weights of an earlier run's ``member_kinds.json`` (same members, same halves) instead of
searching them again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.documents import Span  # noqa: E402
from pipeline.members import add_gazetteer  # noqa: E402
from pipeline.metrics import evaluate  # noqa: E402
from pipeline.readers import open_corpus  # noqa: E402
from pipeline.thresholds import ClassThresholds, Thresholds, TunedFor  # noqa: E402
from pipeline.training import in_subset  # noqa: E402
from pipeline.tune import match, tune_class  # noqa: E402
from pipeline.weigh import THRESHOLDS, Weighing, apply, choose, family_of  # noqa: E402
from stage1_ensemble.cache import CharProbCache  # noqa: E402
from stage1_ensemble.decode import decode_batch  # noqa: E402
from stage1_ensemble.ensemble import Ensemble, read_manifest, write_manifest  # noqa: E402
from stage1_ensemble.gazetteer import Gazetteer  # noqa: E402


def assemble(minilm: Path, e5: Path, train: Path, out: Path) -> Path:
    """``out``: the members of both ensembles and a gazetteer member a class."""
    if (out / "ensemble.json").exists():
        return out
    a, b = read_manifest(minilm), read_manifest(e5)
    if a.data_hash != b.data_hash or a.classes != b.classes:
        sys.exit(f"{minilm} and {e5} were not trained on the same corpus and classes")
    out.mkdir(parents=True)
    for source, manifest in ((minilm, a), (e5, b)):
        for m in manifest.members:
            shutil.copytree(source / m.name, out / m.name, copy_function=os.link)
    members = a.members + b.members
    write_manifest(out, a.model_copy(update={"members": members,
                                             "planned": [m.name for m in members]}))
    docs = list(open_corpus(train))
    for cls in a.classes:
        add_gazetteer(out, cls, docs=[d for d in docs], source=str(train))
    return out


def family_probs(ens: Ensemble, texts: list[str], cls: str, store: Path) -> dict[str, list]:
    """Each family's character probabilities of ``cls`` on ``texts`` (kept in ``store``)."""
    families: dict[str, list] = {}
    for m in ens.members_of(cls):
        families.setdefault(family_of(m), []).append(m)
    out = {}
    for name, members in families.items():
        path = store / f"{name}.npz"
        if path.exists():
            with np.load(path) as saved:
                out[name] = [saved[f"a{i}"] for i in range(len(texts))]
            continue
        start = time.perf_counter()
        probs = [p[cls] for p in ens.restricted(members).char_probs(texts, [cls])]
        print(f"  {name}: {time.perf_counter() - start:.0f} s over {len(texts)} texts",
              flush=True)
        np.savez(path, **{f"a{i}": p for i, p in enumerate(probs)})
        out[name] = probs
    return out


def kinds_of(minilm: Path, e5: Path, ens: Ensemble) -> dict[str, str]:
    """Each family of the mixed ensemble: minilm, e5 or gazetteer."""
    origin = {m.name: "minilm" for m in read_manifest(minilm).members}
    origin.update({m.name: "e5" for m in read_manifest(e5).members})
    return {family_of(m): origin.get(m.name, m.kind) for m in ens.manifest.members}


def tuned_floor(docs, cls: str, chars, objective: str) -> tuple[float, float]:
    """The stage-1 threshold and span-score floor `pipeline tune` would choose for these
    character probabilities without an LLM."""
    gold = [s for d in docs for s in d.spans if s.label == cls]
    found = {t: decode_batch([d.text for d in docs], chars, t) for t in THRESHOLDS}
    sets = {t: match(gold, [Span(d.id, cls, s, e, stage1_score=p)
                            for d, ss in zip(docs, spans) for s, e, p in ss])
            for t, spans in found.items()}
    own = tune_class(sets, objective=objective, with_llm=False)["stage1_only"]
    return own["stage1"], own["floor"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minilm", type=Path, required=True)
    ap.add_argument("--e5", type=Path, required=True)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--dev", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--step", type=float, default=0.1)
    ap.add_argument("--objective", default="char_f1", choices=("char_f1", "strict_f1"))
    ap.add_argument("--floor", action="store_true",
                    help="also choose a floor on the span score (and t1 again) per system")
    ap.add_argument("--weights-from", type=Path,
                    help="member_kinds.json of an earlier run: its weights, not a new search")
    args = ap.parse_args()
    earlier = json.loads(args.weights_from.read_text())["systems"] if args.weights_from else {}

    mixed = assemble(args.minilm, args.e5, args.train, args.out / "mixed")
    ens = Ensemble.load(mixed)
    kind_of = kinds_of(args.minilm, args.e5, ens).__getitem__
    dev = list(open_corpus(args.dev))
    halves = [[i for i, d in enumerate(dev) if in_subset(d.id, (h, 2))] for h in (0, 1)]
    texts = [d.text for d in dev]
    systems = {"(a) MiniLM": ["minilm"], "(b) e5-small": ["e5"], "(c) gazetteer": ["gazetteer"],
               "MiniLM + gazetteer": ["minilm", "gazetteer"],
               "e5-small + gazetteer": ["e5", "gazetteer"], "MiniLM + e5-small": ["minilm", "e5"],
               "(d) MiniLM + e5-small + gazetteer": ["minilm", "e5", "gazetteer"]}
    store = args.out / "probs"
    store.mkdir(parents=True, exist_ok=True)
    results: dict = {"dev": str(args.dev), "weigh_documents": len(halves[0]),
                     "test_documents": len(halves[1]), "objective": args.objective,
                     "systems": {}}
    found_d = []
    gaz = Gazetteer().fit((s.label, d.text, s.start, s.end)
                          for d in open_corpus(args.train) for s in d.spans)
    for cls in ens.classes:
        print(f"{cls}:", flush=True)
        probs = family_probs(ens, texts, cls, store)
        test = [dev[i] for i in halves[1]]
        gold = [s for d in test for s in d.spans if s.label == cls]
        rows = {}
        base = [Span(d.id, cls, s, e) for d in test for s, e, _ in gaz.predict(d.text, cls)]
        rows["gazetteer baseline (0/1 matches)"] = (None, evaluate(gold, base).pooled)
        for system, kinds in systems.items():
            fams = [f for f in probs if kind_of(f) in kinds]
            start = time.perf_counter()
            weigh_docs = [dev[i] for i in halves[0]]
            if earlier:
                was = earlier[system][cls]
                w = Weighing(cls, fams, {f: was["weights"][f] for f in fams}, was["threshold"],
                             float("nan"), float("nan"), [])
            else:
                w = choose(weigh_docs, cls, {f: [probs[f][i] for i in halves[0]] for f in fams},
                           {f: 1.0 for f in fams}, objective=args.objective, step=args.step)
            floor = 0.0
            if args.floor:
                w.threshold, floor = tuned_floor(weigh_docs, cls, [
                    sum(w.weights[f] * probs[f][i] for f in fams).astype(np.float32)
                    for i in halves[0]], args.objective)
            w.floor = floor
            chars = [sum(w.weights[f] * probs[f][i] for f in fams).astype(np.float32)
                     for i in halves[1]]
            spans = decode_batch([d.text for d in test], chars, w.threshold)
            pred = [Span(d.id, cls, s, e) for d, ss in zip(test, spans) for s, e, p in ss
                    if p >= floor]
            rows[system] = (w, evaluate(gold, pred).pooled)
            print(f"  {system}: weights {w.weights} t={w.threshold} floor={floor} "
                  f"({args.objective} {w.value:.4f} on the weighing half; "
                  f"{time.perf_counter() - start:.0f} s)", flush=True)
            if system.startswith("(d)"):
                found_d.append(w)
        for system, (w, r) in rows.items():
            strict, char = r.strict(), r.char()
            results["systems"].setdefault(system, {})[cls] = {
                "strict_f1": round(strict["f1"], 4), "char_p": round(char["precision"], 4),
                "char_r": round(char["recall"], 4), "char_f1": round(char["f1"], 4),
                **({"weights": {k: round(v, 2) for k, v in w.weights.items()},
                    "threshold": w.threshold, "floor": w.floor} if w else {})}
    write_manifest(mixed, apply(read_manifest(mixed), found_d, {
        "gold": str(args.dev), "subset": "0/2", "objective": args.objective,
        "step": args.step, "documents": len(halves[0]), "held_out": True,
        "search": "exhaustive simplex grid",
        "classes": {w.cls: w.as_dict() for w in found_d}}))
    # system (d) as the product runs it: its thresholds file, and its weighted probabilities
    # of the dev texts in the ensemble's cache (as `pipeline run` stores them), so that
    # `pipeline run --ensemble OUT/mixed --thresholds OUT/thresholds.json` needs no model
    weighed = Ensemble.load(mixed)
    Path(args.out / "thresholds.json").write_text(Thresholds(
        classes={w.cls: ClassThresholds(stage1=w.threshold, floor=w.floor) for w in found_d},
        objective=args.objective, tuned_for=TunedFor(ensemble=weighed.identity),
    ).model_dump_json(indent=2))
    cache = CharProbCache(mixed / "cache", weighed.probs_identity)
    for w in found_d:
        probs = family_probs(ens, texts, w.cls, store)
        cache.put_many(w.cls, [(text, sum(v * probs[f][i] for f, v in w.weights.items())
                                .astype(np.float32)) for i, text in enumerate(texts)])
    cache.close()
    (args.out / "member_kinds.json").write_text(json.dumps(results, indent=1))
    print(f"\nweighed on {len(halves[0])} documents of {args.dev.name} (subset 0/2), "
          f"scored on the other {len(halves[1])} (subset 1/2)\n")
    print("| system | class | strict F1 | char P | char R | char F1 | weights, threshold |")
    print("|---|---|---|---|---|---|---|")
    for system, per in results["systems"].items():
        for cls, r in per.items():
            how = "" if "weights" not in r else ", ".join(
                f"{kind_of(f)} {v}" for f, v in r["weights"].items()) + \
                f"; t={r['threshold']}" + (f", floor {r['floor']}" if r.get("floor") else "")
            print(f"| {system} | {cls} | {r['strict_f1']:.4f} | {r['char_p']:.4f} | "
                  f"{r['char_r']:.4f} | {r['char_f1']:.4f} | {how} |")


if __name__ == "__main__":
    main()

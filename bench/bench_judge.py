"""The judge's cost, side by side in one run, with SmolLM2-135M-Instruct on real candidates:

  training: examples/s for LoRA with a shared prefix (the default), LoRA on whole prompts
            (each candidate alone), LoRA on the last 8 layers only, full fine-tuning; with
            --bf16 also LoRA in bf16 (autocast; only faster where the CPU has AMX)
  scoring:  candidates/s of a judge on hf (prefix reuse), vLLM (merged weights) and vLLM
            serving its LoRA adapter on the base

Candidates are gold spans of ../shared/data plus shifted copies, labelled by their overlap
with the gold span (as train-judge labels them). The scoring part needs a trained judge
(--judge; default runs/demo/judge, which `make demo` leaves) and vLLM.
Run: python bench/bench_judge.py [--candidates 64] [--steps 4] [--ways default,last8,full,...]
     [--bf16] [--no-vllm]
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_stage2 import real_candidates, timed  # noqa: E402


def labelled(cands, corpus: Path):
    """Each candidate with its best overlap with a gold span of its document and class."""
    from pipeline.metrics import overlap_pairs
    from pipeline.readers import open_corpus

    wanted = {c.doc_id for c in cands}
    gold = {d.id: d.spans for d in open_corpus(corpus) if d.id in wanted}
    labels = []
    for c in cands:
        spans = [(s.start, s.end) for s in gold[c.doc_id] if s.label == c.label]
        labels.append(max((dice for _, _, dice in overlap_pairs(spans, [(c.start, c.end)])),
                          default=0.0))
    return labels


def train_rate(model_dir: Path, prompts, labels, *, steps: int, **overrides) -> float:
    """Training examples per second of one way (a fresh model each time)."""
    from stage2_rerank.training import (
        Example,
        JudgeConfig,
        load_base,
        prefix_groups,
        train_judge_model,
    )

    whole = overrides.pop("whole", False)
    config = JudgeConfig(max_steps=steps, warmup_steps=0, save_steps=10_000, logging_steps=1000,
                         max_group=1 if whole else 8, **overrides)
    rows = prefix_groups([Example(p, y) for p, y in zip(prompts, labels)], config.max_group)
    per_step = 16  # candidates a step, the same for every way
    if whole:
        config = config.model_copy(update={"groups_per_step": per_step})
    else:
        sizes = [len(r["suffixes"]) for r in rows]
        config = config.model_copy(update={"groups_per_step": max(1, round(
            per_step / (sum(sizes) / len(sizes))))})
    model = load_base(model_dir, config)
    work = Path(tempfile.mkdtemp())
    try:
        start = time.perf_counter()
        train_judge_model(model, rows, yes_id=YES_NO[0], no_id=YES_NO[1], config=config,
                          work_dir=work)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seen = steps * (per_step if whole else config.groups_per_step * sum(
        len(r["suffixes"]) for r in rows) / len(rows))
    return seen / seconds


YES_NO: tuple[int, int] = (0, 0)


def main() -> None:
    global YES_NO
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="training steps per way")
    ap.add_argument("--context", type=int, default=256, help="max_context_tokens")
    ap.add_argument("--ways", default="default,whole,last8,full",
                    help="training ways, comma-separated: default (the first, the one the "
                         "others are compared with), whole, last8, full, bf16, last8bf16")
    ap.add_argument("--bf16", action="store_true", help="the same as adding bf16 to --ways")
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--judge", type=Path, default=ROOT / "runs" / "demo" / "judge")
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared/data/spaccc_train")
    args = ap.parse_args()

    import torch

    from pipeline.offline_models import smollm2
    from prompts import load_template
    from stage2_rerank import load_scorer
    from stage2_rerank.prompting import PromptBuilder
    from stage2_rerank.scorer import load_tokenizer

    model = smollm2(ROOT / "runs" / "smollm2")
    cands = real_candidates(args.candidates, args.corpus)
    labels = labelled(cands, args.corpus)
    builder = PromptBuilder(load_tokenizer(model), load_template(),
                            max_context_tokens=args.context)
    YES_NO = (builder.yes_id, builder.no_id)
    prompts = builder.build(cands)
    tokens = sum(len(p.prefix) + len(p.suffix) for p in prompts) / len(prompts)
    print(f"{len(cands)} candidates, {len({p.prefix for p in prompts})} prefixes, "
          f"{tokens:.0f} tokens a prompt; torch threads {torch.get_num_threads()}")

    known = {"default": ("LoRA r8, shared prefix (default)", {}),
             "whole": ("LoRA r8, whole prompts", {"whole": True}),
             "last8": ("LoRA r8 on the last 8 layers, shared prefix", {"lora_layers": 8}),
             "full": ("full fine-tuning, shared prefix", {"lora": False}),
             "bf16": ("LoRA r8, shared prefix, bf16", {"bf16": True}),
             "last8bf16": ("LoRA r8 on the last 8 layers, shared prefix, bf16",
                           {"lora_layers": 8, "bf16": True})}
    keys = ["default"] + [k for k in args.ways.split(",") if k and k != "default"]
    if args.bf16 and "bf16" not in keys:
        keys.append("bf16")
    unknown = [k for k in keys if k not in known]
    if unknown:
        ap.error(f"--ways: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    ways = [known[k] for k in keys]
    print("\ntraining (examples/s; the same candidates, 16 a step)")
    rates = {}
    for name, overrides in ways:
        rates[name] = train_rate(model, prompts, labels, steps=args.steps, **overrides)
        print(f"  {name}: {rates[name]:.2f} examples/s", flush=True)
        gc.collect()
    base = rates[ways[0][0]]
    for name, rate in rates.items():
        print(f"  {name}: {rate / base:.2f}x the default")

    if not (args.judge / "judge.json").exists():
        print(f"\nno judge at {args.judge} (make demo trains one): scoring skipped")
        return
    print(f"\nscoring with the judge {args.judge} (candidates/s)")
    hf_t, hf_s = timed(load_scorer("hf", args.judge, dtype="float32"), cands)
    print(f"  hf, prefix reused: {len(cands) / hf_t:.2f}/s", flush=True)
    if args.no_vllm:
        return
    for lora in (False, True):
        scorer = load_scorer("vllm", args.judge, dtype="float32", lora=lora)
        timed(scorer, cands[:2])  # the engine's first call
        t, s = timed(scorer, cands)
        diff = max(abs(a - b) for a, b in zip(s, hf_s))
        print(f"  vllm{' (LoRA on the base)' if lora else ' (merged)'}: {len(cands) / t:.2f}/s, "
              f"{hf_t / t:.2f}x hf; max |p - p_hf| {diff:.1e}", flush=True)
        del scorer
        gc.collect()


if __name__ == "__main__":
    main()

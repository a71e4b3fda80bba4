"""Stage-2 scoring speed with SmolLM2-135M-Instruct on real candidates, side by side:

  hf:   the shared prefix encoded once and its KV cache reused, vs whole prompts; and
        runs of tokens shared by distinct prefixes (instructions, class definition) encoded
        once too (the default), vs identical prefixes only; with --bf16 also the default
        in bfloat16 (only faster where the CPU has AVX512-BF16 or AMX)
  vllm: automatic prefix caching on vs off (two engines, one after the other)

and the agreement of the backends' scores. Candidates are gold spans of real documents of
../shared/data plus shifted (wrong) copies, so the judge sees both kinds.
Run: python bench/bench_stage2.py [--candidates 120] [--context 1024] [--chars 1500] [--bf16]
     [--no-vllm] [--no-whole]
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def real_candidates(n: int, corpus: Path, chars: int = 1500):
    from pipeline.readers import open_corpus
    from stage2_rerank import Candidate

    rng = random.Random(0)
    out = []
    for doc in open_corpus(corpus):
        text = doc.text[:chars]  # 1,500: prompts near the ~200-400 tokens of the DESIGN figure
        spans = [s for s in doc.spans if s.end <= len(text)]
        for s in spans:
            out.append(Candidate(text, s.start, s.end, s.label, doc.id, "es"))
            if rng.random() < 0.5 and s.end + 8 <= len(text):
                out.append(Candidate(text, s.start, s.end + rng.randint(2, 8), s.label, doc.id,
                                     "es"))
        if len(out) >= n:
            return out[:n]
    return out


def timed(scorer, cands) -> tuple[float, list[float]]:
    t = time.perf_counter()
    scores = scorer.score(cands)
    return time.perf_counter() - t, scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=120)
    ap.add_argument("--context", type=int, default=1024, help="max_context_tokens")
    ap.add_argument("--chars", type=int, default=1500, help="characters of each note used")
    ap.add_argument("--bf16", action="store_true", help="also the hf default in bfloat16")
    ap.add_argument("--no-whole", action="store_true", help="skip hf on whole prompts")
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared/data/spaccc_train")
    args = ap.parse_args()

    from pipeline.offline_models import smollm2
    from stage2_rerank import load_scorer

    model = smollm2(ROOT / "runs" / "smollm2")
    cands = real_candidates(args.candidates, args.corpus, args.chars)
    ctx = {"max_context_tokens": args.context}
    docs = len({c.doc_id for c in cands})
    print(f"{len(cands)} candidates from {docs} documents of {args.corpus.name}")
    builder = load_scorer("hf", model, **ctx).builder
    lengths = [len(p.ids) for p in builder.build(cands)]
    prefixes = len({p.prefix for p in builder.build(cands)})
    print(f"prompt tokens: mean {sum(lengths) / len(lengths):.0f}, {prefixes} distinct prefixes")

    results = {}
    ways = [("hf prefix reuse", {"reuse_prefix": True}),
            ("hf identical prefixes", {"min_shared_tokens": 0})]
    if not args.no_whole:
        ways.append(("hf whole prompts", {"reuse_prefix": False}))
    if args.bf16:
        ways.append(("hf prefix reuse bf16", {"dtype": "bfloat16"}))
    for name, opts in ways:
        scorer = load_scorer("hf", model, **{"dtype": "float32", **opts, **ctx})
        scorer.score(cands[:2])  # warm-up
        results[name] = timed(scorer, cands)
        del scorer
    if not args.no_vllm:
        for name, caching in (("vllm prefix caching", True), ("vllm no prefix caching", False)):
            scorer = load_scorer("vllm", model, dtype="float32", enable_prefix_caching=caching,
                                 **ctx)
            scorer.score(cands[:2])
            results[name] = timed(scorer, cands)
            scorer.backend.llm.llm_engine.engine_core.shutdown()
            del scorer
            gc.collect()
    for name, (secs, _) in results.items():
        print(f"{name:24s} {secs:7.2f} s  {len(cands) / secs:6.1f} candidates/s")
    hf = results["hf prefix reuse"]
    if "hf whole prompts" in results:
        print(f"hf: prefix reuse is {results['hf whole prompts'][0] / hf[0]:.2f}x faster than "
              "whole prompts")
    if "hf prefix reuse bf16" in results:
        print(f"hf: bf16 is {hf[0] / results['hf prefix reuse bf16'][0]:.2f}x faster than fp32")
    print(f"hf: sharing runs across prefixes is {results['hf identical prefixes'][0] / hf[0]:.2f}x "
          "faster than sharing identical prefixes only")
    if "vllm prefix caching" in results:
        v = results["vllm prefix caching"]
        print(f"vllm: prefix caching is {results['vllm no prefix caching'][0] / v[0]:.2f}x "
              "faster than without")
        diffs = [abs(a - b) for a, b in zip(hf[1], v[1])]
        print(f"agreement hf vs vllm (fp32): max |diff| {max(diffs):.2e}, mean "
              f"{sum(diffs) / len(diffs):.2e}")
    for other in [name for name in results if name.startswith("hf ") and name != "hf prefix reuse"]:
        diffs = [abs(a - b) for a, b in zip(hf[1], results[other][1])]
        flips = sum((a >= 0.5) != (b >= 0.5) for a, b in zip(hf[1], results[other][1]))
        print(f"agreement hf prefix reuse vs {other}: max |diff| {max(diffs):.2e}, mean "
              f"{sum(diffs) / len(diffs):.2e}, {flips} of {len(diffs)} decisions at 0.5 differ")
    gold = [s for c, s in zip(cands, hf[1])]
    print(f"mean p(yes) {sum(gold) / len(gold):.3f} (SmolLM2 is a weak judge)")


if __name__ == "__main__":
    main()

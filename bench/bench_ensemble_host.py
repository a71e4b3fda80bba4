"""Host work of an ensemble whose members share a tokenizer: once per member vs shared.

Everything an ensemble does on the host for one class, given its members' token
probabilities (gold + noise, different noise for each member, as in bench_decode.py; the
work hardly depends on them): tokenize the texts, project
token probabilities to characters, average the members, decode the spans.

  per member: each member tokenizes the texts and projects its own probabilities; the
              members' character arrays are averaged.
  shared:     the texts are tokenized once and where tokens land is worked out once; the
              members are averaged per segment and characters are written once.

Both give the same spans (asserted); the speed ratio is printed.
Run: python bench/bench_ensemble_host.py [corpus folder] [n documents] [--members M]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_decode import best_of, gold_noise_probs  # noqa: E402
from pipeline.readers import open_corpus  # noqa: E402
from stage1_ensemble import decode_batch, project_batch, weighted_mean  # noqa: E402
from stage1_ensemble.project import Projection  # noqa: E402
from stage1_ensemble.windows import tokenize_windows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", nargs="?", type=Path,
                    default=ROOT.parent / "shared/data/cardioccc_dev")
    ap.add_argument("docs", nargs="?", type=int, default=None, help="first N documents")
    ap.add_argument("--members", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs each")
    args = ap.parse_args()
    from transformers import XLMRobertaTokenizerFast

    from tests.tiny_models import xlmr_tokenizer_file

    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(xlmr_tokenizer_file()))
    docs = list(open_corpus(args.corpus))[: args.docs]
    texts = [d.text for d in docs]
    def tokenize():
        return tokenize_windows(tokenizer, texts)

    given = tokenize()
    rng = np.random.default_rng(0)
    member_probs = [gold_noise_probs(docs, given, rng) for _ in range(args.members)]

    def per_member(windows=None):
        chars = []
        for probs in member_probs:
            w = tokenize() if windows is None else windows
            chars.append(project_batch(texts, w.doc_index, w.offsets, probs))
        mean = [weighted_mean([c[i] for c in chars]) for i in range(len(texts))]
        return decode_batch(texts, mean, 0.5)

    def shared(windows=None):
        w = tokenize() if windows is None else windows
        return decode_batch(texts, Projection(texts, w.doc_index, w.offsets).mean(member_probs),
                            0.5)

    n = args.repeats
    t_tok, _ = best_of(tokenize, n)
    rows = [("tokenizing included", best_of(per_member, n), best_of(shared, n)),
            ("windows given", best_of(lambda: per_member(given), n),
             best_of(lambda: shared(given), n))]
    print(f"{len(texts)} documents, {sum(map(len, texts))} characters, {len(given)} windows, "
          f"{args.members} members; one tokenization {t_tok:.3f} s")
    for name, (t_old, old), (t_new, new) in rows:
        for a, b in zip(old, new):
            assert [(s, e) for s, e, _ in a] == [(s, e) for s, e, _ in b]
            assert np.allclose([x[2] for x in a], [x[2] for x in b], atol=1e-5)
        print(f"{name}: per member {t_old:.3f} s   shared {t_new:.3f} s   "
              f"speed-up {t_old / t_new:.1f}x   ({sum(map(len, new))} spans, identical)")


if __name__ == "__main__":
    main()

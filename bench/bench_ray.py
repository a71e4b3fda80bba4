"""`pipeline run` on one machine: the local engine vs the Ray engine, side by side.

Both runs are whole `pipeline run` processes on the same documents, models and thresholds,
each with a cache of its own (nothing is reused between them), so each time includes
starting, loading the models and, for Ray, starting a Ray of this machine and its actors.
The outputs must be the same bytes; the bench says so, and prints the times and their
ratio.

    python bench/bench_ray.py --ensemble runs/demo/ensemble \\
        --input ../shared/data/cardioccc_dev --docs 32 [--llm runs/demo/judge --llm-backend hf]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def sample(src: Path, n: int, into: Path) -> Path:
    """The first ``n`` documents (text and annotations) of brat folder ``src``."""
    into.mkdir(parents=True)
    for txt in sorted(src.glob("*.txt"))[:n]:
        shutil.copy(txt, into / txt.name)
    return into


def timed_run(args: list[str], out: Path) -> float:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", *args, "--output", str(out)],
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"pipeline run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def same_outputs(a: Path, b: Path) -> bool:
    files = [p.relative_to(a) for p in sorted(a.rglob("*")) if p.is_file()
             and p.name not in ("summary.json", "run.json", ".lock")]
    return all((b / f).is_file() and (a / f).read_bytes() == (b / f).read_bytes()
               for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ensemble", type=Path, required=True)
    parser.add_argument("--input", type=Path, required=True, help="a brat folder")
    parser.add_argument("--docs", type=int, default=32)
    parser.add_argument("--llm", type=Path)
    parser.add_argument("--llm-backend", default="hf")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--chunk-size", type=int, default=4)
    parser.add_argument("--threads", type=int, help="torch threads of both runs' model work")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = sample(opts.input, opts.docs, tmp / "corpus")
        chars = sum(len(p.read_text(encoding="utf-8")) for p in corpus.glob("*.txt"))
        common = ["--input", str(corpus), "--ensemble", str(opts.ensemble),
                  "--stage1-threshold", str(opts.threshold), "--chunk-size", str(opts.chunk_size)]
        if opts.threads:
            common += ["--threads", str(opts.threads)]
        if opts.llm:
            common += ["--llm", str(opts.llm), "--llm-backend", opts.llm_backend,
                       "--stage2-threshold", "0.5"]
        local = timed_run([*common, "--cache-dir", str(tmp / "c_local")], tmp / "local")
        on_ray = timed_run([*common, "--cache-dir", str(tmp / "c_ray"), "--engine", "ray"],
                           tmp / "ray")
        same = same_outputs(tmp / "local", tmp / "ray")
        summary = json.loads((tmp / "ray" / "summary.json").read_text())
    print(f"{cpu_name()}, {os.cpu_count()} CPUs; {opts.docs} documents ({chars:,} characters), "
          f"ensemble {opts.ensemble.name}" + (f", LLM {opts.llm.name} ({opts.llm_backend})"
                                              if opts.llm else ", no LLM"))
    print(f"| engine | wall clock |\n|---|---|\n| local | {local:.1f} s |\n"
          f"| ray (a Ray of this machine) | {on_ray:.1f} s |")
    print(f"ray / local: {on_ray / local:.2f}x; outputs byte for byte the same: {same}")
    print(f"Ray: pools {summary['pools']}; stage seconds {summary['seconds']}; both stages "
          f"at work at once for {summary['stages_overlap_seconds']} s")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()

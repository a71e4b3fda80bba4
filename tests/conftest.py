from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model hub: fail at once instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real Spanish gold corpora, read in place; tests skip where they are absent."""
    if not (DATA / "spaccc_train").is_dir():
        pytest.skip(f"shared gold data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def tiny_ensemble(tmp_path_factory) -> Path:
    """A tiny random BERT member per class, overfitted on two sentences (built once)."""
    from pipeline.training import train_ensemble
    from stage1_ensemble.config import TrainConfig
    from tests.test_stage1_models import two_docs
    from tests.tiny_models import tiny_bert_encoder

    root = tmp_path_factory.mktemp("overfit")
    encoder = tiny_bert_encoder(root / "encoder")
    config = TrainConfig(learning_rate=3e-3, warmup_steps=0, max_steps=120, batch_size=2,
                         logging_steps=1000, max_length=64, stride=8)
    train_ensemble(two_docs(), out=root / "ens", encoders=[str(encoder)], classes=["DISEASE"],
                   n_folds=1, config=config)
    return root / "ens"


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    from tests.tiny_llm import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("llm") / "tiny")


@pytest.fixture(scope="session")
def judge_llm_dir(tmp_path_factory) -> Path:
    """A tiny random LLM that can learn to judge: weights 3× the default init (8×, as in
    ``tiny_llm_dir``, saturates attention; 1× bounds the yes/no margin below what LoRA
    needs to pass 0.9)."""
    from tests.tiny_llm import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("judge_llm") / "tiny", scale=3.0)

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

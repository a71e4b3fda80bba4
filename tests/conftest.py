from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real Spanish gold corpora, read in place; tests skip where they are absent."""
    if not (DATA / "spaccc_train").is_dir():
        pytest.skip(f"shared gold data not found at {DATA}")
    return DATA

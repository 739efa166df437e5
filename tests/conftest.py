"""Shared fixtures: paths to the real data beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
SELF_INSTRUCT_SEEDS = SHARED_DATA / "self_instruct_seed_tasks.jsonl"
ALPACA = SHARED_DATA / "alpaca_data.json"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; tests that need it are skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA

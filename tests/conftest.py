"""Shared test settings and fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# 2 CI cores: one torch thread avoids oversubscription (small steps ran ~35x slower with 2 under load)
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(
    os.environ.get("GENOHOPTION_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture(scope="session", autouse=True)
def _quiet_scvi():
    import scvi

    scvi.settings.progress_bar_style = "tqdm"
    scvi.settings.dl_num_workers = 0
    scvi.settings.seed = 0
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; tests needing it skip when it is absent (e.g. a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set GENOHOPTION_SHARED_DATA)")
    return SHARED_DATA

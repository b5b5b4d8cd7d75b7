"""Shared fixtures. Tests are seeded and CPU-only; multi-process ones are marked `dist`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the CPU path, even where a GPU is visible


@pytest.fixture
def shared_dir() -> Path:
    """../shared beside the checkout (read-only extras); tests using it skip cleanly without it."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent: extra checks against the shared CRD/sample are skipped")
    return SHARED

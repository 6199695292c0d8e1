"""Shared fixtures. Paths are absolute so tests can run from any working directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MMC = [sys.executable, "-m", "mmc"]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO

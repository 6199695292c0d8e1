"""Shared fixtures. Paths are absolute so tests can run from any working directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MMC = [sys.executable, "-m", "mmc"]
# Quiet tests: no progress bars or lines (mmc.progress) from the commands they run; the tests of
# progress itself set their own mode.
os.environ.setdefault("MMC_PROGRESS", "off")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO

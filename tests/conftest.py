"""Shared fixtures. Paths are absolute so tests can run from any working directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from workflow_helpers import REPO

# Quiet tests: no progress bars or lines (mmc.progress) from the commands they run; the tests of
# progress itself set their own mode.
os.environ.setdefault("MMC_PROGRESS", "off")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The real workflow, run once per session on the tiny test config in a demo project (a git
    repository holding this checkout's code at one commit: see workflow_helpers.make_project).
    Shared by tests/test_workflow_run.py and tests/test_reproduce.py; they only add files to it."""
    from workflow_helpers import DEMO_CONFIG, make_project, snakemake

    project = make_project(tmp_path_factory.mktemp("demo") / "project")
    start = time.perf_counter()
    snakemake(project, "--configfile", DEMO_CONFIG, "--cores", "2", timeout=600, code=project)
    print(f"\nend-to-end local run of the tiny test workflow: {time.perf_counter() - start:.1f} s")
    return project

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

# The tests that share the demo project (the session's one workflow run) or the SLURM cluster
# (one 2-CPU node) run in one pytest-xdist worker, one at a time; see pytest_collection_modifyitems.
SHARED_RUNS_GROUP = "workflow-runs"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Groups for `pytest -n 2 --dist loadgroup` (make test): each test module is one group, so its
    module-scoped fixtures are built once, in one worker; the tests of the demo run and of the
    SLURM cluster are one group, so the demo workflow runs once and no two tests share the
    cluster's node. Without xdist the marks do nothing (the order holds: that group first)."""
    shared = set()
    for item in items:
        if "demo_run" in getattr(item, "fixturenames", ()) or item.get_closest_marker("slurm"):
            shared.add(item)
        group = SHARED_RUNS_GROUP if item in shared else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
    # The shared group is the longest (minutes of workflow runs, one after another): first in the
    # queue, so the other worker runs everything else beside it rather than after it.
    items.sort(key=lambda item: item not in shared)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook, run in the controller
def pytest_xdist_node_collection_finished(node, ids):
    """Stop a grouped run whose groups did not take. pytest-xdist sends each worker's test ids with
    an "@group" suffix it writes into them, which pytest >= 9.2 no longer lets it change
    (pytest-xdist issue #1386; requirements.lock pins pytest 9.1.1 until that is fixed). Without
    this check the tests would be spread one by one: the demo workflow run once per worker, two
    runs at once on the SLURM node."""
    if node.config.getoption("dist", "no") != "loadgroup":
        return
    ungrouped = [nodeid for nodeid in ids if "@" not in nodeid]
    if ungrouped:
        pytest.exit(
            f"--dist loadgroup: {len(ungrouped)} test(s) lost their xdist_group, e.g. {ungrouped[0]}: "
            "this pytest-xdist cannot group with this pytest (pytest-xdist issue #1386); "
            "install the pytest of requirements.lock",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


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

"""The real SLURM cluster of the tests (.ci/slurm.sh) and the repository's profile scaled to fit it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from workflow_helpers import REPO, write_config

# Command-line settings for a cluster without slurmdbd (squeue status) and fast status checks.
# Resources are NOT given on the command line (that would replace the profile's mappings): the
# tests use ci_profile(), the repository's profile with only the node-size numbers scaled down.
SLURM_CI_ARGS = [
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2",
    "--seconds-between-status-checks", "2",
    "--jobs", "4",
]  # fmt: skip


def slurm_cluster_up() -> str | None:
    """None when a SLURM controller answers with an idle node, else why not."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "the SLURM client (sbatch, sinfo) is not installed"
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 15 s"
    if state.returncode != 0 or not state.stdout.strip():
        return f"no SLURM controller answers: {state.stderr.strip()[:200]}"
    if "idle" not in state.stdout and "mix" not in state.stdout:
        return f"no idle SLURM node (states: {state.stdout.split()})"
    return None


def require_slurm() -> None:
    """Skip (or fail, when MMC_REQUIRE_SLURM is set, as in CI) without a usable cluster."""
    why = slurm_cluster_up()
    if why is not None:
        if os.environ.get("MMC_REQUIRE_SLURM"):
            pytest.fail(f"MMC_REQUIRE_SLURM is set but SLURM is unusable: {why} (start it with .ci/slurm.sh)")
        pytest.skip(f"SLURM tests need a running cluster (.ci/run starts one): {why}")


def _fit_node(resources: dict) -> dict:
    """One rule's resources for the CI node (2 CPUs, 2 fake GPUs): counts to 1, memory to 2 GB."""
    fitted = dict(resources)
    for key in ("gpu", "cpus_per_gpu"):
        if key in fitted:
            fitted[key] = 1
    if fitted.get("cpus_per_task"):  # 0 stays 0: it unsets the default for GPU rules
        fitted["cpus_per_task"] = 1
    if "mem_mb" in fitted:
        fitted["mem_mb"] = min(fitted["mem_mb"], 2000)
    if "mem_mb_per_cpu" in fitted:
        fitted["mem_mb_per_cpu"] = 2000
    return fitted


def ci_profile(directory: Path, name: str = "slurm", **rule_overrides: dict) -> Path:
    """workflow/profiles/NAME with its node-size numbers scaled to the CI node, written to DIRECTORY.

    Everything else (retries, requeue, the warning signal, runtimes, the GPU rules' resource keys)
    is the repository's file. ``rule_overrides``: resources merged into a rule (rule=mapping).
    """
    settings = yaml.safe_load((REPO / "workflow" / "profiles" / name / "config.yaml").read_text())
    settings["default-resources"] = _fit_node(settings["default-resources"])
    rules = settings["set-resources"]
    for rule in rules:
        rules[rule] = _fit_node(rules[rule] or {})
    for rule, extra in rule_overrides.items():
        rules[rule] = {**rules.get(rule, {}), **extra}
    write_config(directory, settings)
    return directory

"""Running the real Snakemake workflow from tests: always under `timeout -k`, in a scratch directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
BIN = Path(sys.executable).parent


def snakemake_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env.pop("MLFLOW_RUN_ID", None)
    return env


def snakemake(
    workdir: Path, *args: str, timeout: int = 300, check: bool = True, **popen
) -> subprocess.CompletedProcess:
    """`snakemake` with the repository's Snakefile, run in ``workdir``, killed after ``timeout`` s."""
    snakemake_bin = shutil.which("snakemake", path=str(BIN)) or "snakemake"
    cmd = ["timeout", "-k", "10", str(timeout), snakemake_bin, "--snakefile", str(SNAKEFILE), *args]
    done = subprocess.run(cmd, cwd=workdir, env=snakemake_env(), capture_output=True, text=True, **popen)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
        )
    return done


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def config_with(**overrides) -> dict:
    """config/test.yaml with ``overrides`` merged in (nested mappings merge)."""
    from mmc.config import deep_merge

    raw = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    return deep_merge(raw, overrides)


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The `Job stats` table of a dry run: rule -> count."""
    counts: dict[str, int] = {}
    lines = dry_run_output.splitlines()
    if "Job stats:" not in lines:
        return counts
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts
